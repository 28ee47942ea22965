"""A user trainer module with a `build_model` hook: a small CNN of the user's own, with its own head.

The trainer's `head_layers: digit_head` declares the head; every other layer is the base a policy freezes.
`num_layers`, a hyperparameter a Tuner would search, sets how many convolutions the base has.
"""

import tensorflow as tf


def build_model(config, contract, hyperparameters):
    inputs = tf.keras.Input(contract.input_shape, name=contract.feature_key)
    x = inputs
    for index in range(1, hyperparameters.get("num_layers", 2) + 1):
        x = tf.keras.layers.Conv2D(8 * index, 3, strides=2, activation="relu", name=f"conv_{index}")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = tf.keras.layers.Dense(contract.num_classes, activation="softmax", name="digit_head")(x)
    return tf.keras.Model(inputs, outputs, name="small_cnn")

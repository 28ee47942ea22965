"""A user trainer module with a `build_model` hook: a small CNN of the user's own, with its own head.

The trainer's `head_layers: digit_head` declares the head; every other layer is the base a policy freezes.
"""

import tensorflow as tf


def build_model(config, contract):
    inputs = tf.keras.Input(contract.input_shape, name=contract.feature_key)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv_1")(inputs)
    x = tf.keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv_2")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = tf.keras.layers.Dense(contract.num_classes, activation="softmax", name="digit_head")(x)
    return tf.keras.Model(inputs, outputs, name="small_cnn")

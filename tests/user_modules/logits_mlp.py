"""A user trainer module whose own head outputs logits: its last layer is `Dense(n)` without an activation,
as a model trained with `from_logits=True` is usually written. The trainer's `head_layers: logits` declares
the head; the trainer detects that it outputs logits."""

import tensorflow as tf


def build_model(config, contract):
    inputs = tf.keras.Input(contract.input_shape, name=contract.feature_key)
    x = tf.keras.layers.Dense(16, activation="relu", name="enc_1")(inputs)
    x = tf.keras.layers.Dense(8, activation="relu", name="enc_2")(x)
    outputs = tf.keras.layers.Dense(contract.num_classes, name="logits")(x)
    return tf.keras.Model(inputs, outputs, name="logits_mlp")

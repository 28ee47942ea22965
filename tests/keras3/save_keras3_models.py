"""Saves `.keras` files the way a plain `import tensorflow` script does on TF 2.16+: with Keras 3 (run without
TF_USE_LEGACY_KERAS). Writes into the folder given as the first argument: `functional.keras` and
`sequential.keras` (common layers, weights randomised so that a load that dropped any would show), their
outputs on probe inputs (`<name>_probe.npz`, in input order), `two_inputs.keras` (two named inputs and a
nested Sequential), and `rms_norm.keras`, `lora_dense.keras` (layers tf-keras does not have)."""

import os
import sys

import numpy as np
import tensorflow as tf

assert tf.keras.__version__.startswith("3."), tf.keras.__version__
folder = sys.argv[1]
rng = np.random.default_rng(0)


def randomised(model):
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in model.get_weights()])
    return model


image = tf.keras.Input((8, 8, 3), name="image")
x = tf.keras.layers.Conv2D(4, 3, activation="relu", name="conv")(image)
x = tf.keras.layers.BatchNormalization(name="bn")(x)
skip = tf.keras.layers.Conv2D(4, 3, name="skip")(image)
x = tf.keras.layers.Add(name="add")([x, skip])
x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
x = tf.keras.layers.Dense(5, activation="relu", name="enc", kernel_regularizer=tf.keras.regularizers.L2(1e-4))(x)
functional = randomised(tf.keras.Model(image, x, name="keras3_functional"))
sequential = randomised(tf.keras.Sequential([
    tf.keras.Input((6,)), tf.keras.layers.Dense(4, activation="relu", name="d1"), tf.keras.layers.Dropout(0.1),
    tf.keras.layers.Dense(3, name="d2")], name="keras3_sequential"))
bill, flipper = tf.keras.Input((3,), name="bill"), tf.keras.Input((2,), name="flipper")
x = tf.keras.layers.Concatenate(name="stack")([bill, flipper])
x = tf.keras.Sequential([tf.keras.Input((5,)), tf.keras.layers.Dense(4, activation="relu", name="inner_dense")],
                        name="inner")(x)
two_inputs = randomised(tf.keras.Model([bill, flipper], tf.keras.layers.Dense(2, name="out")(x), name="two_inputs"))
for name, model in (("functional", functional), ("sequential", sequential), ("two_inputs", two_inputs)):
    probe = [rng.uniform(size=(2, *tensor.shape[1:])).astype("float32") for tensor in model.inputs]
    model.save(os.path.join(folder, f"{name}.keras"))
    np.savez(os.path.join(folder, f"{name}_probe.npz"), *probe)
    np.save(os.path.join(folder, f"{name}_output.npy"), model(probe if len(probe) > 1 else probe[0]).numpy())

features = tf.keras.Input((6,), name="features")
tf.keras.Model(features, tf.keras.layers.RMSNormalization(name="rms")(features)).save(
    os.path.join(folder, "rms_norm.keras"))
tf.keras.Model(features, tf.keras.layers.Dense(3, lora_rank=2, name="lora")(features)).save(
    os.path.join(folder, "lora_dense.keras"))

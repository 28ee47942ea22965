"""Small real models for tests: keras.applications backbones with random weights at 32 px."""

import tensorflow as tf

from freeze_trainer.keras.models.backbones import build_backbone
from freeze_trainer.keras.models.classifier_model import build_classifier, declare_head

SHAPE = (32, 32, 3)


def classifier(
    backbone: str = "MobileNetV2", num_classes: int = 3, bn_inference_mode: bool = True, dropout: float = 0.2, **kwargs
):
    if backbone == "MobileNetV2":
        kwargs.setdefault("alpha", 0.35)
    return build_classifier(
        build_backbone(backbone, "none", SHAPE, **kwargs), backbone, num_classes, bn_inference_mode, dropout
    )


def random_images(count: int, num_classes: int = 3, seed: int = 0):
    generator = tf.random.Generator.from_seed(seed)
    images = generator.uniform((count,) + SHAPE)
    labels = generator.uniform((count,), maxval=num_classes, dtype=tf.int32)
    return images, labels


def tiny_classifier(num_classes: int = 3):
    """A three-layer Sequential backbone (conv_a, bn, conv_b) under the standard head."""
    backbone = tf.keras.Sequential(
        [
            tf.keras.Input(SHAPE),
            tf.keras.layers.Conv2D(4, 3, strides=4, name="conv_a"),
            tf.keras.layers.BatchNormalization(name="bn"),
            tf.keras.layers.Conv2D(2, 1, name="conv_b"),
        ],
        name="tiny_backbone",
    )
    return build_classifier(backbone, "MobileNetV2", num_classes, bn_inference_mode=True)


def dense_classifier():
    """One Dense base layer (`enc_1`) under a declared Dense head (`out`) of three classes, on 4 features."""
    inputs = tf.keras.Input((4,))
    x = tf.keras.layers.Dense(4, activation="relu", name="enc_1")(inputs)
    return declare_head(tf.keras.Model(inputs, tf.keras.layers.Dense(3, activation="softmax", name="out")(x)), ["out"])

"""The trained model: backbone preprocessing, the backbone, and a new classification head."""

from __future__ import annotations

import tensorflow as tf
from tf_keras.src.engine.base_layer import BaseRandomLayer  # Dropout, GaussianNoise, Random* augmentation

from freeze_trainer.keras.backbones import BackbonePreprocessing, build_backbone

HEAD_LAYER_NAMES = ("head_pool", "head_dropout", "head_classifier")
FEATURES_LAYER = HEAD_LAYER_NAMES[0]  # the pooled backbone output: where a frozen base's features are cut


def build_classifier(
    backbone: tf.keras.Model,
    backbone_name: str | None,
    num_classes: int,
    bn_inference_mode: bool,
    dropout: float = 0.2,
    input_name: str = "image",
) -> tf.keras.Model:
    """Wraps `backbone` with GlobalAveragePooling, dropout and a softmax layer.

    With `bn_inference_mode` the backbone is called with `training=False`, so its BatchNorm layers use
    and keep their moving statistics even while `fit` trains the rest (the Keras transfer-learning
    recipe); otherwise BatchNorm follows the training phase wherever the layer is trainable.
    """
    inputs = tf.keras.Input(shape=backbone.input_shape[1:], name=input_name)
    x = BackbonePreprocessing(backbone_name, name="backbone_preprocessing")(inputs)
    x = backbone(x, training=False if bn_inference_mode else None)
    x = tf.keras.layers.GlobalAveragePooling2D(name=HEAD_LAYER_NAMES[0])(x)
    x = tf.keras.layers.Dropout(dropout, name=HEAD_LAYER_NAMES[1])(x)
    # The head stays float32 even under a mixed-precision policy: softmax in float16 loses accuracy.
    outputs = tf.keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=HEAD_LAYER_NAMES[2])(x)
    return tf.keras.Model(inputs, outputs, name="classifier")


def backbone_of(model: tf.keras.Model) -> tf.keras.Model:
    """The nested backbone model inside a classifier built by `build_classifier`."""
    nested = [layer for layer in model.layers if isinstance(layer, tf.keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"expected one nested backbone in {model.name}, found {len(nested)}")
    return nested[0]


def backbone_name_of(model: tf.keras.Model) -> str | None:
    """The keras.applications name the classifier was built for."""
    return model.get_layer("backbone_preprocessing").backbone


def head_layers(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
    return [model.get_layer(name) for name in HEAD_LAYER_NAMES]


def feature_extractor(model: tf.keras.Model) -> tf.keras.Model:
    """The classifier up to the pooled backbone features (no weights of its own)."""
    return tf.keras.Model(model.inputs, model.get_layer(FEATURES_LAYER).output, name="feature_extractor")


def head_on_features(model: tf.keras.Model) -> tf.keras.Model:
    """The classifier's layers after the features, as a model over feature vectors; it shares the
    classifier's layer objects, so training it trains the classifier's head."""
    features_layer = model.get_layer(FEATURES_LAYER)
    features = tf.keras.Input(shape=features_layer.output_shape[1:], dtype=features_layer.output.dtype, name="features")
    x = features
    for name in HEAD_LAYER_NAMES[1:]:
        x = model.get_layer(name)(x)
    return tf.keras.Model(features, x, name="head_on_features")


def _called_in_inference_mode(layer: tf.keras.layers.Layer) -> bool:
    return bool(layer.inbound_nodes) and all(node.call_kwargs.get("training") is False for node in layer.inbound_nodes)


def random_layers_before_features(model: tf.keras.Model) -> list[str]:
    """Layers before the features that draw random numbers while training (augmentation, dropout): the
    features of an example then differ every epoch and cannot be cached. Layers inside a model that the
    classifier calls with `training=False` (the backbone in BatchNorm inference mode) do not count."""
    found = []
    pending = [layer for layer in model.layers if layer.name not in HEAD_LAYER_NAMES]
    while pending:
        layer = pending.pop(0)
        if isinstance(layer, BaseRandomLayer):
            found.append(layer.name)
        elif isinstance(layer, tf.keras.Model) and not _called_in_inference_mode(layer):
            pending.extend(layer.layers)
    return found

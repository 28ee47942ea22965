"""The trained model: a pretrained base and a head, and which of its layers are which.

A policy addresses the base and the head without layer-name conventions. A model built here by
`build_classifier` (a base with a new head for the task) knows its head; any other Keras model declares
its head layers with `declare_head`, and the base is every other layer, nested models expanded.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import tensorflow as tf
from tf_keras.src.engine.base_layer import BaseRandomLayer  # Dropout, GaussianNoise, Random* augmentation

from freeze_trainer.keras.models.backbones import BackbonePreprocessing
from freeze_trainer.keras.models.tasks import MULTICLASS, Task

HEAD_LAYER_NAMES = ("head_pool", "head_dropout", "head_classifier")
_HEAD_ATTRIBUTE = "_freeze_trainer_head"  # a declared head's layer names, in call order
_TASK_ATTRIBUTE = "_freeze_trainer_task"  # the task as the head outputs it, once resolved
_POOLING = {4: tf.keras.layers.GlobalAveragePooling2D, 3: tf.keras.layers.GlobalAveragePooling1D}


class HeadError(ValueError):
    pass


def build_classifier(
    backbone: tf.keras.Model,
    backbone_name: str | None,
    num_classes: int,
    bn_inference_mode: bool,
    dropout: float = 0.2,
    input_name: str = "image",
    task: Task = MULTICLASS,
) -> tf.keras.Model:
    """Wraps `backbone` with pooling (for image or sequence outputs), dropout and a new output layer for
    `task` (softmax over `num_classes` for multiclass). The classifier's input is named `input_name` for
    a backbone with one input; a backbone with several keeps their names (see `classifier_inputs`).

    With `bn_inference_mode` the backbone is called with `training=False`, so its BatchNorm layers use
    and keep their moving statistics even while `fit` trains the rest (the Keras transfer-learning
    recipe); otherwise BatchNorm follows the training phase wherever the layer is trainable.
    """
    inputs = classifier_inputs(backbone, input_name)
    x = BackbonePreprocessing(backbone_name, name="backbone_preprocessing")(inputs)
    x = backbone(x, training=False if bn_inference_mode else None)
    pooling = _POOLING.get(len(x.shape), tf.keras.layers.Identity)
    x = pooling(name=HEAD_LAYER_NAMES[0])(x)
    x = tf.keras.layers.Dropout(dropout, name=HEAD_LAYER_NAMES[1])(x)
    # The head stays float32 even under a mixed-precision policy: softmax in float16 loses accuracy.
    outputs = tf.keras.layers.Dense(
        task.units(num_classes), activation=task.activation, dtype="float32", name=HEAD_LAYER_NAMES[2]
    )(x)
    return tf.keras.Model(inputs, outputs, name="classifier")


def classifier_inputs(backbone: tf.keras.Model, input_name: str) -> tf.Tensor | list[tf.Tensor]:
    """The classifier's inputs for `backbone`'s: one named `input_name` for a backbone with one input, else
    one per backbone input, in its order and under its name, so that the classifier takes a dict of tensors
    keyed by those names (the Keras convention for several inputs)."""
    names = backbone.input_names if len(backbone.inputs) > 1 else [input_name]
    inputs = [tf.keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=name)
              for name, tensor in zip(names, backbone.inputs)]
    return inputs if len(inputs) > 1 else inputs[0]


def declare_head(model: tf.keras.Model, layer_names: Sequence[str]) -> tf.keras.Model:
    """Marks the named top-level layers (in call order) as `model`'s head: they always train, and every
    other layer is the base a policy freezes. Returns the model."""
    names = [layer.name for layer in model.layers]
    missing = [name for name in layer_names if name not in names]
    if not layer_names or missing:
        raise HeadError(f"head_layers: {missing[0] if missing else 'nothing'!r} is not a layer of model "
                        f"{model.name!r}; its layers are {', '.join(names)}")
    object.__setattr__(model, _HEAD_ATTRIBUTE, tuple(layer_names))  # a plain attribute Keras does not track
    if not base_layers(model):  # a policy addresses the base: a head of every layer leaves it nothing
        object.__delattr__(model, _HEAD_ATTRIBUTE)
        raise HeadError(f"head_layers: names every layer of model {model.name!r}; leave at least one as the base a "
                        "policy freezes")
    return model


def has_head(model: tf.keras.Model) -> bool:
    """Whether the model has a head: declared, or the one `build_classifier` adds."""
    names = {layer.name for layer in model.layers}
    return hasattr(model, _HEAD_ATTRIBUTE) or set(HEAD_LAYER_NAMES) <= names


def head_layer_names(model: tf.keras.Model) -> tuple[str, ...]:
    return getattr(model, _HEAD_ATTRIBUTE, HEAD_LAYER_NAMES)


def head_layers(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
    try:
        return [model.get_layer(name) for name in head_layer_names(model)]
    except ValueError:
        raise HeadError(f"model {model.name!r} has no head: build it with build_classifier or declare its head "
                        "layers (the trainer's head_layers parameter)") from None


def head_activation(model: tf.keras.Model) -> str | None:
    """The activation of the head's last layer by name (`linear`: none); None when that layer has no
    `activation` (a custom layer or a nested model), whose output is taken as the task's predictions."""
    layer = head_layers(model)[-1]
    if isinstance(layer, tf.keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) if callable(activation) else None


def resolve_head_output(model: tf.keras.Model, task: Task, requested: str = "auto") -> Task:
    """The task as `model`'s head outputs it: `requested` (`logits` or `probabilities`), or with `auto`
    logits when a classification head's last layer has no activation (the Keras `from_logits=True`
    convention). The model remembers it, so that a failed proof can name the head as the likely cause."""
    activation = head_activation(model)
    if requested == "auto":
        requested = "logits" if task.classifies and activation == "linear" else "probabilities"
    if requested == "logits" and not task.classifies:
        raise HeadError("head_output: logits needs a classification task; a regression head predicts values")
    if requested == "logits" and activation in ("softmax", "sigmoid"):
        raise HeadError(f"head_output: logits, but the head's last layer {head_layers(model)[-1].name!r} applies "
                        f"{activation}; set head_output: probabilities or auto")
    resolved = replace(task, head_output=requested)
    object.__setattr__(model, _TASK_ATTRIBUTE, resolved)  # a plain attribute Keras does not track
    return resolved


def resolved_task(model: tf.keras.Model) -> Task | None:
    """The task `resolve_head_output` settled for the model; None before."""
    return getattr(model, _TASK_ATTRIBUTE, None)


def base_layers(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
    """The base's layers in order: every layer outside the head, with nested models' layers expanded, and
    without input layers or the classifier's own input adapter (`BackbonePreprocessing`)."""
    head = set(head_layer_names(model))

    def expand(layers):
        for layer in layers:
            if isinstance(layer, (tf.keras.layers.InputLayer, BackbonePreprocessing)) or layer.name in head:
                continue
            if isinstance(layer, tf.keras.Model):
                yield from expand(layer.layers)
            else:
                yield layer

    return list(expand(model.layers))


def backbone_of(model: tf.keras.Model) -> tf.keras.Model:
    """The nested backbone model inside a classifier built by `build_classifier`."""
    nested = [layer for layer in model.layers if isinstance(layer, tf.keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"expected one nested backbone in {model.name}, found {len(nested)}")
    return nested[0]


def backbone_name_of(model: tf.keras.Model) -> str | None:
    """The keras.applications name the classifier was built for; None for a model of the user's own."""
    adapters = [layer for layer in model.layers if isinstance(layer, BackbonePreprocessing)]
    return adapters[0].backbone if adapters else None


def _features_cut(model: tf.keras.Model) -> int:
    """How many leading head layers belong to the feature extractor: those without weights or randomness
    (pooling, say), so that the cached features are as small as the head's first trained layer sees them."""
    head = head_layers(model)
    count = 0
    while count < len(head) - 1 and not head[count].weights and not isinstance(head[count], BaseRandomLayer):
        count += 1
    return count


def feature_extractor(model: tf.keras.Model) -> tf.keras.Model:
    """The model up to the features the head trains on (no weights of its own)."""
    head, cut = head_layers(model), _features_cut(model)
    features = head[cut - 1].output if cut else head[0].input
    return tf.keras.Model(model.inputs, features, name="feature_extractor")


def head_on_features(model: tf.keras.Model) -> tf.keras.Model:
    """The head's layers after the features, applied in order, as a model over feature vectors; it shares
    the model's layer objects, so training it trains the model's head. The head must be a chain."""
    head, extractor = head_layers(model), feature_extractor(model)
    spec = extractor.output
    features = tf.keras.Input(shape=spec.shape[1:], dtype=spec.dtype, name="features")
    x = features
    for layer in head[_features_cut(model):]:
        x = layer(x)
    return tf.keras.Model(features, x, name="head_on_features")


def _called_in_inference_mode(layer: tf.keras.layers.Layer) -> bool:
    return bool(layer.inbound_nodes) and all(node.call_kwargs.get("training") is False for node in layer.inbound_nodes)


def random_layers_before_features(model: tf.keras.Model) -> list[str]:
    """Layers before the features that draw random numbers while training (augmentation, dropout): the
    features of an example then differ every epoch and cannot be cached. Layers inside a model that the
    classifier calls with `training=False` (the backbone in BatchNorm inference mode) do not count."""
    found = []
    head = set(head_layer_names(model))
    pending = [layer for layer in model.layers if layer.name not in head]
    while pending:
        layer = pending.pop(0)
        if isinstance(layer, BaseRandomLayer):
            found.append(layer.name)
        elif isinstance(layer, tf.keras.Model) and not _called_in_inference_mode(layer):
            pending.extend(layer.layers)
    return found

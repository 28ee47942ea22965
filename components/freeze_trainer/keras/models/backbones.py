"""Pretrained keras.applications backbones, built by name without their classification top."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import tensorflow as tf

from freeze_trainer.keras.models.model_files import ModelFileError, checked_config, load_model_file

_apps = tf.keras.applications


@dataclass(frozen=True)
class BackboneSpec:
    builder: Callable[..., tf.keras.Model]
    module: ModuleType  # holds the family's `preprocess_input`
    min_size: int
    block_pattern: str  # the first capture group of a layer's name is its block
    takes_alpha: bool = False


BACKBONES: dict[str, BackboneSpec] = {
    "MobileNetV2": BackboneSpec(_apps.MobileNetV2, _apps.mobilenet_v2, 32, r"(block_\d+)_", takes_alpha=True),
    "MobileNetV3Small": BackboneSpec(
        _apps.MobileNetV3Small, _apps.mobilenet_v3, 32, r"(expanded_conv(?:_\d+)?)/", takes_alpha=True
    ),
    "EfficientNetB0": BackboneSpec(_apps.EfficientNetB0, _apps.efficientnet, 32, r"(block\d)[a-z]_"),
    "ResNet50": BackboneSpec(_apps.ResNet50, _apps.resnet50, 32, r"(conv\d)_"),
    "ResNet50V2": BackboneSpec(_apps.ResNet50V2, _apps.resnet_v2, 32, r"(conv\d)_"),
    "VGG16": BackboneSpec(_apps.VGG16, _apps.vgg16, 32, r"(block\d)_"),
}


class BackboneError(ValueError):
    pass


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"backbone: unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


def architecture_block_pattern(backbone_name: str | None) -> str | None:
    """The block pattern of a known keras.applications architecture; None for any other model."""
    return BACKBONES[backbone_name].block_pattern if backbone_name in BACKBONES else None


def block_groups(block_pattern: str | None, layer_names: list[str]) -> list[str]:
    """Each layer's block, in order: the first capture group of `block_pattern` matched at the start of
    its name. Layers before the first block are `stem`, after the last `top`; unmatched layers between
    blocks (a pooling layer, say) belong to the block before them. Without a pattern, or when nothing
    matches, every layer is `stem`."""
    pattern = re.compile(block_pattern) if block_pattern else None
    blocks = [(m.group(1) if (m := pattern.match(name)) else None) if pattern else None for name in layer_names]
    matched = [index for index, block in enumerate(blocks) if block]
    if not matched:
        return ["stem"] * len(layer_names)
    groups, current = [], "stem"
    for index, block in enumerate(blocks):
        current = block or ("top" if index > matched[-1] else current)
        groups.append(current)
    return groups


def is_saved_backbone(weights: str) -> bool:
    return weights.endswith(".keras")


def weights_refusal(weights: str) -> str | None:
    """Why the weights file `weights` cannot be loaded, as far as can be told without building a model, or
    None: a local file must exist, and a local `.keras` file's config may name only allowed classes (read,
    nothing deserialized). `imagenet`, `none` and URIs are checked when the backbone is built."""
    if weights.lower() in ("imagenet", "none") or "://" in weights:
        return None
    if not os.path.exists(weights):
        return f"{weights!r} does not exist"
    if is_saved_backbone(weights):
        try:  # read and mapped (a Keras 3 file) as loading would, nothing deserialized
            checked_config(weights, frozenset(saved_backbone_objects()))
        except ModelFileError as err:
            return f"{weights}: {err.reason}"
    return None


def _local_copy(uri: str, directory: str) -> str:
    """Keras reads weights from local files only; gs:// and other tf.io.gfile URIs are copied first."""
    if os.path.exists(uri):
        return uri
    if not tf.io.gfile.exists(uri):
        raise BackboneError(f"backbone_weights: {uri!r} does not exist")
    local = os.path.join(directory, os.path.basename(uri))
    tf.io.gfile.copy(uri, local, overwrite=True)
    return local


def build_backbone(
    name: str | None, weights: str, input_shape: tuple[int, ...] | None, alpha: float = 1.0
) -> tf.keras.Model:
    """Builds the keras.applications architecture `name` with `include_top=False`, or, without a name,
    loads any Keras model from a `.keras` file.

    `weights` is `imagenet` (Keras downloads them: needs network), `none` (random initialisation),
    a weights file (`.h5`, `.weights.h5`) for the named architecture, or a saved model (`.keras`)
    that is loaded in Keras safe mode, so a downloaded file can never run code. `input_shape` None
    takes a saved model's own.
    """
    spec = backbone_spec(name) if name else None
    if spec is None and not is_saved_backbone(weights):
        raise BackboneError(f"backbone_weights: a custom backbone is a .keras model file, got {weights!r}")
    if spec and min(input_shape[:2]) < spec.min_size:
        raise BackboneError(f"image_size: {name} needs at least {spec.min_size} px, got {input_shape[:2]}")
    if is_saved_backbone(weights):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                model = load_model_file(_local_copy(weights, tmp), saved_backbone_objects())
            except ModelFileError as err:  # named by `weights`: the local copy of a URI is a temporary file
                raise BackboneError(f"backbone_weights: {weights}: {err.reason}") from None
        if len(model.outputs) != 1:  # the new head (or the model's own) reads one tensor
            raise BackboneError(f"backbone_weights: {weights}: the model has {len(model.outputs)} outputs "
                                f"({', '.join(model.output_names)}); a base has one")
        shapes = [tuple(tensor.shape[1:]) for tensor in model.inputs]
        if input_shape is not None and shapes != [tuple(input_shape)]:
            takes = ", ".join(f"{name} {shape}" for name, shape in zip(model.input_names, shapes))
            raise BackboneError(f"backbone_weights: the saved backbone takes {takes}, the data has {tuple(input_shape)}")
        return model
    kwargs = {"alpha": alpha} if spec.takes_alpha and alpha is not None else {}  # None: the architecture's own
    keras_weights = {"imagenet": "imagenet", "none": None}.get(weights.lower(), "file")
    model = spec.builder(
        include_top=False,
        weights=None if keras_weights == "file" else keras_weights,
        input_shape=input_shape,
        **kwargs,
    )
    if keras_weights == "file":
        with tempfile.TemporaryDirectory() as tmp:
            local = _local_copy(weights, tmp)
            try:
                model.load_weights(local)
            except (OSError, ValueError) as err:  # not HDF5, another architecture or width, ...
                reason = " ".join(str(err).split())[:300]
                raise BackboneError(f"backbone_weights: {weights}: not weights of this {name}: {reason}") from None
    return model


@tf.keras.utils.register_keras_serializable(package="freeze_trainer")
class BackbonePreprocessing(tf.keras.layers.Layer):
    """Maps images scaled to [0, 1] to what the named backbone's pretrained weights expect; without a
    name (a base of the user's own), images pass unchanged."""

    def __init__(self, backbone: str | None, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self._preprocess_input = backbone_spec(backbone).module.preprocess_input if backbone else None

    def call(self, images):
        return self._preprocess_input(images * 255.0) if self._preprocess_input else images

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


def saved_backbone_objects() -> dict[str, type]:
    """The only non-built-in class a saved backbone may name: this project's own, by its registered name."""
    return {tf.keras.utils.get_registered_name(BackbonePreprocessing): BackbonePreprocessing}

"""Loads a `.keras` model file without ever running code from it.

Keras' `safe_mode` refuses Python bytecode only: a config may still name any importable function (a
`Lambda` layer calling `pydoc.pipepager` runs a shell command) or a class from any module (the flaw of
Keras 3's CVE-2025-1550). So `config.json` is read and checked against an allowlist of Keras built-ins
before Keras deserializes anything from the file. A file saved by Keras 3 is first reworded as tf-keras
words it (keras3_files.py), then checked the same way.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Any

import tensorflow as tf

from freeze_trainer.keras.models.keras3_files import RESAVE_HINT, Keras3MappingError, saved_by_keras3, tf_keras_config

# config.json of the largest keras.applications model (EfficientNetV2L) is ~1 MB; 32 MB leaves room for big
# custom models and refuses a zip bomb's gigabytes before they are inflated.
MAX_MEMBER_BYTES = 32 * 1024 * 1024
# The classes a file may name, by the `module` tf-keras 2.16 writes for them. Each only stores data
# (shapes, rates, seeds); none takes a callable. Lambda and the op layers that wrap methods are absent.
_LAYERS = frozenset({
    "InputLayer", "Dense", "EinsumDense", "Activation", "Identity", "Masking", "Embedding",
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
    "ReLU", "LeakyReLU", "PReLU", "ELU", "ThresholdedReLU", "Softmax",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot",
    "Reshape", "Flatten", "Permute", "RepeatVector", "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout", "GaussianNoise",
    "AlphaDropout", "ActivityRegularization",
    "Rescaling", "Normalization", "Resizing", "CenterCrop", "RandomFlip", "RandomRotation", "RandomZoom",
    "RandomTranslation", "RandomContrast", "RandomBrightness", "RandomCrop", "RandomHeight", "RandomWidth",
    "MultiHeadAttention", "Attention", "AdditiveAttention",
})
ALLOWED_CLASSES: dict[str, frozenset[str]] = {
    "keras.layers": _LAYERS,
    "keras.initializers": frozenset({
        "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform", "TruncatedNormal", "VarianceScaling",
        "GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform", "LecunNormal", "LecunUniform", "Orthogonal",
        "Identity",
    }),
    "keras.regularizers": frozenset({"L1", "L2", "L1L2", "OrthogonalRegularizer"}),
    "keras.constraints": frozenset({"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm", "RadialConstraint"}),
    "keras.mixed_precision": frozenset({"Policy"}),  # a layer's dtype under mixed precision
    "keras": frozenset({"Sequential"}),
    "tf_keras.src.engine.sequential": frozenset({"Sequential"}),
    "tf_keras.src.engine.functional": frozenset({"Functional"}),
    "tf_keras.src.layers.core.tf_op_layer": frozenset({"TFOpLambda"}),
}
# Activations are stored by name and looked up among Keras' own, and in the global registry too: hence a list.
ALLOWED_ACTIVATIONS = frozenset({
    "linear", "relu", "elu", "selu", "gelu", "sigmoid", "hard_sigmoid", "tanh", "softmax", "softplus",
    "softsign", "swish", "mish", "exponential",
})
# An op layer calls the TF function it names, with arguments from the file (`io.gfile.rmtree`, say):
# only pure tensor arithmetic, what MobileNetV3's hard-swish writes.
ALLOWED_TF_OPS = frozenset({"__operators__.add", "math.add", "math.subtract", "math.multiply", "math.truediv"})
_ACTIVATION_KEYS = ("activation", "recurrent_activation")
# A string here is resolved by name through Keras' registry; tf-keras always writes these as objects.
_OBJECT_KEY_SUFFIXES = ("_initializer", "_regularizer", "_constraint")


class ModelFileError(ValueError):
    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def load_model_file(path: str, project_objects: dict[str, type]) -> tf.keras.Model:
    """The model in `path`, uncompiled. `project_objects` maps the registered names of this project's
    serializable classes to them: the only classes beyond Keras' built-ins that a file may name."""
    config, keras3 = checked_config(path, frozenset(project_objects))
    if not keras3:
        return _load(path, project_objects)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return _load(_with_config(path, config, tmp), project_objects)
        except (TypeError, ValueError, KeyError) as err:  # a layer config tf-keras does not take, say
            # tf-keras' message quotes the whole layer config before the reason: keep the reason.
            reason = " ".join(str(err).rsplit("Exception encountered:", 1)[-1].split())[:200]
            raise ModelFileError(path, f"{keras3}, and tf-keras cannot build it: {reason}; {RESAVE_HINT}") from None


def checked_config(path: str, project_names: frozenset[str]) -> tuple[dict[str, Any], str | None]:
    """`path`'s config as tf-keras reads it (a Keras 3 file's mapped onto tf-keras), checked against the
    allowlist without deserializing anything, and for a Keras 3 file which Keras saved it (else None).
    Raises ModelFileError with the reason a file is refused."""
    config, metadata = read_config(path), _read_metadata(path)
    keras3 = f"saved by Keras {metadata.get('keras_version')}" if saved_by_keras3(metadata) else None
    if keras3:
        try:
            config = tf_keras_config(config)
        except (Keras3MappingError, RecursionError) as err:
            reason = err if isinstance(err, Keras3MappingError) else "its config nests too deep"
            raise ModelFileError(path, f"{keras3}, in a form tf-keras cannot read: {reason}; {RESAVE_HINT}") from None
    refusal = config_refusal(config, project_names)
    if refusal:
        raise ModelFileError(path, f"{keras3}: {refusal}; {RESAVE_HINT}" if keras3 else refusal)
    return config, keras3


def _load(path: str, project_objects: dict[str, type]) -> tf.keras.Model:
    # compile=False: the checks skip `compile_config` (optimizer, losses) because it is never deserialized.
    return tf.keras.models.load_model(path, custom_objects=project_objects, compile=False, safe_mode=True)


def _with_config(path: str, config: dict[str, Any], directory: str) -> str:
    """A copy of the archive at `path` in `directory` with `config` as its config.json."""
    copy = os.path.join(directory, os.path.basename(path))
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(copy, "w") as target:
        for entry in source.infolist():
            if entry.filename != "config.json":
                target.writestr(entry, source.read(entry))
        target.writestr("config.json", json.dumps(config))
    return copy


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    """The bytes of `name` in `archive`, refused (ValueError) unread when it inflates past MAX_MEMBER_BYTES:
    a zip bomb's entry is small on disk and gigabytes in memory. Reading stops at the limit whatever the
    header claims."""
    size = archive.getinfo(name).file_size
    if size > MAX_MEMBER_BYTES:
        raise ValueError(f"{name} inflates to {size} bytes, more than {MAX_MEMBER_BYTES}")
    with archive.open(name) as member:
        data = member.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise ValueError(f"{name} inflates to more than {MAX_MEMBER_BYTES} bytes")
    return data


def _read_metadata(path: str) -> dict[str, Any]:
    """metadata.json of a `.keras` archive (which Keras saved it); empty when absent or not a JSON object."""
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(_read_member(archive, "metadata.json"))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, RecursionError):
        return {}
    return metadata if isinstance(metadata, dict) else {}


def read_config(path: str) -> dict[str, Any]:
    """`config.json` of a `.keras` archive, read without deserializing anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            text = _read_member(archive, "config.json")
    except ValueError as err:
        raise ModelFileError(path, f"not read: {err}") from None
    except zipfile.BadZipFile:
        raise ModelFileError(path, "not a .keras file: not a zip archive") from None
    except KeyError:
        raise ModelFileError(path, "not a .keras file: the archive has no config.json") from None
    except OSError as err:
        raise ModelFileError(path, f"cannot be read: {err.strerror or err}") from None
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as err:  # ValueError covers bad UTF-8 and bad JSON
        raise ModelFileError(path, f"config.json is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ModelFileError(path, "config.json does not describe a model")
    return config


def config_refusal(config: dict[str, Any], project_names: frozenset[str]) -> str | None:
    """Why Keras must not deserialize `config` ("layer 'x': reason"), or None. Walks the whole tree
    with a stack, since a file may nest deeper than Python's recursion limit."""
    stack: list[tuple[Any, str]] = [(config, "?")]
    while stack:
        node, layer = stack.pop()
        if isinstance(node, list):
            stack.extend((item, layer) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        is_object = "class_name" in node
        if is_object:
            layer = _object_name(node) or layer
            reason = _object_refusal(node, project_names)
            if reason:
                return f"layer {layer!r}: {reason}"
        for key, value in node.items():
            if key == "compile_config" or (is_object and key == "module"):  # an object's module: checked above
                continue
            reason = _value_refusal(key, value)
            if reason:
                return f"layer {layer!r}: {reason}"
            stack.append((value, layer))
    return None


def _object_name(node: dict[str, Any]) -> str | None:
    config = node.get("config")
    name = config.get("name") if isinstance(config, dict) else None
    return name if isinstance(name, str) else None


def _object_refusal(node: dict[str, Any], project_names: frozenset[str]) -> str | None:
    """Why one serialized object (a dict with `class_name`) is refused, or None."""
    class_name, module, config = node.get("class_name"), node.get("module"), node.get("config")
    registered = node.get("registered_name")
    if not isinstance(class_name, str) or not isinstance(registered, (str, type(None))):
        return "class_name and registered_name must be strings"
    if class_name == "__lambda__":
        return "holds Python bytecode (a lambda)"
    if class_name == "function":
        return f"names the Python function {module}.{config}"
    if class_name == "Lambda":
        return "a Lambda layer calls a Python function named by the file"
    if class_name != "TFOpLambda" and isinstance(config, dict) and "function" in config:
        return f"{class_name!r} carries a Python function in its config"
    if registered in project_names:
        return None  # Keras resolves it through the registry, to this project's own class
    if not _is_keras_module(module):
        return f"class {class_name!r} from module {module!r}, which is not Keras' own"
    if class_name not in ALLOWED_CLASSES.get(module, ()):
        return f"{module}.{class_name} is not an allowed Keras built-in"
    if registered not in (None, class_name):  # a registered name outranks module and class_name
        return f"registered name {registered!r} is neither a Keras built-in nor this project's"
    if class_name == "TFOpLambda":
        return _op_refusal(config)
    return None


def _op_refusal(config: Any) -> str | None:
    function = config.get("function") if isinstance(config, dict) else None
    if not isinstance(function, str) or function not in ALLOWED_TF_OPS:
        return f"an op layer calls tf.{function}, which is not allowed tensor arithmetic"
    return None


def _value_refusal(key: str, value: Any) -> str | None:
    """Why one config entry is refused, or None: names Keras resolves outside the objects checked above."""
    if (key == "module" or key.endswith("_module")) and value is not None and not _is_keras_module(value):
        return f"{key} {value!r} is not Keras' own"
    if key in _ACTIVATION_KEYS and isinstance(value, str) and value not in ALLOWED_ACTIVATIONS:
        return f"activation {value!r} is not a Keras built-in activation"
    if key.endswith(_OBJECT_KEY_SUFFIXES) and isinstance(value, str):
        return f"{key} {value!r} is a name, not a serialized Keras object"
    return None


def _is_keras_module(module: Any) -> bool:
    return isinstance(module, str) and module.split(".")[0] in ("keras", "tf_keras")

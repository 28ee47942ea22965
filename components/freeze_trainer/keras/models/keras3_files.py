"""`.keras` files saved by Keras 3 (a plain `import tensorflow` on TF 2.16+), read as tf-keras files.

Keras 3 writes the same archive (config.json, model.weights.h5 with the same weight layout) and, for the
common layers, the same layer configs, but words a few things its own way: the Functional class's module,
a dtype policy object where tf-keras writes the dtype's name, an input layer's `batch_shape`, and a layer's
inbound calls as (args, kwargs) holding tensor references. `tf_keras_config` rewrites exactly those; the
result goes through the same allowlist as any tf-keras file, so a layer tf-keras does not have is refused
there, and nothing is ever resolved from the file that the allowlist did not admit.
"""

from __future__ import annotations

from typing import Any

# How to get a tf-keras file from a Keras 3 model, for every Keras 3 file this module cannot map.
RESAVE_HINT = ("re-save it with tf-keras: rebuild the model with TF_USE_LEGACY_KERAS=1 set before TensorFlow is "
               "imported, load the Keras 3 weights (model.save_weights) and save it as .keras")
_FUNCTIONAL_MODULES = ("keras.src.models.functional", "keras.src.models.model", "keras.models", "keras")
_DTYPE_POLICIES = ("DTypePolicy", "FloatDTypePolicy")
_TENSOR = "__keras_tensor__"


class Keras3MappingError(ValueError):
    """A Keras 3 config entry with no tf-keras wording."""


def saved_by_keras3(metadata: dict[str, Any]) -> bool:
    """Whether the archive's metadata.json names Keras 3 (tf-keras writes its own 2.x version)."""
    return str(metadata.get("keras_version", "")).startswith("3.")


def tf_keras_config(config: Any) -> Any:
    """The Keras 3 `config` as tf-keras words it; raises Keras3MappingError for what has no wording."""
    if isinstance(config, list):
        return [tf_keras_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    class_name, module = config.get("class_name"), config.get("module")
    if class_name in _DTYPE_POLICIES and module == "keras":
        return _dtype_name(config)  # tf-keras layers take a policy's name as their dtype
    mapped = {key: (value if key == "inbound_nodes" else tf_keras_config(value)) for key, value in config.items()}
    if class_name == "Functional" and module in _FUNCTIONAL_MODULES:
        mapped["module"] = "tf_keras.src.engine.functional"
        mapped["config"] = _functional_config(mapped.get("config"))
    if class_name == "InputLayer" and isinstance(mapped.get("config"), dict):
        mapped["config"] = _input_layer_config(mapped["config"])
    return mapped


def _functional_config(config: Any) -> dict[str, Any]:
    """A Functional model's config with its layers' calls in tf-keras' form. tf-keras numbers the calls of a
    nested model built on an Input from 1 (its own construction is call 0, never saved); Keras 3 from 0."""
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise Keras3MappingError("a Functional model without its list of layers")
    layers = [layer for layer in config["layers"] if isinstance(layer, dict)]
    calls = {_layer_name(layer): len(layer.get("inbound_nodes") or ()) for layer in layers}
    first = {_layer_name(layer): int(_built_on_input(layer)) for layer in layers}

    def reference(history: Any, layer: str) -> list[Any]:
        if not isinstance(history, list) or len(history) != 3 or history[0] not in calls:
            raise Keras3MappingError(f"layer {layer!r}: a call on a tensor of no layer of the model ({history!r})")
        name, node, tensor = history
        if not isinstance(node, int) or not 0 <= node < max(calls[name], 1):
            raise Keras3MappingError(f"layer {layer!r}: a call on call {node!r} of layer {name!r}, which it has not")
        return [name, node + first[name], tensor]

    converted = []
    for layer in layers:
        name = _layer_name(layer)
        nodes = [_inbound_node(node, name, reference) for node in layer.get("inbound_nodes") or ()]
        converted.append({**layer, "inbound_nodes": nodes})
    ends = {key: _end_references(config.get(key), reference) for key in ("input_layers", "output_layers")}
    return {**config, "layers": converted, **ends}


def _built_on_input(layer: dict[str, Any]) -> bool:
    """Whether a layer is a model built on an Input (a Functional model, or a Sequential starting with one)."""
    if layer.get("class_name") == "Functional":
        return True
    inner = (layer.get("config") or {}).get("layers") if layer.get("class_name") == "Sequential" else None
    return bool(inner) and isinstance(inner[0], dict) and inner[0].get("class_name") == "InputLayer"


def _end_references(ends: Any, reference) -> Any:
    """A model's input_layers or output_layers: one [name, node, tensor] reference, or a list of them."""
    if isinstance(ends, list) and ends and not isinstance(ends[0], list):
        return reference(ends, "?")
    return [reference(end, "?") for end in ends or ()]


def _dtype_name(policy: dict[str, Any]) -> str:
    name = policy.get("config", {}).get("name") if isinstance(policy.get("config"), dict) else None
    if not isinstance(name, str):
        raise Keras3MappingError("a dtype policy without a name")
    return name


def _input_layer_config(config: dict[str, Any]) -> dict[str, Any]:
    config = dict(config)
    if "batch_shape" in config:
        config["batch_input_shape"] = config.pop("batch_shape")
    if config.pop("optional", False):
        raise Keras3MappingError(f"layer {config.get('name')!r}: an optional input, which tf-keras does not have")
    return config


def _layer_name(layer: dict[str, Any]) -> str:
    name = layer.get("name") or (layer.get("config") or {}).get("name")
    return name if isinstance(name, str) else "?"


def _inbound_node(node: Any, layer: str, reference) -> list[list[Any]]:
    """One call of a layer: Keras 3's {"args": [...], "kwargs": {...}} with tensor references, as tf-keras'
    list of [layer name, node index, tensor index, call kwargs], one entry per input tensor."""
    if not isinstance(node, dict) or not isinstance(node.get("args"), list):
        raise Keras3MappingError(f"layer {layer!r}: a call that is not Keras 3's (args, kwargs)")
    kwargs = {key: value for key, value in (node.get("kwargs") or {}).items() if value is not None}
    if any(_holds_tensor(value) for value in kwargs.values()):
        raise Keras3MappingError(f"layer {layer!r}: a call with a tensor keyword argument")
    entries: list[list[Any]] = []
    pending = list(node["args"])
    while pending:
        arg = pending.pop(0)
        if isinstance(arg, list):
            pending[:0] = arg
        elif isinstance(arg, dict) and arg.get("class_name") == _TENSOR:
            entries.append([*reference((arg.get("config") or {}).get("keras_history"), layer), kwargs])
        else:
            raise Keras3MappingError(f"layer {layer!r}: a call with a non-tensor argument {arg!r}")
    return entries


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, list):
        return any(_holds_tensor(item) for item in value)
    return isinstance(value, dict) and value.get("class_name") == _TENSOR

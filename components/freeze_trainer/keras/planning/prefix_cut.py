"""Where a phase's frozen prefix ends: the cut between what is computed once and what trains.

A phase's *live* part is every layer call that trains (has weights the plan trains), updates BatchNorm
statistics (`batchnorm: train` on a layer run in training mode), draws random numbers while training
(augmentation, dropout), or consumes a tensor one of those produced. The *prefix* is the rest: frozen,
deterministic and identical every epoch. The cut is the prefix's output tensors that the live part
consumes: one at a block boundary, several where a skip connection crosses it. When only the head
trains, the cut is the pooled features (`classifier_model.feature_extractor`).

Models are read node by node, nested models (the classifier's backbone) expanded in their graph order,
each call with the `training` value it runs with: a backbone called with `training=False` (BatchNorm
inference mode) runs every one of its layers in inference mode. `prefix_model` and `live_model` call the
model's own layer objects again in that order, so training the live model trains the model's variables.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tf_keras.src.engine.base_layer import BaseRandomLayer

from freeze_trainer.keras.models.classifier_model import base_layers
from freeze_trainer.keras.planning.freeze_plan import PhasePlan


@dataclass(frozen=True)
class _Call:
    """One call of a layer (a node of a model's graph), its tensors named by `_TensorIds`."""

    layer: tf.keras.layers.Layer
    node: object  # the tf_keras Node: its arguments are replayed with `map_arguments`
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    inference: bool  # an enclosing model call fixed `training=False`


class _TensorIds:
    """One id per tensor of the expanded graph: a nested model's input and output tensors are the same
    tensors as the outer ones it was called on and returned."""

    def __init__(self):
        self.aliases: dict[int, int] = {}
        self.tensors: dict[int, object] = {}  # id -> the KerasTensor, kept alive so that ids stay unique

    def of(self, tensor) -> int:
        key = self.aliases.get(id(tensor), id(tensor))
        self.tensors.setdefault(key, tensor)
        return key


def _is_graph_model(layer) -> bool:
    return isinstance(layer, tf.keras.Model) and getattr(layer, "_is_graph_network", False)


def _expand(model: tf.keras.Model, ids: _TensorIds, inference: bool, calls: list[_Call]) -> None:
    for depth in sorted(model._nodes_by_depth, reverse=True):  # the order Functional runs them in
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            training = node.call_kwargs.get("training")
            inner_inference = inference if training is None else training is False
            inputs = tuple(ids.of(t) for t in node.keras_inputs)
            if _is_graph_model(node.layer):
                nested = node.layer
                outer_inputs = tf.nest.flatten(node.call_args[0] if node.call_args else node.call_kwargs["inputs"])
                for inner, outer in zip(nested.inputs, outer_inputs):
                    ids.aliases[id(inner)] = ids.of(outer)
                _expand(nested, ids, inner_inference, calls)
                for outer, inner in zip(tf.nest.flatten(node.outputs), nested.outputs):
                    ids.aliases[id(outer)] = ids.of(inner)
                continue
            outputs = tuple(ids.of(t) for t in tf.nest.flatten(node.outputs))
            calls.append(_Call(node.layer, node, inputs, outputs, inner_inference))


def _graph(model: tf.keras.Model) -> tuple[list[_Call], _TensorIds]:
    ids, calls = _TensorIds(), []
    _expand(model, ids, False, calls)
    return calls, ids


_BATCHNORM_STATISTICS = "updates its BatchNorm statistics (batchnorm: train)"
_RANDOM = "draws random numbers"


def _why_live(call: _Call, plan: PhasePlan) -> str | None:
    """Why the call is live on its own (not through its inputs); None when it is not."""
    state = next((s for s in plan.layers if s.name == call.layer.name), None)
    if not call.inference and state is not None and state.batchnorm == "train":
        return _BATCHNORM_STATISTICS
    if state is not None and state.trainable and state.trainable_params:
        return "trains"
    if not call.inference and isinstance(call.layer, BaseRandomLayer):
        return _RANDOM
    return None


@dataclass(frozen=True)
class PrefixCut:
    """A phase's cut. `tensors` are the prefix outputs the live part consumes, in the order it first
    consumes them (KerasTensors of the model's graph, nested ones included); `blocker` says why the phase
    does not cache, None when it does."""

    names: tuple[str, ...]  # the layer producing each cut tensor (`:<i>` for its output i > 0)
    blocker: str | None
    tensors: tuple  # KerasTensors
    _ids: tuple[int, ...]  # the cut tensors' ids in the expanded graph
    _outputs: tuple[int, ...]  # the model outputs' ids
    _graph_inputs: tuple[int, ...]  # the model inputs' ids
    _calls: tuple[_Call, ...]
    _live: frozenset[int]  # indices into `_calls`

    @property
    def caches(self) -> bool:
        return self.blocker is None

    @property
    def bytes_per_example(self) -> int:
        """What caching one example takes: the cut tensors' elements times their dtypes' sizes."""
        return sum(int(np.prod(t.shape[1:])) * tf.as_dtype(t.dtype).size for t in self.tensors)

    def describe(self) -> str:
        if not self.caches:
            return f"not cached: {self.blocker}"
        return f"cuts at {', '.join(self.names)} ({self.bytes_per_example:,} bytes per example)"


def _tensor_name(tensor) -> str:
    layer, _, index = tensor._keras_history
    return layer.name if index == 0 else f"{layer.name}:{index}"


def _blocker(calls: list[_Call], reasons: dict[int, str], live: set[int], plan: PhasePlan,
             base: set[str]) -> str | None:
    """Why a phase does not cache: its live part starts below the trainable block, at a base layer that
    draws random numbers or updates BatchNorm statistics outside the group of the first layer that trains
    otherwise (all BatchNorm layers unfrozen with `batchnorm: train`, say); or no base layer precedes it."""
    first = min(reasons)
    name = calls[first].layer.name
    if name in base and reasons[first] != "trains":
        trained = next((calls[index].layer.name for index in sorted(reasons) if reasons[index] == "trains"), None)
        below = reasons[first] == _RANDOM or trained is None or plan.state(trained).group != plan.state(name).group
        if below:
            return f"{name} {reasons[first]}"
    if not any(call.layer.name in base for index, call in enumerate(calls) if index not in live):
        return f"{name} trains and no base layer before it is frozen"
    return None


def find_cut(model: tf.keras.Model, plan: PhasePlan) -> PrefixCut:
    """The cut of `model` (built by `build_classifier`, or with a declared head) under `plan`."""
    calls, ids = _graph(model)
    reasons = {index: why for index, call in enumerate(calls) if (why := _why_live(call, plan))}
    live, live_tensors, cut = set(), set(), []
    for index, call in enumerate(calls):
        if index in reasons or live_tensors.intersection(call.inputs):
            live.add(index)
            live_tensors.update(call.outputs)
            for tensor_id in call.inputs:
                if tensor_id not in live_tensors and tensor_id not in cut:
                    cut.append(tensor_id)  # a prefix tensor the live part consumes
    blocker = _blocker(calls, reasons, live, plan, {layer.name for layer in base_layers(model)})
    tensors = tuple(ids.tensors[t] for t in cut)
    outputs, graph_inputs = (tuple(ids.of(t) for t in ends) for ends in (model.outputs, model.inputs))
    return PrefixCut(tuple(_tensor_name(t) for t in tensors), blocker, tensors, tuple(cut), outputs, graph_inputs,
                     tuple(calls), frozenset(live))


def _replay(cut: PrefixCut, indices: list[int], values: dict[int, object], inference: bool) -> dict[int, object]:
    """Calls the layers of `cut._calls[indices]` again, in order, on `values` (tensor id -> tensor) with
    each node's own arguments; returns `values` with their outputs. `inference` calls every layer with
    `training=False`; otherwise a layer keeps the inference mode an enclosing model call gave it."""
    for index in indices:
        call = cut._calls[index]
        arguments = defaultdict(list)
        for tensor_id, (key, _) in zip(call.inputs, call.node._keras_inputs_ids_and_indices):
            arguments[key].append(values[tensor_id])
        args, kwargs = call.node.map_arguments(arguments)
        if (inference or call.inference) and kwargs.get("training") is None and call.layer._expects_training_arg:
            kwargs = {**kwargs, "training": False}
        outputs = call.layer(*args, **kwargs)
        values.update(zip(call.outputs, tf.nest.flatten(outputs)))
    return values


def _input_like(tensor, name: str):
    return tf.keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=name)


def _one_or_list(tensors: list):
    return tensors[0] if len(tensors) == 1 else tensors


def prefix_model(model: tf.keras.Model, cut: PrefixCut) -> tf.keras.Model:
    """`model`'s inputs to the cut tensors (a list when there are several), in inference mode: the
    calls the cut tensors need, with the model's layer objects."""
    producer = {tensor_id: index for index, call in enumerate(cut._calls) for tensor_id in call.outputs}
    needed, pending = set(), list(cut._ids)
    while pending:
        index = producer.get(pending.pop())
        if index is not None and index not in needed:
            needed.add(index)
            pending.extend(cut._calls[index].inputs)
    inputs = [_input_like(t, t.name.split(":")[0]) for t in model.inputs]
    values = _replay(cut, sorted(needed), dict(zip(cut._graph_inputs, inputs)), inference=True)
    outputs = [values[tensor_id] for tensor_id in cut._ids]
    return tf.keras.Model(inputs, _one_or_list(outputs), name=f"{model.name}_prefix")


def live_model(model: tf.keras.Model, cut: PrefixCut) -> tf.keras.Model:
    """The cut tensors to `model`'s outputs: the live calls, with the model's layer objects and variables
    and each call's `training` mode, so that training it trains `model`."""
    inputs = [_input_like(t, f"cut_{name.replace(':', '_')}") for t, name in zip(cut.tensors, cut.names)]
    values = _replay(cut, sorted(cut._live), dict(zip(cut._ids, inputs)), inference=False)
    outputs = [values[tensor_id] for tensor_id in cut._outputs]
    return tf.keras.Model(_one_or_list(inputs), _one_or_list(outputs), name=f"{model.name}_live")

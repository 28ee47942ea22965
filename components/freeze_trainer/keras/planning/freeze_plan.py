"""Resolves a freeze policy against a concrete model into per-phase plans, and applies a plan.

Planning is pure: it reads layer names, classes and parameter counts and returns data, so `plan`
can print it and the executor can reject a bad policy before any data is read. `apply_plan` is the
only function that touches `trainable`.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from freeze_trainer.keras.models.backbones import architecture_block_pattern, block_groups
from freeze_trainer.keras.models.classifier_model import (
    backbone_name_of,
    base_layers,
    head_layers,
    random_layers_before_features,
)
from freeze_trainer.policy.freeze_policy import (
    MAX_LEARNING_RATE,
    MIN_LEARNING_RATE,
    FreezePolicy,
    Phase,
    PolicyError,
    Selector,
)

BATCHNORM_CLASSES = (tf.keras.layers.BatchNormalization,)
HEAD_GROUP = "head"


@dataclass(frozen=True)
class LayerState:
    name: str
    class_name: str
    group: str  # the backbone block (`block_16`), `stem`, `top` or `head`
    auto_group: int | None  # the index of the layer's auto group (0 is the bottom); None in the head
    trainable: bool
    batchnorm: str | None  # the layer's BatchNorm mode, None for other layers
    learning_rate: float | None  # None when frozen or without weights
    trainable_params: int
    frozen_params: int

    @property
    def in_head(self) -> bool:
        return self.group == HEAD_GROUP

    @property
    def auto_group_name(self) -> str:
        return HEAD_GROUP if self.auto_group is None else auto_group_name(self.auto_group)


def auto_group_name(index: int) -> str:
    return f"auto_{index}"


@dataclass(frozen=True)
class VariableSplit:
    """Which of a model's variables a phase changes: the one value the optimizer, the tape step and the
    proof use. `trainable` get gradients; `moving_statistics` are the BatchNorm statistics that update in
    `train` mode; everything else is `frozen` and must stay bit-identical."""

    trainable: tuple[tf.Variable, ...]
    moving_statistics: tuple[tf.Variable, ...]
    frozen: tuple[tf.Variable, ...]

    def may_change(self) -> set:
        """References (`v.ref()`, never `var in list`) of the variables allowed to change."""
        return {v.ref() for v in (*self.trainable, *self.moving_statistics)}


@dataclass(frozen=True)
class PhasePlan:
    phase: Phase
    epochs: int | None
    steps: int | None
    learning_rate: float  # the head's
    layers: tuple[LayerState, ...]
    # Why the base's features cannot be computed once and cached for this phase; None when they can.
    feature_cache_blocker: str | None

    @property
    def caches_features(self) -> bool:
        return self.feature_cache_blocker is None

    def state(self, layer_name: str) -> LayerState:
        return next(state for state in self.layers if state.name == layer_name)

    def is_trainable(self, layer_name: str) -> bool:
        return self.state(layer_name).trainable

    def lr_multipliers(self) -> dict[str, float]:
        """Each trainable layer's rate as a multiple of the head's."""
        return {s.name: s.learning_rate / self.learning_rate for s in self.layers if s.learning_rate is not None}

    def variable_split(self, model: tf.keras.Model) -> VariableSplit:
        """The plan's split of `model.variables`, from the plan alone (not from Keras' `trainable` flags):
        a trainable layer trains the weights created trainable, i.e. all but BatchNorm's statistics."""
        backbone, head = policy_layers(model)
        trainable, moving = {}, {}
        for layer in backbone + head:
            state = self.state(layer.name)
            if state.trainable:
                trainable.update((v.ref(), v) for v in layer.weights if v.trainable)
            if state.batchnorm == "train":
                moving.update((v.ref(), v) for v in (layer.moving_mean, layer.moving_variance))
        frozen = [v for v in model.variables if v.ref() not in trainable and v.ref() not in moving]
        return VariableSplit(tuple(trainable.values()), tuple(moving.values()), tuple(frozen))

    def transition(self) -> dict:
        """How the phase starts and ends, for reports: its optimizer state mode, warm-up and restore_best."""
        warmup = self.phase.warmup
        return {
            "optimizer_state": self.phase.optimizer_state_mode,
            "warmup": warmup.as_dict() if warmup else None,
            "restore_best": self.phase.restores_best,
        }

    def trainable_layers(self) -> set[str]:
        """Names of the layers whose weights train in this phase."""
        return {state.name for state in self.layers if state.trainable and state.trainable_params}

    @property
    def trainable_params(self) -> int:
        return sum(state.trainable_params for state in self.layers)

    @property
    def frozen_params(self) -> int:
        return sum(state.frozen_params for state in self.layers)


@dataclass(frozen=True)
class _Addressable:
    """The layers a policy can address, with their groups."""

    backbone: list[tf.keras.layers.Layer]
    head: list[tf.keras.layers.Layer]
    groups: dict[str, str]
    auto_groups: dict[str, int]  # backbone layer name -> auto group index; head layers are absent

    @property
    def every(self) -> list[tf.keras.layers.Layer]:
        return self.backbone + self.head

    def group_names(self) -> list[str]:
        auto = [auto_group_name(index) for index in self.auto_groups.values()]
        return list(dict.fromkeys([*self.groups.values(), *auto, HEAD_GROUP]))

    def in_group(self, name: str, group: str) -> bool:
        auto = self.auto_groups.get(name)
        return group in (self.groups[name], HEAD_GROUP if auto is None else auto_group_name(auto))


def policy_layers(model: tf.keras.Model) -> tuple[list[tf.keras.layers.Layer], list[tf.keras.layers.Layer]]:
    """The layers a policy can address: the base's (in order) and the head's."""
    return base_layers(model), head_layers(model)


def _addressable(model: tf.keras.Model, auto_groups: int, block_pattern: str | None) -> _Addressable:
    backbone, head = policy_layers(model)
    names = [layer.name for layer in backbone]
    chunks = np.array_split(np.arange(len(names)), min(auto_groups, len(names)))
    auto = {names[index]: number for number, chunk in enumerate(chunks) for index in chunk}
    groups = dict(zip(names, block_groups(block_pattern or architecture_block_pattern(backbone_name_of(model)), names)))
    for layer in head:
        groups[layer.name] = HEAD_GROUP
    return _Addressable(backbone, head, groups, auto)


def _no_match(key: str, description: str, wanted: str, candidates: list[str], noun: str = "layer names") -> PolicyError:
    close = difflib.get_close_matches(wanted, candidates, n=3, cutoff=0.5)
    hint = f"; closest {noun}: {', '.join(close)}" if close else ""
    return PolicyError(key, f"{description} matches no layer{hint}")


def _slice(spec: str) -> slice:
    start, stop = spec.split(":")
    return slice(int(start) if start else None, int(stop) if stop else None)


def select_layers(selector: Selector, layers: _Addressable, key: str) -> list[str]:
    """Names of the layers `selector` chooses; a selector that chooses nothing is a PolicyError."""
    every, backbone = layers.every, layers.backbone
    names = [layer.name for layer in every]
    kind = selector.kind
    key = f"{key}.{kind}"
    if kind == "base":
        chosen = [layer.name for layer in backbone]
    elif kind == "names":
        missing = [name for name in selector.names if name not in names]
        if missing:
            raise _no_match(key, f"layer name {missing[0]!r}", missing[0], names)
        chosen = list(selector.names)
    elif kind == "glob":
        chosen = [name for name in names if fnmatch.fnmatchcase(name, selector.glob)]
        if not chosen:
            raise _no_match(key, f"glob {selector.glob!r}", selector.glob, names)
    elif kind == "regex":
        try:
            pattern = re.compile(selector.regex)
        except re.error as err:
            raise PolicyError(key, f"invalid regular expression {selector.regex!r}: {err}") from None
        chosen = [name for name in names if pattern.fullmatch(name)]
        if not chosen:
            raise _no_match(key, f"regex {selector.regex!r}", selector.regex, names)
    elif kind == "top":
        if selector.top > len(backbone):
            raise PolicyError(key, f"asks for the top {selector.top} layers; the backbone has {len(backbone)}")
        chosen = [layer.name for layer in backbone[-selector.top :]]
    elif kind in ("top_fraction", "bottom_fraction"):
        count = max(1, round(getattr(selector, kind) * len(backbone)))
        chosen = [layer.name for layer in (backbone[-count:] if kind == "top_fraction" else backbone[:count])]
    elif kind == "indices":
        chosen = [layer.name for layer in backbone[_slice(selector.indices)]]
        if not chosen:
            raise PolicyError(key, f"slice {selector.indices!r} is empty for a backbone of {len(backbone)} layers")
    elif kind == "layer_class":
        chosen = [layer.name for layer in every if type(layer).__name__ == selector.layer_class]
        if not chosen:
            classes = sorted({type(layer).__name__ for layer in every})
            raise _no_match(key, f"layer class {selector.layer_class!r}", selector.layer_class, classes, "classes")
    elif kind == "group":
        chosen = [name for name in names if layers.in_group(name, selector.group)]
        if not chosen:
            raise PolicyError(
                key,
                f"group {selector.group!r} does not exist for this backbone; its groups are "
                f"{', '.join(layers.group_names())}",
            )
    else:
        raise AssertionError(f"unhandled selector kind {kind}")
    return chosen


def _count(weights: list[tf.Variable]) -> int:
    return int(sum(weight.shape.num_elements() for weight in weights))


def _trains(layer: tf.keras.layers.Layer, trainable: dict[str, bool], policy: FreezePolicy) -> bool:
    """Whether the layer's weights train: the rules allow it and it is not BatchNorm held `frozen`."""
    is_frozen_bn = isinstance(layer, BATCHNORM_CLASSES) and policy.batchnorm == "frozen"
    return trainable[layer.name] and not is_frozen_bn


def _decayed_rates(
    policy: FreezePolicy, phase: Phase, head_lr: float, layers: _Addressable, trainable: dict[str, bool]
) -> dict[str, float]:
    decay = phase.lr_decay
    if decay is None:
        return {}
    if decay.per == "group":
        top_index = max(layers.auto_groups.values())
        return {
            layer.name: head_lr / decay.factor ** (top_index + 1 - layers.auto_groups[layer.name])
            for layer in layers.backbone
        }
    weighted = [layer for layer in reversed(layers.backbone) if layer.weights and _trains(layer, trainable, policy)]
    return {layer.name: head_lr / decay.factor ** depth for depth, layer in enumerate(weighted, start=1)}


def _check_effective_rate(rate: float, key: str, how: str) -> None:
    """A layer's rate obeys a learning rate's bounds (`LearningRate`), however it is reached."""
    if not MIN_LEARNING_RATE <= rate <= MAX_LEARNING_RATE:
        raise PolicyError(key, f"gives an effective learning rate of {rate:g} ({how}); a rate lies in "
                               f"[{MIN_LEARNING_RATE:g}, {MAX_LEARNING_RATE:g}]")


def _feature_cache_blocker(states: list[LayerState], random_layers: list[str]) -> str | None:
    training = [state.name for state in states if state.trainable and not state.in_head]
    if training:
        return f"{len(training)} backbone layer(s) train"
    if random_layers:
        return f"random layer {random_layers[0]!r} precedes the features"
    return None


def _layer_states(policy: FreezePolicy, layers: _Addressable, trainable: dict[str, bool], rates: dict[str, float]
                  ) -> list[LayerState]:
    """Each layer's state under the phase's decisions (`trainable`, `rates`: by layer name)."""
    states = []
    for layer in layers.every:
        is_bn = isinstance(layer, BATCHNORM_CLASSES)
        effective = _trains(layer, trainable, policy)
        # Moving statistics are never trainable variables; they count as frozen parameters here.
        moving = _count([layer.moving_mean, layer.moving_variance]) if is_bn else 0
        weights = _count(layer.weights)
        train_count = (weights - moving) if effective else 0
        states.append(
            LayerState(
                name=layer.name,
                class_name=type(layer).__name__,
                group=layers.groups[layer.name],
                auto_group=layers.auto_groups.get(layer.name),
                trainable=effective,
                batchnorm=(policy.batchnorm if trainable[layer.name] else "frozen") if is_bn else None,
                learning_rate=rates[layer.name] if effective and train_count else None,
                trainable_params=train_count,
                frozen_params=weights - train_count,
            )
        )
    return states


def _plan_phase(
    policy: FreezePolicy,
    phase: Phase,
    key: str,
    layers: _Addressable,
    default_lr: float,
    default_epochs: int,
    random_layers: list[str],
) -> PhasePlan:
    head_lr = phase.learning_rate or default_lr
    trainable = {layer.name: True for layer in layers.every}
    decided_by = {name: "" for name in trainable}
    for index, rule in enumerate(phase.rules):
        rule_key = f"{key}rules[{index}]"
        action = "unfreeze" if rule.trainable else "freeze"
        for name in select_layers(rule.selector, layers, f"{rule_key}.{action}"):
            trainable[name] = rule.trainable
            decided_by[name] = rule_key

    rates = {name: head_lr for name in trainable}
    rates.update(_decayed_rates(policy, phase, head_lr, layers, trainable))
    floor = phase.lr_decay.floor if phase.lr_decay else None
    for layer in layers.backbone:
        if floor is not None and rates[layer.name] < floor and trainable[layer.name]:
            trainable[layer.name] = False
            decided_by[layer.name] = f"{key}lr_decay.floor"
    for index, rule in enumerate(phase.lr_rules):
        for name in select_layers(rule.select, layers, f"{key}lr_rules[{index}].select"):
            rates[name] = rule.lr if rule.lr is not None else head_lr * rule.multiplier
        if rule.multiplier is not None:
            _check_effective_rate(head_lr * rule.multiplier, f"{key}lr_rules[{index}].multiplier",
                                  f"{rule.multiplier:g} × the head's rate {head_lr:g}")

    if not any(trainable.values()):
        raise PolicyError(key.rstrip(".") or "rules", "freezes every variable: nothing would train")
    frozen_head = [layer.name for layer in layers.head if not trainable[layer.name]]
    if frozen_head:
        raise PolicyError(
            decided_by[frozen_head[0]], f"freezes the new head ({', '.join(frozen_head)}); the head always trains"
        )

    states = _layer_states(policy, layers, trainable, rates)
    epochs = None if phase.steps else (phase.epochs or default_epochs)
    return PhasePlan(
        phase=phase,
        epochs=epochs,
        steps=phase.steps,
        learning_rate=head_lr,
        layers=tuple(states),
        feature_cache_blocker=_feature_cache_blocker(states, random_layers),
    )


def plan_policy(
    policy: FreezePolicy, model: tf.keras.Model, default_learning_rate: float = 1e-3, default_epochs: int = 5
) -> list[PhasePlan]:
    """One plan per phase. Raises PolicyError for rules that match nothing or leave nothing to train."""
    layers = _addressable(model, policy.auto_groups, policy.block_pattern)
    random_layers = random_layers_before_features(model)
    return [
        _plan_phase(
            policy, phase, policy.phase_key(index), layers, default_learning_rate, default_epochs, random_layers
        )
        for index, phase in enumerate(policy.resolved_phases())
    ]


def apply_plan(model: tf.keras.Model, plan: PhasePlan) -> None:
    """Sets `trainable` on every addressable layer. Keras needs a recompile afterwards."""
    model.trainable = True  # resets nested layers too; the plan then decides each one
    backbone, head = policy_layers(model)
    for layer in backbone + head:
        layer.trainable = plan.is_trainable(layer.name)

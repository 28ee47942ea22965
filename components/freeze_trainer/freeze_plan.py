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

import tensorflow as tf

from components.freeze_trainer.backbones import is_saved_backbone
from components.freeze_trainer.classifier_model import backbone_of, build_from_config, head_layers
from components.freeze_trainer.freeze_policy import FreezePolicy, Phase, PolicyError, Selector
from components.freeze_trainer.trainer_config import TrainerConfig

BATCHNORM_CLASSES = (tf.keras.layers.BatchNormalization,)


@dataclass(frozen=True)
class LayerState:
    name: str
    class_name: str
    in_head: bool
    trainable: bool
    batchnorm: str | None  # the layer's BatchNorm mode, None for other layers
    trainable_params: int
    frozen_params: int


@dataclass(frozen=True)
class PhasePlan:
    phase: Phase
    layers: tuple[LayerState, ...]

    def is_trainable(self, layer_name: str) -> bool:
        return self._by_name[layer_name].trainable

    @property
    def _by_name(self) -> dict[str, LayerState]:
        return {state.name: state for state in self.layers}

    @property
    def trainable_params(self) -> int:
        return sum(state.trainable_params for state in self.layers)

    @property
    def frozen_params(self) -> int:
        return sum(state.frozen_params for state in self.layers)


def policy_layers(model: tf.keras.Model) -> tuple[list[tf.keras.layers.Layer], list[tf.keras.layers.Layer]]:
    """The layers a policy can address: the backbone's (in order) and the head's."""
    backbone = [layer for layer in backbone_of(model).layers if not isinstance(layer, tf.keras.layers.InputLayer)]
    return backbone, head_layers(model)


def _no_match(key: str, description: str, wanted: str, names: list[str]) -> PolicyError:
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.5)
    hint = f"; closest layer names: {', '.join(close)}" if close else ""
    return PolicyError(key, f"{description} matches no layer{hint}")


def select_layers(
    selector: Selector, backbone: list[tf.keras.layers.Layer], head: list[tf.keras.layers.Layer], key: str
) -> list[str]:
    """Names of the layers `selector` chooses; a selector that chooses nothing is a PolicyError."""
    every = backbone + head
    names = [layer.name for layer in every]
    kind = selector.kind
    key = f"{key}.{kind}"
    if kind == "base":
        return [layer.name for layer in backbone]
    if kind == "names":
        missing = [name for name in selector.names if name not in names]
        if missing:
            raise _no_match(key, f"layer name {missing[0]!r}", missing[0], names)
        return list(selector.names)
    if kind == "glob":
        chosen = [name for name in names if fnmatch.fnmatchcase(name, selector.glob)]
        if not chosen:
            raise _no_match(key, f"glob {selector.glob!r}", selector.glob, names)
        return chosen
    if kind == "regex":
        try:
            pattern = re.compile(selector.regex)
        except re.error as err:
            raise PolicyError(key, f"invalid regular expression {selector.regex!r}: {err}") from None
        chosen = [name for name in names if pattern.fullmatch(name)]
        if not chosen:
            raise _no_match(key, f"regex {selector.regex!r}", selector.regex, names)
        return chosen
    if kind == "top":
        if selector.top > len(backbone):
            raise PolicyError(key, f"asks for the top {selector.top} layers; the backbone has {len(backbone)}")
        return [layer.name for layer in backbone[-selector.top :]]
    if kind == "bottom_fraction":
        count = max(1, round(selector.bottom_fraction * len(backbone)))
        return [layer.name for layer in backbone[:count]]
    if kind == "layer_class":
        chosen = [layer.name for layer in every if type(layer).__name__ == selector.layer_class]
        if not chosen:
            classes = sorted({type(layer).__name__ for layer in every})
            raise _no_match(key, f"layer class {selector.layer_class!r}", selector.layer_class, classes)
        return chosen
    raise AssertionError(f"unhandled selector kind {kind}")


def _weight_count(weights: list[tf.Variable]) -> int:
    return int(sum(weight.shape.num_elements() for weight in weights))


def _plan_phase(
    policy: FreezePolicy,
    phase: Phase,
    phase_key: str,
    backbone: list[tf.keras.layers.Layer],
    head: list[tf.keras.layers.Layer],
) -> PhasePlan:
    trainable = {layer.name: True for layer in backbone + head}
    decided_by = {name: "" for name in trainable}
    for index, rule in enumerate(phase.rules):
        rule_key = f"{phase_key}rules[{index}]"
        action = "unfreeze" if rule.trainable else "freeze"
        for name in select_layers(rule.selector, backbone, head, f"{rule_key}.{action}"):
            trainable[name] = rule.trainable
            decided_by[name] = rule_key
    frozen_head = [layer.name for layer in head if not trainable[layer.name]]
    if frozen_head:
        raise PolicyError(
            decided_by[frozen_head[0]], f"freezes the new head ({', '.join(frozen_head)}); the head always trains"
        )

    head_names = {layer.name for layer in head}
    states = []
    for layer in backbone + head:
        is_bn = isinstance(layer, BATCHNORM_CLASSES)
        effective = trainable[layer.name] and not (is_bn and policy.batchnorm == "frozen")
        # Moving statistics are never trainable variables; they count as frozen parameters here.
        moving = _weight_count([layer.moving_mean, layer.moving_variance]) if is_bn else 0
        weights = _weight_count(layer.weights)
        train_count = (weights - moving) if effective else 0
        states.append(
            LayerState(
                name=layer.name,
                class_name=type(layer).__name__,
                in_head=layer.name in head_names,
                trainable=effective,
                batchnorm=(policy.batchnorm if trainable[layer.name] else "frozen") if is_bn else None,
                trainable_params=train_count,
                frozen_params=weights - train_count,
            )
        )
    plan = PhasePlan(phase=phase, layers=tuple(states))
    if plan.trainable_params == 0:
        raise PolicyError(phase_key.rstrip(".") or "rules", "freezes every variable: nothing would train")
    return plan


def plan_policy(policy: FreezePolicy, model: tf.keras.Model) -> list[PhasePlan]:
    """One plan per phase. Raises PolicyError for rules that match nothing or leave nothing to train."""
    backbone, head = policy_layers(model)
    phases = policy.resolved_phases()
    return [
        _plan_phase(policy, phase, f"phases[{index}]." if policy.phases is not None else "", backbone, head)
        for index, phase in enumerate(phases)
    ]


def apply_plan(model: tf.keras.Model, plan: PhasePlan) -> None:
    """Sets `trainable` on every addressable layer. Keras needs a recompile afterwards."""
    model.trainable = True  # resets nested layers too; the plan then decides each one
    backbone, head = policy_layers(model)
    for layer in backbone + head:
        layer.trainable = plan.is_trainable(layer.name)


def plan_for_config(config: TrainerConfig, input_shape: tuple[int, int, int]) -> list[PhasePlan]:
    """Plans a trainer configuration without data or downloads: the backbone is built with random
    weights unless it is a saved `.keras` backbone, whose own architecture is the one that matters."""
    weights = config.backbone_weights if is_saved_backbone(config.backbone_weights) else "none"
    model = build_from_config(config.model_copy(update={"backbone_weights": weights}), input_shape, num_classes=2)
    return plan_policy(config.freeze_policy, model)

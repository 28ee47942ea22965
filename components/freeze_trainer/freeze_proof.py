"""Proof that a phase kept its frozen variables bit-identical.

Variables are identified by `v.ref()`: `var in list_of_vars` compares tensors elementwise, and two
variables can share a name. Names are kept only to report. A snapshot holds a SHA-256 of each value
rather than the value, so that a phase's start fits in a training checkpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from components.freeze_trainer.freeze_plan import PhasePlan, policy_layers


class FreezeViolation(RuntimeError):
    pass


@dataclass(frozen=True)
class FreezeCheck:
    phase: str
    passed: bool
    frozen_variables: int
    trainable_variables: int
    frozen_params: int
    trainable_params: int
    changed_frozen: tuple[str, ...]
    unchanged_trainable: tuple[str, ...]

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> FreezeCheck:
        """The inverse of `as_dict` after a JSON round trip, which turns tuples into lists."""
        return cls(**{**values, "changed_frozen": tuple(values["changed_frozen"]),
                      "unchanged_trainable": tuple(values["unchanged_trainable"])})


Snapshot = dict  # variable ref -> (name, SHA-256 of its value's bytes)


def snapshot(model: tf.keras.Model) -> Snapshot:
    return {v.ref(): (v.name, hashlib.sha256(np.asarray(v.numpy()).tobytes()).hexdigest()) for v in model.variables}


def variables_allowed_to_change(model: tf.keras.Model, plan: PhasePlan) -> set:
    """Trainable variables, plus the moving statistics of BatchNorm layers that train in `train` mode."""
    allowed = {v.ref() for v in model.trainable_variables}
    backbone, head = policy_layers(model)
    layers = {layer.name: layer for layer in backbone + head}
    for state in plan.layers:
        if state.batchnorm == "train":
            layer = layers[state.name]
            allowed.update(v.ref() for v in (layer.moving_mean, layer.moving_variance))
    return allowed


def check_phase(model: tf.keras.Model, plan: PhasePlan, before: Snapshot) -> FreezeCheck:
    after = snapshot(model)
    allowed = variables_allowed_to_change(model, plan)
    changed_frozen, unchanged_trainable = [], []
    for ref, (name, value) in before.items():
        same = after[ref][1] == value
        if ref in allowed:
            if same:
                unchanged_trainable.append(name)
        elif not same:
            changed_frozen.append(name)
    trainable = [v for v in model.variables if v.ref() in allowed]
    frozen = [v for v in model.variables if v.ref() not in allowed]
    return FreezeCheck(
        phase=plan.phase.name,
        # A phase in which nothing moved did not train: as much a failure as a frozen variable moving.
        passed=not changed_frozen and len(unchanged_trainable) < len(allowed),
        frozen_variables=len(frozen),
        trainable_variables=len(trainable),
        frozen_params=sum(v.shape.num_elements() for v in frozen),
        trainable_params=sum(v.shape.num_elements() for v in trainable),
        changed_frozen=tuple(changed_frozen),
        unchanged_trainable=tuple(unchanged_trainable),
    )


def raise_on_violation(check: FreezeCheck) -> None:
    if check.passed:
        return
    if not check.changed_frozen:
        raise FreezeViolation(f"phase {check.phase!r}: none of its {check.trainable_variables} trainable variables changed")
    shown = ", ".join(check.changed_frozen[:5])
    more = f" and {len(check.changed_frozen) - 5} more" if len(check.changed_frozen) > 5 else ""
    raise FreezeViolation(
        f"phase {check.phase!r}: {len(check.changed_frozen)} frozen variable(s) changed during training: {shown}{more}"
    )

"""Proof that a phase kept its frozen variables bit-identical.

Variables are identified by `v.ref()`: `var in list_of_vars` compares tensors elementwise, and two
variables can share a name. Names are kept only to report. A snapshot holds a SHA-256 of each value
rather than the value, so that a phase's start fits in a training checkpoint.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import tensorflow as tf

from freeze_trainer.keras.models.classifier_model import head_activation, head_layers, resolved_task
from freeze_trainer.keras.planning.freeze_plan import PhasePlan


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
    # Variables Keras had trainable although the plan freezes them (set `trainable` after apply_plan?).
    trainable_off_plan: tuple[str, ...] = ()
    # Trained variables holding NaN or Inf after the phase: training diverged.
    non_finite: tuple[str, ...] = ()
    # With `restore_best`: the epoch whose weights it ended with, numbered as Keras numbers the run's epochs
    # (the previous phase's last one when the phase's start was best).
    best_epoch: int | None = None
    # (first epoch's loss, highest later one) when the training loss rose past DIVERGENCE_RATIO × its start:
    # training diverged with finite weights (a rate far too high), as surely as with NaN.
    loss_rise: tuple[float, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> FreezeCheck:
        """The inverse of `as_dict` after a JSON round trip, which turns tuples into lists."""
        return cls(**{**values, **{key: tuple(values.get(key, ())) for key in _NAME_LISTS}})


_NAME_LISTS = ("changed_frozen", "unchanged_trainable", "trainable_off_plan", "non_finite", "loss_rise")
DIVERGENCE_RATIO = 100.0
Snapshot = dict  # variable ref -> (name, SHA-256 of its value's bytes)


def snapshot(model: tf.keras.Model) -> Snapshot:
    return {v.ref(): (v.name, hashlib.sha256(np.asarray(v.numpy()).tobytes()).hexdigest()) for v in model.variables}


class LossRise(tf.keras.callbacks.Callback):
    """Watches a phase's training loss: its first epoch's, and the highest after it. A loss past
    DIVERGENCE_RATIO × the first stops the phase, which then fails as diverged (`check_phase`)."""

    def __init__(self):
        super().__init__()
        self.first: float | None = None
        self.highest: float | None = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or not math.isfinite(loss):  # NaN or Inf: the weights' check names it
            return
        if self.first is None:
            self.first = float(loss)
        else:
            self.highest = max(self.highest or float(loss), float(loss))
        if self.diverged:
            self.model.stop_training = True

    @property
    def diverged(self) -> tuple[float, ...]:
        """(first loss, highest loss) when the loss rose past the ratio, else ()."""
        if self.first and self.highest is not None and self.first > 0 and self.highest > DIVERGENCE_RATIO * self.first:
            return (self.first, self.highest)
        return ()


def check_phase(model: tf.keras.Model, plan: PhasePlan, before: Snapshot, loss_rise: tuple[float, ...] = ()
                ) -> FreezeCheck:
    """Compares the model with its phase-start snapshot under the plan's own variable split. Keras'
    `trainable` flags must agree with that split too: otherwise `fit` trained something else than planned.
    `loss_rise` (`LossRise.diverged`) fails a phase whose loss diverged."""
    split = plan.variable_split(model)
    may_change = split.may_change()
    after = snapshot(model)
    changed_frozen, unchanged_trainable = [], []
    for ref, (name, value) in before.items():
        same = after[ref][1] == value
        if ref in may_change:
            if same:
                unchanged_trainable.append(name)
        elif not same:
            changed_frozen.append(name)
    flagged = {v.ref(): v.name for v in model.trainable_variables}
    planned = {v.ref() for v in split.trainable}
    off_plan = tuple(sorted(name for ref, name in flagged.items() if ref not in planned))
    # A diverged phase (an infinite rate, say) leaves NaN or Inf behind: it did not train, whatever moved.
    non_finite = tuple(v.name for v in (*split.trainable, *split.moving_statistics)
                       if not np.all(np.isfinite(v.numpy())))
    return FreezeCheck(
        phase=plan.phase.name,
        # A phase in which nothing moved did not train: as much a failure as a frozen variable moving.
        passed=not changed_frozen and not off_plan and not non_finite and not loss_rise
        and len(unchanged_trainable) < len(may_change),
        frozen_variables=len(split.frozen),
        trainable_variables=len(may_change),
        frozen_params=sum(v.shape.num_elements() for v in split.frozen),
        trainable_params=sum(v.shape.num_elements() for v in (*split.trainable, *split.moving_statistics)),
        changed_frozen=tuple(changed_frozen),
        unchanged_trainable=tuple(unchanged_trainable),
        trainable_off_plan=off_plan,
        non_finite=non_finite,
        loss_rise=tuple(loss_rise),
    )


def head_cause(model: tf.keras.Model) -> str:
    """Why nothing trained when the head is the likely reason: a classification head whose last layer does
    not output probabilities, trained with a loss that takes them. The loss clips such outputs into (0, 1),
    and a clipped output passes no gradient back, to the head or the base. Empty otherwise."""
    task = resolved_task(model)
    if task is None or not task.classifies or task.from_logits:
        return ""
    activation = head_activation(model)
    if activation in ("softmax", "sigmoid", None):
        return ""
    return (f"; likely cause: the head's last layer {head_layers(model)[-1].name!r} has activation {activation!r}, "
            f"so it does not output the probabilities the {task.name} loss takes: end the head in "
            f"{task.activation}, or without activation and set head_output: logits (or auto)")


def raise_on_violation(check: FreezeCheck, model: tf.keras.Model | None = None) -> None:
    """Raises FreezeViolation for a failed check; `model`, when given, lets the message name the head as the
    likely cause of a phase in which nothing trained."""
    if check.passed:
        return
    if check.non_finite:
        raise FreezeViolation(
            f"phase {check.phase!r}: training diverged: {len(check.non_finite)} variable(s) hold NaN or Inf, e.g. "
            f"{check.non_finite[0]} (lower the learning rate)"
        )
    if check.loss_rise:
        first, highest = check.loss_rise
        raise FreezeViolation(
            f"phase {check.phase!r}: training diverged: the loss rose from {first:.4g} (first epoch) to "
            f"{highest:.4g}, more than {DIVERGENCE_RATIO:g}× (lower the learning rate)"
        )
    if check.trainable_off_plan:
        raise FreezeViolation(
            f"phase {check.phase!r}: Keras trains variable(s) the plan freezes: {', '.join(check.trainable_off_plan[:5])}"
        )
    if not check.changed_frozen:
        cause = head_cause(model) if model is not None else ""
        raise FreezeViolation(
            f"phase {check.phase!r}: none of its {check.trainable_variables} trainable variables changed{cause}")
    shown = ", ".join(check.changed_frozen[:5])
    more = f" and {len(check.changed_frozen) - 5} more" if len(check.changed_frozen) > 5 else ""
    raise FreezeViolation(
        f"phase {check.phase!r}: {len(check.changed_frozen)} frozen variable(s) changed during training: {shown}{more}"
    )


def proven_after_restore(check: FreezeCheck, model: tf.keras.Model, plan: PhasePlan, before: Snapshot) -> FreezeCheck:
    """`check`, proven again after a restore of the phase's best weights: the restore writes only variables
    the phase may change, so a frozen variable it touched fails the phase as one training moved would."""
    restored = check_phase(model, plan, before)
    return replace(
        check, changed_frozen=restored.changed_frozen, trainable_off_plan=restored.trainable_off_plan,
        passed=check.passed and not restored.changed_frozen and not restored.trainable_off_plan,
    )

"""Phases shared between the trials of a search: a first phase trained once, later trials start after it.

Trials of a policy search often differ only after the first phase (the head phase: which block unfreezes
next, at which rate). A trial whose first phase resolves to the same settings as an earlier trial's (same
`phase_key`: the phase's plan, i.e. its policy entry, trainable layers, BatchNorm modes, rates and epochs,
plus the model, data and seed the caller adds) starts from that trial's state at the end of the phase:
the model's weights, and the Adam moments and step counts of the variables the phase trained.

The state is captured as the first phase's training ends (`RecordFirstPhase`) and loaded into the next
trial's model and optimizer (`load_state`), whose phase loop then starts at the second phase exactly as a
preempted run resumes from a checkpoint there (`run_phases`'s `resume_from`), with the first phase's
freeze check carried over; nothing is written to disk.
The state is keyed by variable position, not by checkpoint layout, so trials whose later phases train
other variables (another block, BatchNorm's affine weights) still share it. Policies whose phases restore
their best epoch are not shared (their best-weights record spans phases).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from freeze_trainer.keras.planning.freeze_plan import PhasePlan
from freeze_trainer.keras.training.freeze_proof import FreezeCheck
from freeze_trainer.keras.training.layer_rate_optimizer import LayerRateAdam
from freeze_trainer.keras.training.training_checkpoints import Progress


def can_share_first_phase(plans: list[PhasePlan]) -> bool:
    """A plan of two or more phases, none restoring its best epoch."""
    return len(plans) > 1 and not any(plan.phase.restores_best for plan in plans)


def phase_key(plans: list[PhasePlan], context: str, count: int = 1) -> str:
    """The key of the result of the first `count` phases: their resolved plans and `context`, the caller's
    text for everything else training reads (model parameters, data, seed, batch size, loop, steps)."""
    return hashlib.sha256(f"{plans[:count]!r}\n{context}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class PhaseState:
    """The state at the end of a first phase: every model variable's value (in `model.variables` order),
    the optimizer's step, each trained variable's Adam slots (m, v, step count) by position, and the
    phase's freeze check."""

    weights: tuple[np.ndarray, ...]
    iterations: int
    slots: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]
    check: FreezeCheck | None = None


def _slot_lists(optimizer: LayerRateAdam) -> tuple[list, list, list]:
    return optimizer._momentums, optimizer._velocities, optimizer._steps


def capture_state(model: tf.keras.Model, optimizer: LayerRateAdam, plan: PhasePlan) -> PhaseState:
    trained = {v.ref() for v in plan.variable_split(model).trainable}
    slots = {}
    for position, variable in enumerate(model.variables):
        if variable.ref() in trained:
            index = optimizer._index_dict[optimizer._var_key(variable)]
            slots[position] = tuple(slot[index].numpy() for slot in _slot_lists(optimizer))
    return PhaseState(tuple(v.numpy() for v in model.variables), int(optimizer.iterations.numpy()), slots)


def load_state(state: PhaseState, model: tf.keras.Model, optimizer: LayerRateAdam) -> Progress:
    """Loads `state` into `model` and `optimizer` (built over this trial's plans); returns the progress
    the phase loop resumes from: the second phase, the first one's check carried over."""
    for variable, value in zip(model.variables, state.weights, strict=True):
        variable.assign(value)
    optimizer.iterations.assign(state.iterations)
    for position, values in state.slots.items():
        index = optimizer._index_dict[optimizer._var_key(model.variables[position])]
        for slot, value in zip(_slot_lists(optimizer), values):
            slot[index].assign(value)
    return Progress(1, 0, {}, (state.check,))


class RecordFirstPhase(tf.keras.callbacks.Callback):
    """Captures the state as the first training call ends: the first phase's end, in a run that starts
    from the beginning (a fresh phase is one call of its loop). `state` is None until then."""

    def __init__(self, model: tf.keras.Model, optimizer: LayerRateAdam, plan: PhasePlan):
        super().__init__()
        self.full_model, self.optimizer, self.plan = model, optimizer, plan
        self.state: PhaseState | None = None

    def on_train_end(self, logs=None):
        if self.state is None:
            self.state = capture_state(self.full_model, self.optimizer, self.plan)

"""The phase loop both training loops share: set the freeze state, train, prove the freeze held.

Training data is either fixed batched datasets or an ExampleFeed, which batches each phase afresh and
may train the head alone on cached base features; the proof always covers the whole classifier."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from components.freeze_trainer.example_feed import ExampleFeed, PhaseData
from components.freeze_trainer.freeze_plan import PhasePlan, apply_plan, policy_layers
from components.freeze_trainer.freeze_proof import FreezeCheck, check_phase, raise_on_violation, snapshot
from components.freeze_trainer.layer_rate_optimizer import LayerRateAdam
from components.freeze_trainer.tf_keras_autograph import exempt_tf_keras_from_autograph
from components.freeze_trainer.training_checkpoints import EpochCheckpoint, TrainingCheckpoints

# Trains `data.model` on `data` for epochs [first, end) of one phase, `steps` per epoch (None: the whole
# data), with the extra callbacks; returns the last epoch's metrics.
TrainPhase = Callable[[PhasePlan, LayerRateAdam, PhaseData, int, int, "int | None", list], dict[str, float]]


def variable_multipliers(model: tf.keras.Model, plan: PhasePlan) -> list[tuple[tf.Variable, float]]:
    """Each trainable variable with its layer's learning-rate multiplier under `plan`."""
    backbone, head = policy_layers(model)
    multipliers = plan.lr_multipliers()
    return [
        (variable, multipliers[layer.name])
        for layer in backbone + head
        if layer.name in multipliers
        for variable in layer.trainable_weights
    ]


def build_phase_optimizer(model: tf.keras.Model, plans: list[PhasePlan]) -> LayerRateAdam:
    """One optimizer built over every variable that any phase trains (see layer_rate_optimizer).
    Under a distribution strategy, call it inside the strategy's scope."""
    ever_trained: dict = {}
    for plan in plans:
        apply_plan(model, plan)
        ever_trained.update({v.ref(): v for v in model.trainable_variables})
    optimizer = LayerRateAdam(plans[0].learning_rate)
    optimizer.build(list(ever_trained.values()))
    return optimizer


def run_phases(
    model: tf.keras.Model,
    plans: list[PhasePlan],
    train_phase: TrainPhase,
    train_data: tf.data.Dataset | ExampleFeed,
    eval_data: tf.data.Dataset | None = None,
    optimizer: LayerRateAdam | None = None,
    steps_per_epoch: int | None = None,
    checkpoint_dir: str | None = None,
) -> tuple[list[FreezeCheck], dict[str, float]]:
    """Runs every phase in order; returns each phase's freeze check and the last epoch's metrics.

    With `checkpoint_dir`, progress is saved after every epoch and a rerun resumes from it."""
    exempt_tf_keras_from_autograph()
    optimizer = optimizer or build_phase_optimizer(model, plans)
    checkpoints = TrainingCheckpoints(checkpoint_dir, model, optimizer) if checkpoint_dir else None
    resume_phase, resume_epoch, checks = checkpoints.restore() if checkpoints else (0, 0, [])
    epoch, metrics = 0, {}
    for index, plan in enumerate(plans):
        end, steps = phase_length(plan, epoch, steps_per_epoch)
        if index >= resume_phase:
            first = max(epoch, resume_epoch) if index == resume_phase else epoch
            apply_plan(model, plan)
            optimizer.learning_rate = plan.learning_rate
            optimizer.set_multipliers(variable_multipliers(model, plan))
            before = snapshot(model)
            extra = [EpochCheckpoint(checkpoints, index, end)] if checkpoints else []
            if isinstance(train_data, ExampleFeed):
                data = train_data.phase_data(model, plan)
            else:
                data = PhaseData(model, train_data, eval_data)
            metrics = train_phase(plan, optimizer, data, first, end, steps, extra)
            check = check_phase(model, plan, before)
            checks.append(check)
            raise_on_violation(check)
            if checkpoints:
                checkpoints.save(index + 1, end, checks)
        epoch = end
    return checks, metrics


def phase_length(plan: PhasePlan, start_epoch: int, steps_per_epoch: int | None) -> tuple[int, int | None]:
    """The epoch a phase ends at and its steps per epoch: a `steps` phase is one epoch of that many steps."""
    if plan.steps:
        return start_epoch + 1, plan.steps
    return start_epoch + plan.epochs, steps_per_epoch

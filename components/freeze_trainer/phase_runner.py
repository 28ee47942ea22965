"""The phase loop both training loops share: set the freeze state, train, prove the freeze held."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from components.freeze_trainer.freeze_plan import PhasePlan, apply_plan, policy_layers
from components.freeze_trainer.freeze_proof import FreezeCheck, check_phase, raise_on_violation, snapshot
from components.freeze_trainer.layer_rate_optimizer import LayerRateAdam
from components.freeze_trainer.tf_keras_autograph import exempt_tf_keras_from_autograph

# Trains one phase from `start_epoch`; returns the epoch it ended at and its last epoch's metrics.
TrainPhase = Callable[[PhasePlan, LayerRateAdam, int], tuple[int, dict[str, float]]]


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
    model: tf.keras.Model, plans: list[PhasePlan], train_phase: TrainPhase, optimizer: LayerRateAdam | None = None
) -> tuple[list[FreezeCheck], dict[str, float]]:
    """Runs every phase in order; returns each phase's freeze check and the last epoch's metrics."""
    exempt_tf_keras_from_autograph()
    optimizer = optimizer or build_phase_optimizer(model, plans)
    checks, epoch, metrics = [], 0, {}
    for plan in plans:
        apply_plan(model, plan)
        optimizer.learning_rate = plan.learning_rate
        optimizer.set_multipliers(variable_multipliers(model, plan))
        before = snapshot(model)
        epoch, metrics = train_phase(plan, optimizer, epoch)
        check = check_phase(model, plan, before)
        checks.append(check)
        raise_on_violation(check)
    return checks, metrics


def phase_length(plan: PhasePlan, start_epoch: int, steps_per_epoch: int | None) -> tuple[int, int | None]:
    """The epoch a phase ends at and its steps per epoch: a `steps` phase is one epoch of that many steps."""
    if plan.steps:
        return start_epoch + 1, plan.steps
    return start_epoch + plan.epochs, steps_per_epoch

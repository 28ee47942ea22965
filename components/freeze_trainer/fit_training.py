"""Trains a classifier phase by phase with Keras `fit`, proving after each phase that the freeze held."""

from __future__ import annotations

import tensorflow as tf

from components.freeze_trainer.freeze_plan import PhasePlan, apply_plan, policy_layers
from components.freeze_trainer.freeze_proof import FreezeCheck, check_phase, raise_on_violation, snapshot
from components.freeze_trainer.layer_rate_optimizer import LayerRateAdam
from components.freeze_trainer.tf_keras_autograph import exempt_tf_keras_from_autograph


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
    """One optimizer built over every variable that any phase trains (see layer_rate_optimizer)."""
    ever_trained: dict = {}
    for plan in plans:
        apply_plan(model, plan)
        ever_trained.update({v.ref(): v for v in model.trainable_variables})
    optimizer = LayerRateAdam(plans[0].learning_rate)
    optimizer.build(list(ever_trained.values()))
    return optimizer


def train_with_fit(
    model: tf.keras.Model,
    plans: list[PhasePlan],
    train_data: tf.data.Dataset,
    eval_data: tf.data.Dataset,
    callbacks: list[tf.keras.callbacks.Callback] = (),
    steps_per_epoch: int | None = None,
    verbose: int = 2,
) -> tuple[list[FreezeCheck], dict[str, float]]:
    """Runs every phase in order; returns each phase's freeze check and the last validation metrics."""
    exempt_tf_keras_from_autograph()
    optimizer = build_phase_optimizer(model, plans)
    checks, epoch, metrics = [], 0, {}
    for plan in plans:
        apply_plan(model, plan)
        optimizer.learning_rate = plan.learning_rate
        optimizer.set_multipliers(variable_multipliers(model, plan))
        # Changing `trainable` takes effect in `fit` only after a compile; the optimizer and its
        # moments carry over.
        model.compile(
            optimizer=optimizer,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(),
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        before = snapshot(model)
        length = {"epochs": epoch + plan.epochs, "steps_per_epoch": steps_per_epoch}
        data = train_data
        if plan.steps:
            length = {"epochs": epoch + 1, "steps_per_epoch": plan.steps}
            data = train_data.repeat()
        history = model.fit(
            data, validation_data=eval_data, initial_epoch=epoch, callbacks=list(callbacks), verbose=verbose, **length
        )
        epoch = length["epochs"]
        metrics = {name: float(values[-1]) for name, values in history.history.items()}
        check = check_phase(model, plan, before)
        checks.append(check)
        raise_on_violation(check)
    return checks, metrics

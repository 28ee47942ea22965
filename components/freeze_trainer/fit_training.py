"""Trains a classifier phase by phase with Keras `fit`, proving after each phase that the freeze held."""

from __future__ import annotations

import tensorflow as tf

from components.freeze_trainer.freeze_plan import PhasePlan, apply_plan
from components.freeze_trainer.freeze_proof import FreezeCheck, check_phase, raise_on_violation, snapshot
from components.freeze_trainer.tf_keras_autograph import exempt_tf_keras_from_autograph


def compile_for_phase(model: tf.keras.Model, learning_rate: float) -> None:
    # A fresh optimizer per phase: Keras must recompile after `trainable` changes anyway, and the
    # optimizer then only ever sees the variables this phase trains.
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def train_with_fit(
    model: tf.keras.Model,
    plans: list[PhasePlan],
    train_data: tf.data.Dataset,
    eval_data: tf.data.Dataset,
    default_epochs: int,
    default_learning_rate: float,
    callbacks: list[tf.keras.callbacks.Callback] = (),
    steps_per_epoch: int | None = None,
    verbose: int = 2,
) -> tuple[list[FreezeCheck], dict[str, float]]:
    """Runs every phase in order; returns each phase's freeze check and the last validation metrics."""
    exempt_tf_keras_from_autograph()
    checks, epoch, metrics = [], 0, {}
    for plan in plans:
        apply_plan(model, plan)
        compile_for_phase(model, plan.phase.learning_rate or default_learning_rate)
        before = snapshot(model)
        end = epoch + (plan.phase.epochs or default_epochs)
        history = model.fit(
            train_data,
            validation_data=eval_data,
            initial_epoch=epoch,
            epochs=end,
            steps_per_epoch=steps_per_epoch,
            callbacks=list(callbacks),
            verbose=verbose,
        )
        epoch = end
        metrics = {name: float(values[-1]) for name, values in history.history.items()}
        check = check_phase(model, plan, before)
        checks.append(check)
        raise_on_violation(check)
    return checks, metrics

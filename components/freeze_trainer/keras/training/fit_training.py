"""Trains a classifier phase by phase with Keras `fit`."""

from __future__ import annotations

import tensorflow as tf

from freeze_trainer.keras.data.example_feed import ExampleFeed
from freeze_trainer.keras.planning.freeze_plan import PhasePlan
from freeze_trainer.keras.training.freeze_proof import FreezeCheck
from freeze_trainer.keras.training.layer_rate_optimizer import LayerRateAdam
from freeze_trainer.keras.training.phase_runner import PhaseCall, run_phases
from freeze_trainer.keras.training.training_checkpoints import Progress
from freeze_trainer.keras.planning.phase_schedule import PhaseSchedule
from freeze_trainer.keras.models.tasks import MULTICLASS, Task


def train_with_fit(
    model: tf.keras.Model,
    plans: list[PhasePlan] | PhaseSchedule,
    train_data: tf.data.Dataset | ExampleFeed,
    eval_data: tf.data.Dataset | None = None,
    callbacks: list[tf.keras.callbacks.Callback] = (),
    steps_per_epoch: int | None = None,
    verbose: int = 1,
    optimizer: LayerRateAdam | None = None,
    jit_compile: bool = False,
    checkpoint_dir: str | None = None,
    checkpoint_every_steps: int | None = None,
    task: Task = MULTICLASS,
    remainder_steps: int = 0,
    resume_from: Progress | None = None,
) -> tuple[list[FreezeCheck], dict[str, float]]:
    """Runs every phase with `fit`; returns each phase's freeze check and the last validation metrics.
    `verbose`: 0 is silent; otherwise each phase prints a line and one progress bar (phase_progress.py)."""

    def train_phase(call: PhaseCall) -> dict[str, float]:
        # Changing `trainable` takes effect in `fit` only after a compile; the optimizer and its
        # moments carry over.
        call.model.compile(
            optimizer=call.optimizer,
            loss=task.loss(),
            metrics=task.metrics(),
            jit_compile=jit_compile,
        )
        history = call.model.fit(
            call.batches,
            validation_data=call.evaluation,
            initial_epoch=call.first_epoch,
            epochs=call.end_epoch,
            steps_per_epoch=call.steps,
            callbacks=[*callbacks, *call.callbacks],
            verbose=0,  # the phase's progress bar is one of `extra`
        )
        return {name: float(values[-1]) for name, values in history.history.items()}

    return run_phases(model, plans, train_phase, train_data, eval_data, optimizer, steps_per_epoch, checkpoint_dir,
                      checkpoint_every_steps, verbose, remainder_steps, resume_from)

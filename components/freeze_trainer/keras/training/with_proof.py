"""`train_with_proof`: every phase of a plan, with either loop, each phase proven before the next starts."""

from __future__ import annotations

from typing import Literal

import tensorflow as tf

from freeze_trainer.keras.data.example_feed import ExampleFeed
from freeze_trainer.keras.training.fit_training import train_with_fit
from freeze_trainer.keras.planning.freeze_plan import PhasePlan
from freeze_trainer.keras.planning.phase_schedule import PhaseSchedule
from freeze_trainer.keras.training.freeze_proof import FreezeCheck
from freeze_trainer.keras.training.gradient_tape_loop import train_with_gradient_tape


def train_with_proof(
    model: tf.keras.Model,
    plans: list[PhasePlan] | PhaseSchedule,
    train_data: tf.data.Dataset | ExampleFeed,
    eval_data: tf.data.Dataset | None = None,
    loop: Literal["fit", "gradient_tape"] = "fit",
    strategy: tf.distribute.Strategy | None = None,
    **options,
) -> tuple[list[FreezeCheck], dict[str, float]]:
    """Trains phase after phase and proves each: raises `FreezeViolation` if a frozen variable moved
    or nothing trained. Returns each phase's `FreezeCheck` and the last epoch's metrics. `options` are
    the loops' own (callbacks, steps_per_epoch, verbose, optimizer, jit_compile, checkpoint_dir, ...)."""
    if loop == "fit":
        return train_with_fit(model, plans, train_data, eval_data, **options)
    if loop == "gradient_tape":
        return train_with_gradient_tape(model, plans, train_data, eval_data, strategy=strategy, **options)
    raise ValueError(f"loop: {loop!r} is not one of fit, gradient_tape")

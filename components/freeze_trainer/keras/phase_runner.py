"""The phase loop both training loops share: set the freeze state, train, prove the freeze held.

At each phase start the optimizer is set for the transition (see `start_optimizer_phase`): the phase's
rates, which variables start with a fresh Adam (`optimizer_state`), and which warm up. A `restore_best`
phase ends with the weights of its best evaluated epoch, or of its start (best_weights.py); its proof
covers the training and the restore.

Training data is either fixed batched datasets or an ExampleFeed, which batches each phase afresh and
may train the head alone on cached base features; the proof always covers the whole classifier. With
checkpoints, a rerun resumes at the phase and batch of the latest one, with the batches, weights and
optimizer state an uninterrupted run would have had there.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import tensorflow as tf
from absl import logging

from freeze_trainer.keras.best_weights import BestWeights, RecordBest
from freeze_trainer.keras.example_feed import BatchedFeed, ExampleFeed
from freeze_trainer.keras.freeze_plan import PhasePlan, VariableSplit, apply_plan, epoch_spans, policy_layers
from freeze_trainer.keras.freeze_proof import FreezeCheck, LossRise, check_phase, raise_on_violation, snapshot
from freeze_trainer.keras.layer_rate_optimizer import LayerRateAdam
from freeze_trainer.keras.phase_progress import PhaseProgress, phase_header
from freeze_trainer.keras.tf_keras_autograph import exempt_tf_keras_from_autograph
from freeze_trainer.keras.training_checkpoints import PhaseCheckpoint, Progress, TrainingCheckpoints

# Trains `model` for epochs [first, end) of `steps` batches each, taken in order from the endless
# training batches, evaluating after each epoch, with the extra callbacks; returns the last epoch's metrics.
# The variables are the phase's trainable ones (`VariableSplit.trainable`), for loops that apply gradients
# themselves; `fit` reads the same set from the flags `apply_plan` set, which the proof checks.
TrainPhase = Callable[
    [LayerRateAdam, tf.keras.Model, "tuple[tf.Variable, ...]", tf.data.Dataset, "tf.data.Dataset | None", int, int,
     int, list],
    dict[str, float],
]


def variable_multipliers(model: tf.keras.Model, plan: PhasePlan) -> list[tuple[tf.Variable, float]]:
    """Each trainable variable with its layer's learning-rate multiplier under `plan`."""
    backbone, head = policy_layers(model)
    multipliers = plan.lr_multipliers()
    trainable = {v.ref() for v in plan.variable_split(model).trainable}
    return [
        (variable, multipliers[layer.name])
        for layer in backbone + head
        if layer.name in multipliers
        for variable in layer.weights
        if variable.ref() in trainable
    ]


def build_phase_optimizer(model: tf.keras.Model, plans: list[PhasePlan]) -> LayerRateAdam:
    """One optimizer built over every variable that any phase trains (see layer_rate_optimizer).
    Under a distribution strategy, call it inside the strategy's scope."""
    ever_trained: dict = {}
    for plan in plans:
        ever_trained.update((v.ref(), v) for v in plan.variable_split(model).trainable)
    optimizer = LayerRateAdam(plans[0].learning_rate)
    optimizer.build(list(ever_trained.values()))
    return optimizer


def newly_trainable_variables(model: tf.keras.Model, plans: list[PhasePlan], index: int) -> list[tf.Variable]:
    """The variables phase `index` trains that the phase before did not (all of the first phase's)."""
    previous = {v.ref() for v in plans[index - 1].variable_split(model).trainable} if index else set()
    return [v for v in plans[index].variable_split(model).trainable if v.ref() not in previous]


def start_optimizer_phase(
    optimizer: LayerRateAdam, model: tf.keras.Model, plans: list[PhasePlan], index: int, epoch_steps: int,
    fresh: bool,
) -> None:
    """Sets the optimizer for phase `index`: its rate, per-layer multipliers and the warm-up of its newly
    trainable variables; with `fresh` (the phase starts here, not resumed from a checkpoint inside it), also
    resets the Adam state `optimizer_state` names and starts counting the phase's steps."""
    plan = plans[index]
    new = newly_trainable_variables(model, plans, index)
    optimizer.learning_rate = plan.learning_rate
    optimizer.set_multipliers(variable_multipliers(model, plan))
    optimizer.set_warmup(new, plan.phase.warmup, epoch_steps)
    if fresh:
        mode = plan.phase.optimizer_state_mode
        if mode == "reset":
            optimizer.reset_state()
        elif mode == "reset_new":
            optimizer.reset_state(new)
        optimizer.start_phase()


def _best_weights(model: tf.keras.Model, plans: list[PhasePlan]) -> BestWeights | None:
    """Room for the best weights of every `restore_best` phase; None when no phase restores its best."""
    changing: dict = {}
    for plan in plans:
        if plan.phase.restores_best:
            changing.update((v.ref(), v) for v in _changing(plan.variable_split(model)))
    return BestWeights(list(changing.values())) if changing else None


def _changing(split: VariableSplit) -> tuple[tf.Variable, ...]:
    return (*split.trainable, *split.moving_statistics)


def run_phases(
    model: tf.keras.Model,
    plans: list[PhasePlan],
    train_phase: TrainPhase,
    train_data: tf.data.Dataset | ExampleFeed,
    eval_data: tf.data.Dataset | None = None,
    optimizer: LayerRateAdam | None = None,
    steps_per_epoch: int | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every_steps: int | None = None,
    verbose: int = 1,
    remainder_steps: int = 0,
) -> tuple[list[FreezeCheck], dict[str, float]]:
    """Runs every phase in order; returns each phase's freeze check and the last epoch's metrics.

    An epoch is `steps_per_epoch` batches (None: one pass over the training data; a `steps` phase is one
    epoch of that many); the last epoch of the last phase counted in such epochs takes `remainder_steps`
    more, so that a total number of steps (TFX's `num_steps`) is met exactly. With `checkpoint_dir`,
    progress is saved every `checkpoint_every_steps` batches of a phase (None: at every epoch's end) and at
    every phase's end, and a rerun resumes from it. Unless `verbose` is 0, each phase prints a line and one
    progress bar over all its batches."""
    exempt_tf_keras_from_autograph()
    optimizer = optimizer or build_phase_optimizer(model, plans)
    feed = train_data if isinstance(train_data, ExampleFeed) else BatchedFeed(train_data, eval_data)
    best = _best_weights(model, plans)
    if best and isinstance(feed, BatchedFeed) and feed.eval is None:
        raise ValueError("restore_best: a phase restores its best epoch, which needs evaluation data")
    extra_state = {"best_weights": best.trackable} if best else {}
    checkpoints = TrainingCheckpoints(checkpoint_dir, model, optimizer, **extra_state) if checkpoint_dir else None
    resumed = checkpoints.restore() if checkpoints else Progress()
    if resumed.phase or resumed.position:
        logging.info("Resuming from %s at phase %d, batch %d", checkpoint_dir, resumed.phase, resumed.position)
    checks = list(resumed.completed)
    metrics = {}
    last_counted = max((index for index, plan in enumerate(plans) if not plan.steps), default=None)
    for index, (plan, (epoch, end)) in enumerate(zip(plans, epoch_spans(plans))):
        if index >= resumed.phase:
            position = resumed.position if index == resumed.phase else 0
            steps = plan.steps or steps_per_epoch or feed.epoch_batches
            remainder = remainder_steps if index == last_counted and steps_per_epoch else 0
            phase_batches = (end - epoch) * steps + remainder
            apply_plan(model, plan)
            split = plan.variable_split(model)
            trainable = split.trainable
            start_optimizer_phase(optimizer, model, plans, index, steps, fresh=not position)
            if best and plan.phase.restores_best and not position:
                best.start_phase(_changing(split))
            # Restored weights already hold the batches trained before the checkpoint: a phase resumed
            # mid-way is proven against its start as saved, so a frozen variable that moved then still fails.
            before = resumed.phase_start if position else snapshot(model)
            loss_rise = LossRise()
            extra = [loss_rise]
            record = RecordBest(best, _changing(split), epoch) if plan.phase.restores_best else None
            if record:
                extra.append(record)  # before the checkpoint, whose epoch-end save then holds the epoch's record
            if checkpoints:
                progress = Progress(index, position, before, tuple(checks))
                extra.append(PhaseCheckpoint(checkpoints, progress, phase_batches, checkpoint_every_steps or steps,
                                             epoch_batches=steps))
            data = feed.phase_data(model, plan)
            if verbose:  # last: it reads an early stop the other callbacks may set at an epoch's end
                header = phase_header(index + 1, len(plans), plan, steps, data.cached_features, position)
                extra.append(PhaseProgress(header, phase_batches, position))
            for first, last, per_epoch, start in remaining_epochs(epoch, end, steps, position, remainder):
                metrics = train_phase(
                    optimizer, data.model, trainable, data.batches(start), data.eval, first, last, per_epoch, extra
                )
                if data.model.stop_training:  # an early stop ends the phase, as within one call
                    break
            check = check_phase(model, plan, before, loss_rise.diverged)  # what training moved, before any restore
            if record and best.record.epoch is not None:
                if best.record.epoch != record.last_epoch:
                    best.restore(_changing(split))
                    # The restore writes only variables the phase may change: proven again, frozen ones untouched.
                    restored = check_phase(model, plan, before)
                    check = replace(
                        check, changed_frozen=restored.changed_frozen, trainable_off_plan=restored.trainable_off_plan,
                        passed=check.passed and not restored.changed_frozen and not restored.trainable_off_plan,
                    )
                metrics = dict(best.record.logs)
                check = replace(check, best_epoch=best.record.epoch)
            if best:
                best.end_phase(metrics)
            checks.append(check)
            raise_on_violation(check, model)
            if checkpoints:
                checkpoints.save(Progress(index + 1, 0, {}, tuple(checks)))
    return checks, metrics


def remaining_epochs(first: int, end: int, steps: int, position: int, remainder: int = 0
                     ) -> list[tuple[int, int, int, int]]:
    """The training calls for epochs [first, end) of `steps` batches (the last one `remainder` more) from
    batch `position` of the phase on, as (first epoch, end epoch, steps per epoch, position): the rest of an
    interrupted epoch, and a longer last epoch, are calls of their own, since `fit` takes one number of
    steps for all its epochs."""
    epochs_done = min(position // steps, end - first - 1)  # a position inside the longer last epoch stays in it
    steps_done = position - epochs_done * steps
    first += epochs_done

    def length(epoch: int) -> int:
        return steps + (remainder if epoch == end - 1 else 0)

    calls = []
    if steps_done:
        calls.append((first, first + 1, length(first) - steps_done, position))
        first, position = first + 1, position + length(first) - steps_done
    if remainder and first < end - 1:
        calls.append((first, end - 1, steps, position))
        first, position = end - 1, position + (end - 1 - first) * steps
    if first < end:
        calls.append((first, end, length(first), position))
    return calls

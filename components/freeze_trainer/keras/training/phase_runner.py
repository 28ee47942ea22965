"""The phase loop both training loops share: set the freeze state, train, prove the freeze held.

At each phase start the optimizer is set for the transition (see `start_optimizer_phase`): the phase's
rates, which variables start with a fresh Adam (`optimizer_state`), and which warm up. A `restore_best`
phase ends with the weights of its best evaluated epoch, or of its start (best_weights.py); its proof
covers the training and the restore.

Training data is either fixed batched datasets or an ExampleFeed, which batches each phase afresh and
may train only the part of the model above a cached cut (the schedule's `cache`: the head on pooled
features, or the live part on a frozen prefix's outputs) with the model's own layers and variables; the
proof, checkpoints and best weights always cover the whole classifier. With
checkpoints, a rerun resumes at the phase and batch of the latest one, with the batches, weights and
optimizer state an uninterrupted run would have had there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import tensorflow as tf
from absl import logging

from freeze_trainer.keras.training.best_weights import BestWeights, RecordBest
from freeze_trainer.keras.data.example_feed import BatchedFeed, ExampleFeed
from freeze_trainer.keras.planning.freeze_plan import PhasePlan, VariableSplit, apply_plan, policy_layers
from freeze_trainer.keras.training.freeze_proof import (
    FreezeCheck, LossRise, check_phase, proven_after_restore, raise_on_violation, snapshot,
)
from freeze_trainer.keras.training.layer_rate_optimizer import LayerRateAdam
from freeze_trainer.keras.training.phase_progress import PhaseProgress, phase_header
from freeze_trainer.keras.planning.phase_schedule import PhaseSchedule, ScheduledPhase, build_schedule
from freeze_trainer.keras.tf_keras_autograph import exempt_tf_keras_from_autograph
from freeze_trainer.keras.training.training_checkpoints import PhaseCheckpoint, Progress, TrainingCheckpoints

@dataclass(frozen=True)
class PhaseCall:
    """One training call of a phase: train `model` for epochs [first_epoch, end_epoch) of `steps` batches
    each, taken in order from the endless training `batches`, evaluating on `evaluation` after each epoch,
    with the extra `callbacks`. `trainable` are the phase's trainable variables
    (`VariableSplit.trainable`), for loops that apply gradients themselves; `fit` reads the same set from
    the flags `apply_plan` set, which the proof checks."""

    optimizer: LayerRateAdam
    model: tf.keras.Model
    trainable: tuple[tf.Variable, ...]
    batches: tf.data.Dataset
    evaluation: tf.data.Dataset | None
    first_epoch: int
    end_epoch: int
    steps: int
    callbacks: list


# A training loop: runs one call, returns the last epoch's metrics.
TrainPhase = Callable[[PhaseCall], dict[str, float]]

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


def newly_trainable_variables(model: tf.keras.Model, phase: ScheduledPhase) -> list[tf.Variable]:
    """The variables `phase` trains that the phase before did not (all of the first phase's)."""
    backbone, head = policy_layers(model)
    trainable = {v.ref() for v in phase.plan.variable_split(model).trainable}
    new = {v.ref(): v for layer in backbone + head if layer.name in phase.newly_trainable for v in layer.weights
           if v.ref() in trainable}
    return list(new.values())


def start_optimizer_phase(
    optimizer: LayerRateAdam, model: tf.keras.Model, phase: ScheduledPhase, epoch_steps: int, fresh: bool,
) -> None:
    """Sets the optimizer for `phase`: its rate, per-layer multipliers and the warm-up of its newly
    trainable variables; with `fresh` (the phase starts here, not resumed from a checkpoint inside it), also
    resets the Adam state `optimizer_state` names and starts counting the phase's steps."""
    plan = phase.plan
    new = newly_trainable_variables(model, phase)
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
    plans: list[PhasePlan] | PhaseSchedule,
    train_phase: TrainPhase,
    train_data: tf.data.Dataset | ExampleFeed,
    eval_data: tf.data.Dataset | None = None,
    optimizer: LayerRateAdam | None = None,
    steps_per_epoch: int | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every_steps: int | None = None,
    verbose: int = 1,
    remainder_steps: int = 0,
    resume_from: Progress | None = None,
) -> tuple[list[FreezeCheck], dict[str, float]]:
    """Runs every phase in order; returns each phase's freeze check and the last epoch's metrics.

    `plans` is a schedule, or plans scheduled here with `steps_per_epoch` and `remainder_steps`
    (`build_schedule`): an epoch is `steps_per_epoch` batches (None: one pass over the training data; a
    `steps` phase is one epoch of that many); the last epoch of the last phase counted in such epochs takes
    `remainder_steps` more. With `checkpoint_dir`, progress is saved every `checkpoint_every_steps` batches
    of a phase (None: at every epoch's end) and at every phase's end, and a rerun resumes from it; without a
    checkpoint, training starts at `resume_from` (a shared first phase's end, its state already loaded). Unless
    `verbose` is 0, each phase prints a line and one progress bar over all its batches."""
    exempt_tf_keras_from_autograph()
    feed = train_data if isinstance(train_data, ExampleFeed) else BatchedFeed(train_data, eval_data)
    schedule = plans if isinstance(plans, PhaseSchedule) else build_schedule(
        plans, feature_cache=isinstance(feed, ExampleFeed) and feed.feature_cache is not None,
        steps_per_epoch=steps_per_epoch, remainder_steps=remainder_steps, model=model)
    run = _PhaseRun(model, schedule, train_phase, feed, optimizer or build_phase_optimizer(model, schedule.plans),
                    checkpoint_every_steps, verbose)
    run.start(checkpoint_dir, resume_from or Progress())
    for phase in schedule:
        if phase.index >= run.resumed.phase:
            run.phase(phase)
    return run.checks, run.metrics


class _PhaseRun:
    """The state `run_phases` carries from phase to phase: checkpoints, best weights, checks, metrics."""

    def __init__(self, model, schedule: PhaseSchedule, train_phase: TrainPhase, feed, optimizer: LayerRateAdam,
                 checkpoint_every_steps: int | None, verbose: int):
        self.model, self.schedule, self.train_phase, self.feed = model, schedule, train_phase, feed
        self.optimizer, self.checkpoint_every_steps, self.verbose = optimizer, checkpoint_every_steps, verbose
        self.best = _best_weights(model, schedule.plans)
        if self.best and isinstance(feed, BatchedFeed) and feed.eval is None:
            raise ValueError("restore_best: a phase restores its best epoch, which needs evaluation data")
        self.checkpoints, self.resumed, self.checks, self.metrics = None, Progress(), [], {}

    def start(self, checkpoint_dir: str | None, resume_from: Progress) -> None:
        self.resumed = resume_from
        if checkpoint_dir:
            extra_state = {"best_weights": self.best.trackable} if self.best else {}
            self.checkpoints = TrainingCheckpoints(checkpoint_dir, self.model, self.optimizer, **extra_state)
            self.resumed = self.checkpoints.restore() or resume_from
        if self.resumed.phase or self.resumed.position:
            logging.info("Resuming from %s at phase %d, batch %d", checkpoint_dir or "a shared phase",
                         self.resumed.phase, self.resumed.position)
        self.checks = list(self.resumed.completed)

    def phase(self, phase: ScheduledPhase) -> None:
        """Trains `phase` (from where a checkpoint left it), proves it, restores its best epoch."""
        model, plan = self.model, phase.plan
        position = self.resumed.position if phase.index == self.resumed.phase else 0
        steps = phase.steps_per_epoch or self.feed.epoch_batches
        apply_plan(model, plan)
        split = plan.variable_split(model)
        changing = _changing(split)
        start_optimizer_phase(self.optimizer, model, phase, steps, fresh=not position)
        if self.best and plan.phase.restores_best and not position:
            self.best.start_phase(changing, phase.first_epoch)
        # Restored weights already hold the batches trained before the checkpoint: a phase resumed
        # mid-way is proven against its start as saved, so a frozen variable that moved then still fails.
        before = self.resumed.phase_start if position else snapshot(model)
        record = RecordBest(self.best, changing) if plan.phase.restores_best else None
        data = self.feed.phase_data(model, phase)
        loss_rise = LossRise()  # a loss far above its start fails the phase as diverged, as NaN does
        callbacks = [loss_rise, *self._callbacks(phase, record, position, before, steps, data.cached_features)]
        for first, last, per_epoch, start in remaining_epochs(phase.first_epoch, phase.end_epoch, steps, position,
                                                              phase.remainder_steps):
            self.metrics = self.train_phase(PhaseCall(
                self.optimizer, data.model, split.trainable, data.batches(start), data.eval,
                first, last, per_epoch, callbacks))
            if data.model.stop_training:  # an early stop ends the phase, as within one call
                break
        check = check_phase(model, plan, before, loss_rise.diverged)  # what training moved, before any restore
        if record and self.best.record.epoch is not None:
            if self.best.record.epoch != record.last_epoch:
                self.best.restore(changing)
                check = proven_after_restore(check, model, plan, before)
            self.metrics = dict(self.best.record.logs)
            check = replace(check, best_epoch=self.best.record.epoch)
        if self.best:
            self.best.end_phase(self.metrics)
        self.checks.append(check)
        raise_on_violation(check, model)
        if self.checkpoints:
            self.checkpoints.save(Progress(phase.index + 1, 0, {}, tuple(self.checks)))

    def _callbacks(self, phase: ScheduledPhase, record, position: int, before, steps: int, cached: bool) -> list:
        """The phase's own callbacks, in order: its best-epoch record, its checkpoint, its progress bar."""
        phase_batches = phase.epoch_count * steps + phase.remainder_steps
        extra = [record] if record else []  # before the checkpoint, whose epoch-end save then holds the record
        if self.checkpoints:
            progress = Progress(phase.index, position, before, tuple(self.checks))
            extra.append(PhaseCheckpoint(self.checkpoints, progress, phase_batches,
                                         self.checkpoint_every_steps or steps, epoch_batches=steps))
        if self.verbose:  # last: it reads an early stop the other callbacks may set at an epoch's end
            header = phase_header(phase, len(self.schedule), steps, cached, position)
            extra.append(PhaseProgress(header, phase_batches, position))
        return extra

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

"""Trains a classifier phase by phase with a compiled `tf.GradientTape` step.

It honours the same plans as `fit`: the tape watches and the optimizer updates exactly the variables
the plan leaves trainable (held by reference, never found with `var in list`), and frozen BatchNorm
stays in inference mode because the model was built that way. Keras callbacks (progress bar,
TensorBoard, EarlyStopping, ModelCheckpoint, BackupAndRestore aside) run as they do under `fit`.
Under a distribution strategy the per-example loss is averaged over the global batch.
"""

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


class _Steps:
    """The compiled train and eval steps of one phase."""

    def __init__(self, model, variables, optimizer, strategy: tf.distribute.Strategy, jit_compile: bool, task: Task):
        self.model = model
        self.strategy = strategy
        self.variables = list(variables)  # the plan's trainable variables, fixed at trace time
        self.loss_fn = task.loss(reduction=tf.keras.losses.Reduction.NONE)
        self.scaled = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        self.optimizer = optimizer
        with strategy.scope():
            self.loss = tf.keras.metrics.Mean(name="loss")
            self.metrics = task.metrics()
        # XLA compiles the forward and backward pass; the update and its all-reduce stay outside.
        self._gradients = tf.function(self._compute_gradients, jit_compile=True) if jit_compile else self._compute_gradients
        self.train = tf.function(self._distributed(self._train_step))
        self.evaluate = tf.function(self._distributed(self._eval_step))

    def _distributed(self, step):
        def run(batch):
            self.strategy.run(step, args=batch)

        return run

    def _compute_gradients(self, features, labels):
        with tf.GradientTape() as tape:
            probabilities = self.model(features, training=True)
            per_example = self.loss_fn(labels, probabilities)
            loss = tf.nn.compute_average_loss(per_example)
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
            scaled_loss = self.optimizer.get_scaled_loss(loss) if self.scaled else loss
        return tape.gradient(scaled_loss, self.variables), per_example, probabilities

    def _train_step(self, features, labels):
        gradients, per_example, probabilities = self._gradients(features, labels)
        if self.scaled:
            gradients = self.optimizer.get_unscaled_gradients(gradients)
        self.optimizer.apply_gradients(zip(gradients, self.variables))
        self.loss.update_state(tf.reduce_mean(per_example))
        for metric in self.metrics:
            metric.update_state(labels, probabilities)

    def _eval_step(self, features, labels):
        probabilities = self.model(features, training=False)
        self.loss.update_state(tf.reduce_mean(self.loss_fn(labels, probabilities)))
        for metric in self.metrics:
            metric.update_state(labels, probabilities)

    def reset(self):
        for metric in (self.loss, *self.metrics):
            metric.reset_state()

    def results(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{metric.name}": float(metric.result()) for metric in (self.loss, *self.metrics)}


def train_with_gradient_tape(
    model: tf.keras.Model,
    plans: list[PhasePlan] | PhaseSchedule,
    train_data: tf.data.Dataset | ExampleFeed,
    eval_data: tf.data.Dataset | None = None,
    callbacks: list[tf.keras.callbacks.Callback] = (),
    steps_per_epoch: int | None = None,
    verbose: int = 1,
    optimizer: LayerRateAdam | None = None,
    strategy: tf.distribute.Strategy | None = None,
    jit_compile: bool = False,
    checkpoint_dir: str | None = None,
    checkpoint_every_steps: int | None = None,
    task: Task = MULTICLASS,
    remainder_steps: int = 0,
    resume_from: Progress | None = None,
) -> tuple[list[FreezeCheck], dict[str, float]]:
    """Runs every phase with the tape loop; returns each phase's freeze check and the last metrics.
    `verbose`: 0 is silent; otherwise each phase prints a line and one progress bar (phase_progress.py)."""
    strategy = strategy or tf.distribute.get_strategy()

    def train_phase(call: PhaseCall) -> dict[str, float]:
        phase_model, evaluation, per_epoch = call.model, call.evaluation, call.steps
        step_optimizer = call.optimizer
        if tf.keras.mixed_precision.global_policy().compute_dtype == "float16":
            with strategy.scope():
                step_optimizer = tf.keras.mixed_precision.LossScaleOptimizer(call.optimizer)
        steps = _Steps(phase_model, call.trainable, step_optimizer, strategy, jit_compile, task)
        batch_iterator = iter(strategy.experimental_distribute_dataset(call.batches))
        distributed_eval = strategy.experimental_distribute_dataset(evaluation) if evaluation is not None else None
        # No ProgbarLogger: it would average the loop's running means again. The phase's bar is in `extra`.
        callback_list = tf.keras.callbacks.CallbackList(
            [*callbacks, *call.callbacks], add_history=True, add_progbar=False, model=phase_model,
            epochs=call.end_epoch, steps=per_epoch,
        )
        phase_model.stop_training = False
        callback_list.on_train_begin()
        logs: dict[str, float] = {}
        for epoch in range(call.first_epoch, call.end_epoch):
            callback_list.on_epoch_begin(epoch)
            steps.reset()
            for step in range(per_epoch):
                callback_list.on_train_batch_begin(step)
                steps.train(next(batch_iterator))
                callback_list.on_train_batch_end(step, steps.results())
            logs = steps.results()
            if distributed_eval is not None:
                steps.reset()
                for batch in distributed_eval:
                    steps.evaluate(batch)
                logs.update(steps.results("val_"))
            callback_list.on_epoch_end(epoch, logs)
            if phase_model.stop_training:
                break
        callback_list.on_train_end(logs)
        return logs

    return run_phases(model, plans, train_phase, train_data, eval_data, optimizer, steps_per_epoch, checkpoint_dir,
                      checkpoint_every_steps, verbose, remainder_steps, resume_from)

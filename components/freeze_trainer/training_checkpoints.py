"""Epoch-end training checkpoints, so a preempted trainer resumes where it stopped.

`tf.train.CheckpointManager` keeps the model, the optimizer (moments and step count) and the position
in the plan: the phase index and the next epoch. Phases already completed are not rerun; their freeze
checks are kept beside the checkpoints. Each save is atomic, so a kill at any moment leaves the last
complete checkpoint.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from components.freeze_trainer.freeze_proof import FreezeCheck


class TrainingCheckpoints:
    def __init__(self, directory: str, model: tf.keras.Model, optimizer: tf.keras.optimizers.Optimizer):
        self.directory = directory
        self.phase = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, phase=self.phase, epoch=self.epoch)
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=2)
        self._checks_path = os.path.join(directory, "completed_phases.json")

    def restore(self) -> tuple[int, int, list[FreezeCheck]]:
        """The phase index and epoch to resume at, and the checks of the phases already completed."""
        if self.manager.latest_checkpoint is None:
            return 0, 0, []
        self.manager.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        checks = []
        if tf.io.gfile.exists(self._checks_path):
            with tf.io.gfile.GFile(self._checks_path) as f:
                checks = [FreezeCheck.from_dict(values) for values in json.load(f)]
        return int(self.phase.numpy()), int(self.epoch.numpy()), checks[: int(self.phase.numpy())]

    def save(self, phase_index: int, next_epoch: int, completed: list[FreezeCheck] | None = None) -> None:
        if completed is not None:
            with tf.io.gfile.GFile(self._checks_path + ".tmp", "w") as f:
                json.dump([check.as_dict() for check in completed], f)
            tf.io.gfile.rename(self._checks_path + ".tmp", self._checks_path, overwrite=True)
        self.phase.assign(phase_index)
        self.epoch.assign(next_epoch)
        self.manager.save()


class EpochCheckpoint(tf.keras.callbacks.Callback):
    """Saves after every epoch of phase `phase_index` but its last; works under `fit` and the tape loop.

    The last epoch is saved with the phase's freeze check instead: a checkpoint at the phase's end
    without its check would resume into a phase with nothing left to train and nothing to prove."""

    def __init__(self, checkpoints: TrainingCheckpoints, phase_index: int, end_epoch: int):
        super().__init__()
        self.checkpoints, self.phase_index, self.end_epoch = checkpoints, phase_index, end_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 < self.end_epoch:
            self.checkpoints.save(self.phase_index, epoch + 1)

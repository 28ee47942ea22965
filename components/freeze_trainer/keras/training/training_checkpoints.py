"""Training checkpoints, so a preempted trainer resumes at the batch its last checkpoint was saved at.

`tf.train.CheckpointManager` keeps the last few checkpoints of the model, the optimizer (moments and
step count) and the progress through the plan: the phase to train, the batches of it already trained,
the snapshot its freeze check compares against, and the checks of the phases already completed. All of
it is one checkpoint, and each save is atomic, so a kill at any moment leaves the last complete one.

Under MultiWorkerMirroredStrategy saving is a collective, so every worker saves: the chief to the
directory, the other workers to a scratch folder of their own that each save then removes (as the
tf.distribute guide does). Every worker restores from the chief's checkpoints in the directory, which a
real job keeps on storage all of them share (the ModelRun).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace

import tensorflow as tf
from absl import logging

from freeze_trainer.keras.distribution import is_chief
from freeze_trainer.keras.training.freeze_proof import FreezeCheck, Snapshot

CHECKPOINTS_KEPT = 3


@dataclass(frozen=True)
class Progress:
    phase: int = 0  # index of the phase to train next
    position: int = 0  # batches of that phase already trained
    phase_start: Snapshot = field(default_factory=dict)  # the phase's start when `position` > 0
    completed: tuple[FreezeCheck, ...] = ()  # the checks of the phases before it


class _ProgressState(tf.train.experimental.PythonState):
    """Progress as an entry of the checkpoint; its snapshot is stored in `model.variables` order."""

    def __init__(self, model: tf.keras.Model):
        self.model = model
        self.progress = Progress()

    def serialize(self) -> str:
        return json.dumps({
            "phase": self.progress.phase,
            "position": self.progress.position,
            "phase_start": list(self.progress.phase_start.values()),
            "completed": [check.as_dict() for check in self.progress.completed],
        })

    def deserialize(self, string_value) -> None:
        values = json.loads(string_value)
        start = values["phase_start"]
        self.progress = Progress(
            values["phase"],
            values["position"],
            {v.ref(): tuple(entry) for v, entry in zip(self.model.variables, start, strict=True)} if start else {},
            tuple(FreezeCheck.from_dict(check) for check in values["completed"]),
        )


class TrainingCheckpoints:
    def __init__(self, directory: str, model: tf.keras.Model, optimizer: tf.keras.optimizers.Optimizer, **extra):
        """`extra`: more trackables saved and restored with the rest (the phases' best weights, say)."""
        self.directory = directory
        self._state = _ProgressState(model)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, progress=self._state, **extra)
        # A worker other than the chief writes where nobody reads: its save only takes part in the collective.
        self._scratch = None if is_chief() else tempfile.mkdtemp(prefix="worker-checkpoints-")
        self.manager = tf.train.CheckpointManager(checkpoint, self._scratch or directory,
                                                  max_to_keep=1 if self._scratch else CHECKPOINTS_KEPT)

    def restore(self) -> Progress | None:
        """Restores the model and optimizer from the chief's latest whole checkpoint and returns its
        progress (None without one). A damaged one (cut short by a full disk, say) is named in a
        warning and skipped for the one before it; each is read whole first, so a damaged one leaves the
        model untouched."""
        for path in _checkpoints_newest_first(self.directory):
            damage = _damage(path)
            if damage is None:
                self.manager.checkpoint.restore(path).assert_existing_objects_matched()
                return self._state.progress
            logging.warning("Checkpoint %s is damaged and skipped (%s); resuming from the one before it, if any",
                            path, damage)
        return None

    def save(self, progress: Progress) -> None:
        self._state.progress = progress
        self.manager.save()
        if self._scratch:
            tf.io.gfile.rmtree(self._scratch)


def _checkpoints_newest_first(directory: str) -> list[str]:
    state = tf.train.get_checkpoint_state(directory)
    if state is None:
        return []
    older = [path for path in reversed(state.all_model_checkpoint_paths) if path != state.model_checkpoint_path]
    return [state.model_checkpoint_path, *older]


def _damage(path: str) -> str | None:
    """Why the checkpoint at `path` cannot be read whole (a missing or truncated file), or None."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError, ValueError) as err:  # a truncated data file raises IndexError
        return f"{type(err).__name__}: {err}"
    return None


class PhaseCheckpoint(tf.keras.callbacks.Callback):
    """Saves every `every` batches of one phase but at its end; works under `fit` and the tape loop.

    It counts batches itself: `fit` numbers them from 0 in every epoch and every call. The phase's end is
    saved with its freeze check instead: a checkpoint there without the check would resume into a phase
    with nothing left to train and nothing to prove. A save due at an epoch's last batch waits for the
    epoch's end, after its evaluation and the callbacks before this one (the best-weights record): a
    run resumed there starts the next epoch with that epoch's evaluation done."""

    def __init__(self, checkpoints: TrainingCheckpoints, progress: Progress, phase_batches: int, every: int,
                 epoch_batches: int | None = None):
        super().__init__()
        self.checkpoints, self.progress, self.phase_batches, self.every = checkpoints, progress, phase_batches, every
        self.epoch_batches = epoch_batches

    def _due(self) -> bool:
        return self.progress.position % self.every == 0 and self.progress.position < self.phase_batches

    def on_train_batch_end(self, batch, logs=None):
        self.progress = replace(self.progress, position=self.progress.position + 1)
        ends_epoch = self.epoch_batches and self.progress.position % self.epoch_batches == 0
        if self._due() and not ends_epoch:
            self.checkpoints.save(self.progress)

    def on_epoch_end(self, epoch, logs=None):
        if self.epoch_batches and self._due():
            self.checkpoints.save(self.progress)

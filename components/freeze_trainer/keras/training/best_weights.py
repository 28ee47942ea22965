"""`restore_best`: a phase ends with the weights of its epoch with the lowest validation loss.

Like `EarlyStopping(restore_best_weights=True)`, with the phase's start as one more candidate: its
evaluation is the one the previous phase ended with, so a phase whose every epoch evaluates worse than
its start ends where it started, and fine-tuning never ends below the head it started from. Only what
the phase may change is copied and restored: its trainable variables and the BatchNorm statistics it
updates (`VariableSplit.may_change`), so a restore never touches a frozen variable and the freeze proof
holds. The copies and the record (best loss, its epoch, that epoch's metrics, the previous phase's end)
are part of the training checkpoint, so a resumed phase ends as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math

import tensorflow as tf

MONITOR = "val_loss"


class BestRecord(tf.train.experimental.PythonState):
    """The phase's best so far: its validation loss, its epoch (the run's, as Keras numbers it; the
    previous phase's last epoch for the phase's start; None: nothing yet) and that epoch's metrics; and
    the metrics the previous phase ended with."""

    def __init__(self):
        self.loss, self.epoch, self.logs, self.previous_logs = math.inf, None, {}, {}

    def serialize(self) -> str:
        loss = None if math.isinf(self.loss) else self.loss
        return json.dumps({"loss": loss, "epoch": self.epoch, "logs": self.logs, "previous_logs": self.previous_logs})

    def deserialize(self, string_value) -> None:
        values = json.loads(string_value)
        self.loss = math.inf if values["loss"] is None else values["loss"]
        self.epoch, self.logs, self.previous_logs = values["epoch"], values["logs"], values["previous_logs"]


class BestWeights:
    """Copies of `variables` (every variable a `restore_best` phase may change) at the best epoch. Create
    it where the model's variables were created (inside the strategy's scope); `trackable` is what the
    training checkpoint saves."""

    def __init__(self, variables):
        self._index = {v.ref(): index for index, v in enumerate(variables)}
        self.trackable = tf.Module(name="best_weights")
        self.trackable.copies = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in variables]
        self.trackable.record = self.record = BestRecord()

    def _keep(self, variables) -> None:
        for variable in variables:
            self.trackable.copies[self._index[variable.ref()]].assign(variable)

    def start_phase(self, variables, first_epoch: int) -> None:
        """The phase's start is the first candidate, at the loss the previous phase ended with (if any),
        as the epoch before the phase's `first_epoch`."""
        previous = self.record.previous_logs
        self.record.loss, self.record.epoch, self.record.logs = math.inf, None, {}
        if MONITOR in previous:
            self._keep(variables)
            self.record.loss, self.record.epoch, self.record.logs = float(previous[MONITOR]), first_epoch - 1, dict(previous)

    def offer(self, epoch: int, logs: dict, variables) -> bool:
        """Keeps `variables` if `epoch` has the phase's lowest validation loss so far."""
        loss = logs.get(MONITOR)
        if loss is None or not loss < self.record.loss:
            return False
        self._keep(variables)
        self.record.loss, self.record.epoch, self.record.logs = float(loss), int(epoch), dict(logs)
        return True

    def restore(self, variables) -> None:
        for variable in variables:
            variable.assign(self.trackable.copies[self._index[variable.ref()]])

    def end_phase(self, logs: dict) -> None:
        """What the phase ended with: the next phase's start candidate."""
        self.record.previous_logs = {key: float(value) for key, value in logs.items()}


class RecordBest(tf.keras.callbacks.Callback):
    """Offers each evaluated epoch of a phase to `BestWeights`; works under `fit` and the tape loop. It must
    come before the checkpoint callback, whose epoch-end save then holds the epoch's record."""

    def __init__(self, best: BestWeights, variables):
        super().__init__()
        self.best, self.variables = best, tuple(variables)
        self.last_epoch = None  # the last epoch trained

    def on_epoch_end(self, epoch, logs=None):
        self.last_epoch = epoch
        if MONITOR not in (logs or {}):
            raise ValueError(f"restore_best needs evaluation data: the epoch's logs have no {MONITOR!r}")
        self.best.offer(self.last_epoch, logs, self.variables)

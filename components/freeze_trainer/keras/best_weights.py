"""`restore_best`: a phase ends with the weights of its epoch with the lowest validation loss.

Like `EarlyStopping(restore_best_weights=True)`, but only over what the phase may change: the copies
cover the phase's trainable variables and the BatchNorm statistics it updates (`VariableSplit.may_change`),
so restoring them never touches a frozen variable and the freeze proof still holds. The copies, the best
loss, its epoch and that epoch's metrics are part of the training checkpoint, so a resumed phase
restores what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import math

import tensorflow as tf

MONITOR = "val_loss"


class _BestState(tf.train.experimental.PythonState):
    """The best loss so far in the phase, its epoch (-1: none yet) and that epoch's logs."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss, self.epoch, self.logs = math.inf, -1, {}

    def serialize(self) -> str:
        return json.dumps({"loss": None if math.isinf(self.loss) else self.loss, "epoch": self.epoch, "logs": self.logs})

    def deserialize(self, string_value) -> None:
        values = json.loads(string_value)
        self.loss = math.inf if values["loss"] is None else values["loss"]
        self.epoch, self.logs = values["epoch"], values["logs"]


class BestWeights:
    """Copies of `variables` (every variable a `restore_best` phase may change) taken at the best epoch.
    Create it where the model's variables were created (inside the strategy's scope). `trackable` is
    what the training checkpoint saves."""

    def __init__(self, variables):
        self._index = {v.ref(): index for index, v in enumerate(variables)}
        self.trackable = tf.Module(name="best_weights")
        self.trackable.copies = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in variables]
        self.trackable.state = self.state = _BestState()

    @property
    def copies(self) -> list[tf.Variable]:
        return self.trackable.copies

    def start_phase(self) -> None:
        self.state.reset()

    def record(self, epoch: int, logs: dict, variables) -> bool:
        """Keeps `variables` if this epoch's validation loss is the phase's lowest; returns whether it was."""
        loss = logs.get(MONITOR)
        if loss is None or not loss < self.state.loss:
            return False
        for variable in variables:
            self.copies[self._index[variable.ref()]].assign(variable)
        self.state.loss, self.state.epoch, self.state.logs = float(loss), int(epoch), dict(logs)
        return True

    def restore(self, variables) -> None:
        for variable in variables:
            variable.assign(self.copies[self._index[variable.ref()]])


class RecordBest(tf.keras.callbacks.Callback):
    """Records the phase's best epoch into `BestWeights` after each evaluation; works under `fit` and the
    tape loop. It must come before the checkpoint callback, whose epoch-end save then includes it."""

    def __init__(self, best: BestWeights, variables):
        super().__init__()
        self.best, self.variables, self.last_epoch = best, tuple(variables), None

    def on_epoch_end(self, epoch, logs=None):
        self.last_epoch = epoch
        if MONITOR not in (logs or {}):
            raise ValueError(f"restore_best needs evaluation data: the epoch's logs have no {MONITOR!r}")
        self.best.record(epoch, logs, self.variables)

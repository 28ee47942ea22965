"""One progress bar per training phase, for both training loops: a line naming the phase, then Keras'
Progbar over all of the phase's batches, live on a terminal and one line per epoch otherwise."""

from __future__ import annotations

import sys
import time

import tensorflow as tf

from freeze_trainer.keras.planning.phase_schedule import ScheduledPhase

REDRAW_SECONDS = 0.05  # Progbar's own interval


def phase_header(phase: ScheduledPhase, total: int, epoch_steps: int, cached_features: bool, position: int) -> str:
    """`phase 2/3 'top': 5 epochs x 40 steps, live part on cached block_15_add, resumed at step 37`; a phase
    whose whole base is frozen says `head on cached base features` (the schedule's words)."""
    length = phase.length_text if phase.plan.steps else f"{phase.length_text} x {epoch_steps} steps"
    parts = [f"phase {phase.number}/{total} {phase.plan.phase.name!r}: {length}"]
    if cached_features:
        parts.append(phase.cache.what_trains)
    if position:
        parts.append(f"resumed at step {position}")
    return ", ".join(parts)


class PhaseProgress(tf.keras.callbacks.Callback):
    """Prints `header` once, then one Progbar over the phase's `total` batches, from `position` on (where a
    resumed phase's checkpoint left it). One instance serves every training call of its phase: a phase
    resumed mid-epoch takes two."""

    def __init__(self, header: str, total: int, position: int = 0):
        super().__init__()
        # Batch logs may stay tensors until the bar shows them, so `fit` need not wait for every step.
        self._supports_tf_logs = True
        self.header, self.total, self.position = header, total, position
        self._epoch_start = position
        self._bar: tf.keras.utils.Progbar | None = None
        self._live = False
        self._drawn = 0.0

    def on_train_begin(self, logs=None):
        if self._bar is None:
            print(self.header, flush=True)
            # Off a terminal a redrawn bar would pile up in the file: Progbar's verbose 2 writes plain lines,
            # one per epoch (without the backspaces and carriage returns of a redraw).
            self._live = sys.stdout.isatty()
            self._bar = tf.keras.utils.Progbar(self.total, interval=REDRAW_SECONDS, verbose=1 if self._live else 2)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.position

    def on_train_batch_end(self, batch, logs=None):
        self.position = self._epoch_start + batch + 1
        # Reading the logs waits for the step to finish: only as often as the bar redraws.
        if self._live and time.monotonic() - self._drawn >= REDRAW_SECONDS:
            self._drawn = time.monotonic()
            self._show(logs, finalize=False)

    def on_epoch_end(self, epoch, logs=None):
        # The evaluation metrics join the bar; the last epoch, or an early stop, ends it. Off a terminal (a
        # log file, a KFP or Vertex task's log) each epoch writes its line, so a long phase shows progress.
        self._show(logs, finalize=not self._live or self.position >= self.total or self.model.stop_training)

    def _show(self, logs, finalize: bool) -> None:
        values = {name: value.numpy() if hasattr(value, "numpy") else value for name, value in (logs or {}).items()}
        # Both loops report running means over the epoch (fit's compiled metrics, the tape loop's Mean
        # metrics): the bar shows them as they are instead of averaging them again.
        self._bar.stateful_metrics.update(values)
        self._bar.update(self.position, list(values.items()), finalize=finalize)
        if not self._live and self.position < self.total:
            print(flush=True)  # Progbar ends a plain line only at its target; an epoch's line ends here

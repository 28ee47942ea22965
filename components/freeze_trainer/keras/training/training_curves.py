"""Training curves per phase: the loss and each metric by epoch, train and eval, with the phase boundaries.

The trainer records every epoch's logs with Keras' `CSVLogger` (appending, so a resumed run keeps the
epochs of the attempt before it); `read_history` reads the file back, and `curves_figure` draws it on
the Agg canvas, headless, like plan_picture.py.
"""

from __future__ import annotations

import csv
import math

import tensorflow as tf

from freeze_trainer.keras.planning.freeze_plan import PhasePlan
from freeze_trainer.keras.planning.phase_schedule import PhaseSchedule, build_schedule
from freeze_trainer.keras.planning.plan_picture import LITERAL_TEXT

DPI = 100
PANEL_WIDTH_IN, HEIGHT_IN = 5.0, 3.4
_PHASE_SHADES = ("#f2f5f9", "#ffffff")  # alternate phases, so each boundary shows


def read_history(path: str) -> list[dict[str, float]]:
    """The epochs `CSVLogger` wrote (any filesystem TensorFlow reads, as it writes), in order, one dict per
    epoch (`epoch` from 0); none when it wrote nothing. An epoch written twice (a resumed run finishing an
    interrupted epoch) keeps its last row."""
    if not tf.io.gfile.exists(path):
        return []
    rows: dict[int, dict[str, float]] = {}
    with tf.io.gfile.GFile(path) as f:
        for row in csv.DictReader(f):
            values = {key: float(value) for key, value in row.items() if value not in ("", None)}
            rows[int(values["epoch"])] = values
    return [rows[epoch] for epoch in sorted(rows)]


def curve_names(history: list[dict[str, float]]) -> list[str]:
    """The trained quantities (the loss first), each drawn with its `val_` twin when there is one.

    >>> curve_names([{"epoch": 0, "loss": 1.0, "val_loss": 1.2, "auc": 0.7, "val_auc": 0.6}])
    ['loss', 'auc']
    """
    names = dict.fromkeys(key for row in history for key in row if key != "epoch" and not key.startswith("val_"))
    return sorted(names, key=lambda name: name != "loss")


def curves_figure(history: list[dict[str, float]], plans: list[PhasePlan] | PhaseSchedule):
    """One panel per curve (loss, then metrics), epochs from 1 along x; each phase a shaded band named at
    the top. Returns a matplotlib `Figure` on the Agg canvas."""
    import matplotlib

    with matplotlib.rc_context(LITERAL_TEXT):  # phase and metric names drawn as written
        return _curves_figure(history, plans)


def _curves_figure(history: list[dict[str, float]], plans: list[PhasePlan] | PhaseSchedule):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = curve_names(history)
    panels = max(len(names), 1)
    figure = Figure(figsize=(PANEL_WIDTH_IN * panels, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    epochs = [row["epoch"] + 1 for row in history]  # the history's Keras epochs, as a person counts them
    schedule = plans if isinstance(plans, PhaseSchedule) else build_schedule(plans)
    for axes, name in zip(figure.subplots(1, panels, squeeze=False)[0], names):
        for phase in schedule:
            first, end = phase.first_epoch, phase.end_epoch
            axes.axvspan(first + 0.5, end + 0.5, color=_PHASE_SHADES[phase.index % 2], zorder=0)
            axes.text((first + end + 1) / 2, 1.0, f"{phase.number} {phase.plan.phase.name}",
                      transform=axes.get_xaxis_transform(), ha="center", va="bottom", fontsize=8, clip_on=False)
            if phase.index:
                axes.axvline(first + 0.5, color="#8a9099", linewidth=0.8, linestyle="--")
        for key, label, style in ((name, "train", "-"), (f"val_{name}", "eval", "--")):
            points = [(epoch, row[key]) for epoch, row in zip(epochs, history)
                      if key in row and math.isfinite(row[key])]
            if points:
                axes.plot(*zip(*points), style, marker="o", markersize=3, label=label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel(name)
        axes.set_xlim(0.5, max(schedule[-1].end_epoch, len(epochs)) + 0.5)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="best")
    return figure

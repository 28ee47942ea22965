"""The run report's policy search: the trials of the FreezeTuner whose best values the trainer applied.

FreezeTuner writes `trials.json` (tuner.py's records: each trial's values, objective, metrics, seconds,
reused and trained phases) into its `tuner_results` output; FreezeTrainer takes that output as its own
`tuner_results` input and reads the file (`read_trials`), and the report shows the trials as a table
(`trial_rows`) and their objective by trial (`trials_figure`). Best-effort, as the whole report is:
trials that cannot be read leave the section out, with a warning.
"""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf
from absl import logging
from tfx import types
from tfx.types import artifact_utils
from tfx.types.standard_component_specs import TUNER_RESULTS_KEY

from freeze_trainer.tfx.search_space import format_values

TRIALS_FILE = "trials.json"  # FreezeAwareTuner's records: beside the oracle's state and in `tuner_results`
TRIALS_KEY = "freeze_trainer_search_trials"  # fn_args.custom_config: the trials, for run_fn's report


def read_trials(input_dict: dict[str, list[types.Artifact]]) -> list[dict] | None:
    """The trials in the trainer's `tuner_results` input, ordered by trial; None without one."""
    artifacts = input_dict.get(TUNER_RESULTS_KEY)
    if not artifacts:
        return None
    path = os.path.join(artifact_utils.get_single_uri(artifacts), TRIALS_FILE)
    try:
        with tf.io.gfile.GFile(path) as f:
            trials = json.load(f)
        return sorted(trials, key=lambda trial: trial["trial"])
    except Exception as err:  # noqa: BLE001  (a side output: the run trains without its report's trials)
        logging.warning("The run report's trials are left out: %s: %s: %s", path, type(err).__name__, err)
        return None


def objective_name(trials: list[dict]) -> str:
    """The search's objective, as every trial records it (`{name: value}`)."""
    return next(iter(trials[0]["objective"]))


def _score(trial: dict, objective: str) -> float | None:
    return trial["objective"].get(objective)


def minimised(trials: list[dict]) -> bool:
    return trials[0].get("direction") == "min"


def search_section(trials: list[dict], applied: dict[str, Any] | None) -> dict:
    """The report's search data, its picture aside: the objective, its direction, and one row a trial."""
    return {"objective": objective_name(trials), "direction": "min" if minimised(trials) else "max",
            "rows": trial_rows(trials, applied)}


def trial_rows(trials: list[dict], applied: dict[str, Any] | None) -> list[dict]:
    """One row a trial: its number, values, objective, seconds, reused phases, and whether its values are
    the ones the trainer applied (`applied`, the hyperparameters it got)."""
    objective = objective_name(trials)
    return [{"trial": trial["trial"], "values": format_values(trial["values"]), "objective": _score(trial, objective),
             "seconds": trial["seconds"], "reused": ", ".join(trial["reused"]) or "nothing",
             "applied": applied is not None and trial["values"] == {
                 name: applied.get(name) for name in trial["values"]}}
            for trial in trials]


def trials_figure(trials: list[dict]):
    """The objective by trial: each trial a point (hollow where it reused a phase), and the best so far as
    a step line. Returns a matplotlib `Figure` on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    objective, minimise = objective_name(trials), minimised(trials)
    scored = [(trial["trial"], _score(trial, objective), bool(trial["reused"])) for trial in trials
              if _score(trial, objective) is not None]
    figure = Figure(figsize=(6.4, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for reused, label in ((False, "trained every phase"), (True, "reused a shared phase")):
        points = [(number, score) for number, score, shared in scored if shared == reused]
        if points:
            axes.scatter(*zip(*points), label=label, facecolors="none" if reused else "C0", edgecolors="C0")
    best, best_so_far = None, []
    for _, score, _ in scored:
        best = score if best is None or (score < best if minimise else score > best) else best
        best_so_far.append(best)
    axes.step([number for number, _, _ in scored], best_so_far, where="post", color="C1", label="best so far")
    axes.set_xlabel("trial")
    axes.set_ylabel(objective)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(loc="best", fontsize="small")
    return figure

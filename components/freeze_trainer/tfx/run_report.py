"""The run report: one self-contained `report.html` per training run, for a person to read.

The trainer renders it into its ModelRun and into the serving model's `assets.extra/`, from the report
data it also stores there (`run_report.json`): the policy, the plan (text and picture), the training
curves per phase, the proof table, the feature cache's use, the final training metrics. The Evaluator
runs after the trainer, so the Pusher renders the same data again with TFMA's metrics and the blessing
into the copies it pushes (pusher.py). Pictures are PNGs inside the page, as data: URIs, so the file
opens anywhere by itself. The report is best-effort, since it describes a model that has trained: a
picture that cannot be drawn is left out, a report that cannot be written is left out, each with a warning.
"""

from __future__ import annotations

import base64
import datetime
import io
import os
from importlib import resources
from typing import Any, Callable

import jinja2
import tensorflow as tf
import yaml
from absl import logging

from freeze_trainer.keras.distribution import is_chief
from freeze_trainer.keras.planning.freeze_plan import PhasePlan
from freeze_trainer.keras.planning.plan_picture import plan_figure
from freeze_trainer.keras.planning.phase_schedule import PhaseSchedule, build_schedule
from freeze_trainer.keras.planning.plan_report import format_lr, format_plan_groups, phase_summary
from freeze_trainer.keras.training.training_curves import curves_figure, read_history
from freeze_trainer.tfx.search_report import search_section, trials_figure
from freeze_trainer.tfx.trainer_config import TrainerConfig

REPORT_ASSET = "report.html"
REPORT_DATA_ASSET = "run_report.json"
HISTORY_FILE = "training_history.csv"  # the trainer's CSVLogger, in the ModelRun
CURVES_PICTURE = "training_curves.png"  # the report's curves, also on their own in the ModelRun
_TEMPLATE = "report.html.jinja"
_BOOKKEEPING = {"example_count", "weighted_example_count"}


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture(what: str, draw: Callable[[], Any]) -> str | None:
    """The PNG of the figure `draw()` returns, or None with a warning: a picture never costs the report."""
    try:
        return _png(draw())
    except Exception as err:  # noqa: BLE001  (a side output: the page goes on without it)
        logging.warning("The run report's %s is left out: %s: %s", what, type(err).__name__, err)
        return None


def _schedule(config: TrainerConfig, plans: list[PhasePlan] | PhaseSchedule) -> PhaseSchedule:
    if isinstance(plans, PhaseSchedule):
        return plans
    return build_schedule(plans, feature_cache=config.feature_cache == "auto")


def _best_epoch(freeze_report: dict, index: int) -> int | None:
    checks = freeze_report.get("phases", [])
    return checks[index].get("best_epoch") if index < len(checks) else None


def _search(trials: list[dict] | None, applied: dict[str, Any] | None) -> dict | None:
    """The policy search's section: its trials (a FreezeTuner's, search_report.py) and their plot."""
    if not trials:
        return None
    return {**search_section(trials, applied), "plot_png": _picture("trials plot", lambda: trials_figure(trials))}


def report_data(config: TrainerConfig, plans: list[PhasePlan] | PhaseSchedule, freeze_report: dict,
                history: list[dict], tensorboard_logdir: str, trials: list[dict] | None = None,
                applied: dict[str, Any] | None = None) -> dict:
    """Everything the report shows, as JSON-ready data; `evaluation` stays None until the Pusher adds it.
    `plans`: the run's schedule (plans are scheduled as the trainer would); `trials`: the policy search's
    that chose `applied`, the hyperparameters the trainer applied."""
    schedule = _schedule(config, plans)
    plans = schedule.plans
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "freeze_report": freeze_report,
        "policy": config.freeze_policy.model_dump(mode="json", exclude_none=True),
        "plan_text": format_plan_groups(schedule),
        "plan_png": _picture("plan picture", lambda: plan_figure(
            plans, f"{freeze_report['base_name']}: one row per phase, width ∝ parameters")),
        "curves_png": _picture("training curves", lambda: curves_figure(history, schedule)) if history else None,
        "phases": [
            {"summary": phase_summary(phase.number, len(plans), phase.plan,
                                      plans[phase.index - 1] if phase.index else None, phase.cache_clause),
             "length": phase.length_text, "feature_cache": phase.cache_reason,
             "best_epoch": phase.best_epoch_text(_best_epoch(freeze_report, phase.index))}
            for phase in schedule
        ],
        "tensorboard_logdir": tensorboard_logdir,
        "search": _search(trials, applied),
        "evaluation": None,
    }


def write_run_report(config: TrainerConfig, plans: list[PhasePlan] | PhaseSchedule, freeze_report: dict, history_path: str,
                     model_run_dir: str, trials: list[dict] | None = None, applied: dict[str, Any] | None = None
                     ) -> dict[str, dict | str]:
    """The trainer's part: the page and its curves picture into the ModelRun (by the chief, beside the
    TensorBoard logs), and the report's assets for the serving model, by name. Best-effort: the model
    it describes has trained, so a failure is a warning and no report, never a failed run."""
    try:
        data = report_data(config, plans, freeze_report, read_history(history_path) if is_chief() else [],
                           model_run_dir, trials, applied)
        page = render_report(data)
        if is_chief():
            with tf.io.gfile.GFile(os.path.join(model_run_dir, REPORT_ASSET), "w") as f:
                f.write(page)
            if data["curves_png"]:
                with tf.io.gfile.GFile(os.path.join(model_run_dir, CURVES_PICTURE), "wb") as f:
                    f.write(base64.b64decode(data["curves_png"]))
    except Exception as err:  # noqa: BLE001  (a side output: the model is exported without it)
        logging.warning("The run report is not written: %s: %s", type(err).__name__, err)
        return {}
    return {REPORT_DATA_ASSET: data, REPORT_ASSET: page}


def overall_metrics(evaluation_uri: str) -> dict[str, float]:
    """TFMA's overall (unsliced) metrics in an Evaluator's `evaluation` output, without example counts."""
    import tensorflow_model_analysis as tfma  # only the Pusher and run summaries read evaluations

    metrics = tfma.load_eval_result(evaluation_uri).slicing_metrics[0][1]
    return {name: value["doubleValue"] for name, value in metrics[""][""].items()
            if name not in _BOOKKEEPING and "doubleValue" in value}


def with_evaluation(data: dict, metrics: dict[str, float], blessed: bool, baseline: str | None) -> dict:
    """The report data with the Evaluator's overall metrics and the blessing (`baseline`: the model the
    Evaluator compared against, None for the first model)."""
    return {**data, "evaluation": {"metrics": metrics, "blessed": blessed, "baseline": baseline}}


def render_report(data: dict) -> str:
    """The report page: HTML with every picture inside it."""
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)
    environment.filters["lr"] = format_lr  # rates read as in `freeze-policy plan`
    template = environment.from_string(resources.files(__package__).joinpath(_TEMPLATE).read_text())
    # The policy as the YAML a person would write, with flow style for the innermost mappings: a
    # two-phase policy takes 20 lines rather than JSON's 45. (The sha256 beside it is of the canonical JSON.)
    policy = yaml.safe_dump(data["policy"], sort_keys=False, default_flow_style=None)
    return template.render(data=data, policy=policy)

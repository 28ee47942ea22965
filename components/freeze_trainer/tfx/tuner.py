"""`tuner_fn` for TFX's stock Tuner component: a freeze-aware policy search.

    Tuner(examples=..., transform_graph=..., schema=...,
          tuner_fn="freeze_trainer.tfx.tuner.tuner_fn",
          custom_config={SEARCH_SPACE_KEY: <the space's YAML/JSON text>,
                         TRAINER_PARAMETERS_KEY: <FreezeTrainer's parameters, name -> value>})

The space (tfx/search_space.py) is checked against the parameters before any trial. KerasTuner's oracle
(random, Bayesian or Hyperband) picks each trial's values; the trial trains as FreezeTrainer would with
them applied (search_trials.py: trials share the built model, phases and the feature cache) and prints one
line:

    trial 3/8: policy.batchnorm=affine  policy.phases.1.learning_rate=0.001  val_accuracy 0.612 in 14.2 s (reused: head)

KerasTuner's `Choice` takes only numbers, booleans and text, so a value that is a JSON object or list (a
selector) goes to the oracle as JSON text and is decoded back: the best values TFX writes as
`best_hyperparameters` are the space's own values, which FreezeTrainer applies. The oracle's state lives in
`fn_args.working_dir`; every finished trial's values, objective, seconds and phases are also written to
`trials.json` there.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import partial
from typing import Any

import keras_tuner as kt
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx.components.tuner.component import TunerFnResult

from freeze_trainer.tfx.search_space import (
    DEFAULT_OBJECTIVES, Objective, Range, SearchSpace, SearchSpaceError, format_values, parse_search_space,
)
from freeze_trainer.tfx.search_report import TRIALS_FILE
from freeze_trainer.tfx.search_trials import SearchTrials, TrialResult
from freeze_trainer.tfx.trainer_config import TrainerConfig

SEARCH_SPACE_KEY = "freeze_trainer_search_space"
TRAINER_PARAMETERS_KEY = "freeze_trainer_parameters"
# Optional: a folder that outlives the Tuner's execution, for the oracle's state and `trials.json`. A search
# rerun there with the same space and parameters resumes: its finished trials are not run again.
SEARCH_DIR_KEY = "freeze_trainer_search_dir"
_ORACLES = {"random": kt.oracles.RandomSearchOracle, "bayesian": kt.oracles.BayesianOptimizationOracle,
            "hyperband": kt.oracles.HyperbandOracle}


def _scalar_kind(values: list[Any]) -> type | None:
    """The one type KerasTuner's Choice can hold these values as, or None (they go as JSON text)."""
    for kind in (bool, str):
        if all(isinstance(value, kind) for value in values):
            return kind
    numbers = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values)
    if numbers:
        return int if all(isinstance(value, int) for value in values) else float
    return None


def _choice_value(value: Any, kind: type | None) -> Any:
    return json.dumps(value, sort_keys=True) if kind is None else kind(value)


def declare_hyperparameters(space: SearchSpace) -> tuple[kt.HyperParameters, set[str]]:
    """The space as KerasTuner's hyperparameters, and the names whose values go as JSON text."""
    hp, encoded = kt.HyperParameters(), set()
    for name, values in space.hyperparameters.items():
        if isinstance(values, Range):
            sampling = "log" if values.sampling == "log" else "linear"
            if values.integers:
                hp.Int(name, values.min, values.max, step=values.step or 1, sampling=sampling)
            else:
                hp.Float(name, float(values.min), float(values.max), step=values.step, sampling=sampling)
            continue
        kind = _scalar_kind(values)
        if kind is None:
            encoded.add(name)
        hp.Choice(name, list(dict.fromkeys(_choice_value(value, kind) for value in values)), ordered=False)
    return hp, encoded


def grid_values(space: SearchSpace) -> list[dict[str, Any]]:
    """Every combination of a grid as the oracle holds it (selectors as JSON text)."""
    kinds = {name: _scalar_kind(values) for name, values in space.hyperparameters.items()}
    return [{name: _choice_value(value, kinds[name]) for name, value in values.items()}
            for values in space.combinations()]


class FullGridOracle(kt.Oracle):
    """Every combination once, in the space's order. What it tried it reads from its trials, so a reloaded
    search goes on where it stopped (KerasTuner's GridSearchOracle keeps its order only in memory and
    fails on reload)."""

    def __init__(self, combinations: list[dict[str, Any]], **kwargs):
        super().__init__(**kwargs)
        self.combinations = combinations

    def populate_space(self, trial_id):
        tried = [trial.hyperparameters.values for trial in self.trials.values()]
        untried = [values for values in self.combinations if values not in tried]
        if untried:
            return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": untried[0]}
        return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}


def objective_for(space: SearchSpace, task: str) -> kt.Objective:
    """The space's objective; without one, the task's validation metric (an `auto` task's: multiclass)."""
    goal = space.goal or Objective(name=DEFAULT_OBJECTIVES.get(task, DEFAULT_OBJECTIVES["multiclass"]))
    return kt.Objective(goal.name, goal.resolved_direction)


def trial_line(number: int, total: int, values: dict[str, Any], objective: str, result: TrialResult) -> str:
    score = result.metrics.get(objective)
    score_text = f"{score:.3f}" if score is not None else "n/a"
    reused = ", ".join(result.reused) or "nothing"
    return (f"trial {number}/{total}: {format_values(values)}  {objective} {score_text} in {result.seconds:.1f} s"
            f" (reused: {reused})")


class FreezeAwareTuner(kt.engine.base_tuner.BaseTuner):
    """KerasTuner's search loop over SearchTrials: no Keras 3 model is involved (the project trains tf-keras
    models), so `run_trial` trains and returns the metrics."""

    def __init__(self, oracle, trials: SearchTrials, names: set[str], encoded: set[str], total: int, **kwargs):
        super().__init__(oracle, **kwargs)
        self.trials, self.names, self.encoded, self.total = trials, names, encoded, total
        self.records_path = os.path.join(self.project_dir, TRIALS_FILE)
        self.records = self._read_records()

    def _read_records(self) -> list[dict]:
        if os.path.exists(self.records_path):
            with open(self.records_path) as f:
                return json.load(f)
        return []

    def decoded(self, values: dict[str, Any]) -> dict[str, Any]:
        """The space's values (selectors decoded), without the oracle's own entries (Hyperband's `tuner/...`)."""
        return {name: json.loads(value) if name in self.encoded else value for name, value in values.items()
                if name in self.names}

    def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
        number = int(trial.trial_id) + 1  # a trial resumed after a kill keeps its id
        values = self.decoded(trial.hyperparameters.values)
        try:
            result = self.trials.run(values)
        except Exception as err:  # a broken trial (a freeze violation, a bad value) ends the search
            raise kt.errors.FatalError(f"trial {number}: {type(err).__name__}: {err}") from err
        objective = self.oracle.objective.name
        print(trial_line(number, self.total, values, objective, result), flush=True)
        self.records = [record for record in self.records if record["trial"] != number]
        self.records.append({"trial": number, "trial_id": trial.trial_id, "values": values,
                             "objective": {objective: result.metrics.get(objective)},
                             "direction": self.oracle.objective.direction, "metrics": result.metrics,
                             "seconds": round(result.seconds, 2), "reused": list(result.reused),
                             "trained": list(result.trained_phases)})
        with open(self.records_path, "w") as f:
            json.dump(self.records, f, indent=1)
        return result.metrics

    def get_best_hyperparameters(self, num_trials: int = 1) -> list[kt.HyperParameters]:
        """The best trials' values as the space wrote them (selectors decoded): what TFX writes as the
        Tuner's `best_hyperparameters`, for FreezeTrainer to apply."""
        best = []
        for hp in super().get_best_hyperparameters(num_trials):
            plain = kt.HyperParameters()
            plain.values = self.decoded(hp.values)
            best.append(plain)
        return best

    def on_search_end(self):
        super().on_search_end()
        self.trials.close()

    def search_space_summary(self, extended=False):
        print(f"policy search: {self.total} trials, objective {self.oracle.objective.name}"
              f" ({self.oracle.objective.direction}); state in {self.project_dir}", flush=True)

    def results_summary(self, num_trials=1):
        for trial in self.oracle.get_best_trials(num_trials):
            print(f"best: {format_values(self.decoded(trial.hyperparameters.values))}"
                  f"  {self.oracle.objective.name} {trial.score:.3f}", flush=True)

    # A trial trains a tf-keras model KerasTuner cannot save or load; the exported model is FreezeTrainer's.
    def save_model(self, trial_id, model, step=0):
        pass


def search_inputs(custom_config: dict | None) -> tuple[SearchSpace, dict[str, Any]]:
    """The space and the trainer parameters in a Tuner's `custom_config`; raises SearchSpaceError."""
    custom_config = custom_config or {}
    text = custom_config.get(SEARCH_SPACE_KEY)
    if not isinstance(text, str):
        raise SearchSpaceError("", f"custom_config[{SEARCH_SPACE_KEY!r}]: the search space's YAML or JSON text")
    base = dict(custom_config.get(TRAINER_PARAMETERS_KEY) or {})
    return parse_search_space(text, base), base


def tuner_fn(fn_args: FnArgs) -> TunerFnResult:
    """TFX's Tuner entry point: the freeze-aware tuner over the space in `fn_args.custom_config`."""
    space, base = search_inputs(fn_args.custom_config)
    # The Tuner's fn_args name the Transform output only by its current name; the trainer's helpers read both.
    fn_args.transform_output = fn_args.transform_output or fn_args.transform_graph_path
    hp, encoded = declare_hyperparameters(space)
    config = TrainerConfig.from_parameters(**base)
    # A random search that runs every combination of a grid runs each once, in order.
    full_grid = space.algorithm == "random" and space.is_grid and space.trial_count == space.combination_count
    oracle_class = partial(FullGridOracle, grid_values(space)) if full_grid else _ORACLES[space.algorithm]
    limit = {"max_epochs": 1} if space.algorithm == "hyperband" else {"max_trials": space.trial_count}
    oracle = oracle_class(objective=objective_for(space, config.task), hyperparameters=hp, allow_new_entries=False,
                          tune_new_entries=False, seed=config.seed, **limit)
    trials = SearchTrials(fn_args, base, os.path.join(fn_args.working_dir, "scratch"))
    search_dir = (fn_args.custom_config or {}).get(SEARCH_DIR_KEY) or fn_args.working_dir
    # The oracle's state is the search's: another space or other parameters search afresh.
    digest = hashlib.sha256(json.dumps([space.model_dump(mode="json"), base], sort_keys=True).encode()).hexdigest()
    tuner = FreezeAwareTuner(oracle, trials, set(space.hyperparameters), encoded, space.trial_count, directory=search_dir,
                             project_name=f"search_{digest[:16]}")
    # verbose 0: the oracle's own progress lines give way to one line per trial.
    return TunerFnResult(tuner=tuner, fit_kwargs={"verbose": 0})

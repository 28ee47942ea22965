"""A hyperparameter search space in the trainer's own terms, validated before any trial runs.

The space's keys are exactly what a `hyperparameters` artifact overrides (`apply_hyperparameters`): the
per-run parameters of the table and `policy.<path>` fields of the freeze policy. Each takes a list of
values (any JSON value the field takes, a selector too) or a range. A space is checked as a policy is:
every key exists, every value passes the table's and the policy's bounds, and every combination of the
values (a range by its two ends) plans against the base model, so that a selector that matches nothing is
named before any trial runs.

    version: 1
    algorithm: random            # KerasTuner's: random | bayesian | hyperband
    max_trials: 8
    objective: val_accuracy      # default: the task's validation metric
    hyperparameters:
      policy.batchnorm: [frozen, affine]
      learning_rate: {min: 1.0e-4, max: 1.0e-2, sampling: log}

Parsing and the value checks import no TensorFlow; planning (`plan_combinations`) builds the model.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
from typing import Annotated, Any, Iterator, Literal, Union

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, PositiveInt, Tag, model_validator

from freeze_trainer.policy.freeze_policy import (
    FROZEN_BASE_POLICY,
    PolicyError,
    load_document,
    parse_policy,
    read_policy_source,
)
from freeze_trainer.policy.validation import DocumentError, error_key, first_error
from freeze_trainer.tfx.trainer_config import (
    POLICY_HYPERPARAMETER_PREFIX,
    TRAINER_PARAMETERS,
    ConfigError,
    TrainerConfig,
    apply_hyperparameters,
)

# The metrics a trained model records (keras/models/tasks.py: every task's metrics, and the loss), each also as
# `val_<name>` on the validation data; a lower loss or squared error is better, a higher anything else.
OBJECTIVE_METRICS = ("loss", "accuracy", "auc", "mse")
_LOWER_IS_BETTER = ("loss", "mse")
# The objective of a space that names none: the task's validation metric; AUC for a binary task (accuracy
# hides a skewed class balance), the loss for regression.
DEFAULT_OBJECTIVES = {"multiclass": "val_accuracy", "binary": "val_auc", "multi_label": "val_accuracy",
                      "regression": "val_loss"}
# The trainer parameters a model's layers depend on: a plan reuses the model while they stay the same.
_MODEL_PARAMETERS = ("backbone", "backbone_weights", "backbone_alpha", "dropout", "head_layers")
_PER_RUN = {parameter.name: parameter.per_run for parameter in TRAINER_PARAMETERS}


class SearchSpaceError(DocumentError):
    """An invalid search space; `key` is the dotted path of the offending entry."""

    document = "search space"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """Values from `min` to `max`: integers when both ends are integers, floats otherwise."""

    min: float | int
    max: float | int
    sampling: Literal["linear", "log"] = Field("linear", description="`log`: uniform in the logarithm (rates).")
    step: float | int | None = Field(None, gt=0, description="Only values `min + k × step` (linear sampling).")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not all(map(math.isfinite, (self.min, self.max))) or self.min >= self.max:
            raise ValueError(f"a range needs finite `min` < `max`; got {self.min} and {self.max}")
        if self.sampling == "log" and self.min <= 0:
            raise ValueError("a `log` range needs `min` > 0")
        if self.step is not None and self.sampling == "log":
            raise ValueError("`step` goes with `linear` sampling")
        return self

    @property
    def integers(self) -> bool:
        return all(isinstance(value, int) for value in (self.min, self.max, self.step or 1))

    def describe(self) -> str:
        kind = "integers" if self.integers else "log-uniform" if self.sampling == "log" else "uniform"
        step = f" in steps of {self.step:g}" if self.step is not None else ""
        return f"{kind} from {self.min:g} to {self.max:g}{step}"


# Tags of the two-way unions below: pydantic puts them in an error's location, and `_document_error` drops them.
_TAG = "<{}>"


def _value_kind(value: Any) -> str | None:
    return _TAG.format("values") if isinstance(value, list) else _TAG.format("range") if isinstance(value, dict) \
        else None


SearchedValues = Annotated[
    Union[
        Annotated[list[Any], Tag(_TAG.format("values")), Field(min_length=1)],
        Annotated[Range, Tag(_TAG.format("range"))],
    ],
    Discriminator(_value_kind, custom_error_type="search_values",
                  custom_error_message="a list of values, or a range {min, max, sampling}"),
]


def _known_metric(name: str) -> str:
    if name.removeprefix("val_") not in OBJECTIVE_METRICS:
        known = [f"{prefix}{metric}" for prefix in ("val_", "") for metric in OBJECTIVE_METRICS]
        close = difflib.get_close_matches(name, known, n=1)
        raise ValueError(f"unknown metric {name!r}" + (f"; closest: {close[0]}" if close else
                                                        f"; the trainer records {', '.join(known)}"))
    return name


MetricName = Annotated[str, AfterValidator(_known_metric),
                       Field(description=f"`val_<metric>` or `<metric>`; metrics: {', '.join(OBJECTIVE_METRICS)}.")]


class Objective(_Strict):
    """The metric the search optimises: a training metric, usually on the validation data (`val_`)."""

    name: MetricName
    direction: Literal["min", "max"] | None = Field(None, description="Default: `min` for loss and mse, else `max`.")

    @property
    def resolved_direction(self) -> str:
        return self.direction or ("min" if self.name.removeprefix("val_") in _LOWER_IS_BETTER else "max")


ObjectiveOrName = Annotated[
    Union[Annotated[Objective, Tag(_TAG.format("objective"))], Annotated[MetricName, Tag(_TAG.format("name"))]],
    Discriminator(lambda value: _TAG.format("name") if isinstance(value, str) else _TAG.format("objective")),
]


class SearchSpace(_Strict):
    """The search: what varies (`hyperparameters`), how many trials, what they optimise, and how."""

    version: Literal[1]
    hyperparameters: dict[str, SearchedValues] = Field(
        ..., min_length=1,
        description="Keys a `hyperparameters` artifact accepts: a per-run trainer parameter or `policy.<path>`"
        " (e.g. `policy.phases.1.learning_rate`); each a list of values or a range.",
    )
    max_trials: PositiveInt | None = Field(None, description="Default: every combination, for lists only.")
    objective: ObjectiveOrName | None = Field(
        None, description="A metric's name or {name, direction}; default: the task's validation metric: val_accuracy,"
        " val_auc for binary tasks, val_loss for regression."
    )
    algorithm: Literal["random", "bayesian", "hyperband"] = Field(
        "random", description="KerasTuner's RandomSearch, BayesianOptimization or Hyperband."
    )

    @model_validator(mode="after")
    def _trials_for_ranges(self) -> SearchSpace:
        ranges = [name for name, values in self.hyperparameters.items() if isinstance(values, Range)]
        if ranges and self.max_trials is None:
            raise ValueError(f"max_trials: needed when a hyperparameter is a range ({ranges[0]})")
        return self

    @property
    def is_grid(self) -> bool:
        return all(isinstance(values, list) for values in self.hyperparameters.values())

    def checked_values(self, name: str) -> list[Any]:
        """The values of `name` every check covers: its list, or a range's two ends."""
        values = self.hyperparameters[name]
        return [values.min, values.max] if isinstance(values, Range) else values

    def combinations(self) -> Iterator[dict[str, Any]]:
        """Every combination of the checked values, the first key varying slowest (as a grid search runs)."""
        names = list(self.hyperparameters)
        for values in itertools.product(*(self.checked_values(name) for name in names)):
            yield dict(zip(names, values))

    @property
    def combination_count(self) -> int:
        return math.prod(len(self.checked_values(name)) for name in self.hyperparameters)

    @property
    def trial_count(self) -> int:
        """How many trials run: max_trials, or every combination of a grid that sets none."""
        return min(self.max_trials or self.combination_count, self.combination_count) if self.is_grid \
            else self.max_trials

    @property
    def goal(self) -> Objective | None:
        """The objective named, as {name, direction}; None: the task's (DEFAULT_OBJECTIVES)."""
        return Objective(name=self.objective) if isinstance(self.objective, str) else self.objective

    def objective_text(self) -> str:
        goal = self.goal
        if goal is None:
            return (f"the task's validation metric ({DEFAULT_OBJECTIVES['multiclass']}, maximised;"
                    f" {DEFAULT_OBJECTIVES['binary']} for binary tasks, {DEFAULT_OBJECTIVES['regression']} minimised"
                    " for regression)")
        return f"{goal.name} ({'maximised' if goal.resolved_direction == 'max' else 'minimised'})"


def format_value(value: Any) -> str:
    """A value as the trial lines show it: compact JSON, numbers as `%g`, one-line text unquoted."""
    if isinstance(value, float):
        return f"{value:g}"
    one_line = isinstance(value, str) and "\n" not in value  # a policy's text is quoted, to stay on one line
    return value if one_line else json.dumps(value, separators=(",", ":"))


def format_values(values: dict[str, Any]) -> str:
    return "  ".join(f"{name}={format_value(value)}" for name, value in values.items())


def search_space_json_schema() -> dict:
    """The published JSON Schema of a search space (`freeze-policy schema --search`)."""
    return SearchSpace.model_json_schema()


def _document_error(err: pydantic.ValidationError) -> SearchSpaceError:
    """The first error, its key without the unions' tags."""
    _, reason = first_error(err)
    loc = tuple(part for part in err.errors()[0]["loc"] if not (isinstance(part, str) and part.startswith("<")))
    return SearchSpaceError(error_key(loc), reason)


def _policy_paths(document: Any, prefix: str) -> Iterator[str]:
    """Every path of a policy document `policy.<path>` can set (fields left unset included)."""
    items = document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) \
        else ()
    for key, child in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        yield path
        yield from _policy_paths(child, path)


def _check_key(name: str, policy_paths: set[str]) -> None:
    if name in _PER_RUN:
        if not _PER_RUN[name]:
            runs = ", ".join(parameter for parameter, per_run in _PER_RUN.items() if per_run)
            raise SearchSpaceError(f"hyperparameters.{name}", "a compile-time parameter (it shapes the pipeline);"
                                   f" a search varies per-run parameters: {runs}, or policy.<path>")
        return
    if name.startswith(POLICY_HYPERPARAMETER_PREFIX) and name.removeprefix(POLICY_HYPERPARAMETER_PREFIX) in policy_paths:
        return
    known = [*_PER_RUN, *(POLICY_HYPERPARAMETER_PREFIX + path for path in sorted(policy_paths))]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    where = f"; closest: {close[0]}" if close else (
        "; a search varies a trainer parameter or a policy field as `policy.<path>`, e.g. policy.batchnorm")
    raise SearchSpaceError(f"hyperparameters.{name}", f"unknown hyperparameter{where}")


def trial_config(base: dict[str, Any], values: dict[str, Any]) -> TrainerConfig:
    """The trainer configuration of one trial: the base parameters with the trial's values applied, as
    FreezeTrainer applies a `hyperparameters` artifact. Raises PolicyError or ConfigError."""
    return TrainerConfig.from_parameters(**apply_hyperparameters(base, values))


def _value_error(name: str, value: Any, err: PolicyError | ConfigError) -> SearchSpaceError:
    """`hyperparameters.<name>: value <value>: <reason>`, with the policy's or the table's key where it
    is another than the one searched."""
    reason = str(err).removeprefix("freeze policy: ")
    policy_path = name.removeprefix(POLICY_HYPERPARAMETER_PREFIX)
    searched = (name, error_key(tuple(int(part) if part.isdigit() else part for part in policy_path.split("."))))
    if err.key in searched:
        reason = reason.removeprefix(f"{err.key}: ")
    return SearchSpaceError(f"hyperparameters.{name}", f"value {format_value(value)}: {reason}")


def parse_search_space(text: str, base: dict[str, Any]) -> SearchSpace:
    """Parses a space from JSON or YAML text and checks its keys and every value against `base`, the
    trainer parameters (name -> value, None for the default; `freeze_policy` the base policy's text).
    Raises SearchSpaceError, and only that."""
    try:
        data = load_document(text, noun="search space")
    except PolicyError as err:
        raise SearchSpaceError(err.key, err.reason) from None
    if not isinstance(data, dict):
        raise SearchSpaceError("", f"the search space must be a mapping, got {type(data).__name__}")
    try:
        space = SearchSpace.model_validate(data)
    except pydantic.ValidationError as err:
        raise _document_error(err) from None
    base_policy = base.get("freeze_policy")
    try:
        policy = parse_policy(base_policy) if isinstance(base_policy, str) else base_policy or FROZEN_BASE_POLICY
    except PolicyError as err:
        raise SearchSpaceError("", f"the base {err}") from None
    policy_paths = set(_policy_paths(policy.model_dump(mode="json"), ""))
    for name in space.hyperparameters:
        _check_key(name, policy_paths)
        for value in space.checked_values(name):
            if name == "freeze_policy" and not isinstance(value, str):  # as the pipeline parameter: text
                raise SearchSpaceError(f"hyperparameters.{name}", f"value {format_value(value)}: a policy's JSON or"
                                       " YAML text (search a policy's fields as policy.<path>)")
            try:
                trial_config(base, {name: value})
            except (PolicyError, ConfigError) as err:
                raise _value_error(name, value, err) from None
    return space


def read_search_space(value: str, base: dict[str, Any]) -> SearchSpace:
    """`parse_search_space` of a command-line argument: a JSON/YAML file's path, or the space inline."""
    try:
        text = read_policy_source(value, noun="search space")
    except PolicyError as err:  # "search space: file x.yaml does not exist"
        raise SearchSpaceError(err.key, err.reason.removeprefix("search space ")) from None
    return parse_search_space(text, base)


def checked_search_text(value: str, base: dict[str, Any], input_shape: tuple[int, ...] | None,
                        max_trials: int | None = None, plan: bool = True) -> str:
    """A search space given as a file or inline (`read_search_space`), checked against `base` and, with
    `plan`, every combination planned (`plan_combinations`), as the JSON text a Tuner takes; `max_trials`
    overrides the space's. Raises SearchSpaceError, PolicyError, ConfigError and what building the base
    model raises for a bad weights file."""
    space = read_search_space(value, base)
    if max_trials:
        space = space.model_copy(update={"max_trials": max_trials})
    if plan:
        plan_combinations(space, base, input_shape)
    return json.dumps(space.model_dump(mode="json", exclude_none=True))


def plan_combinations(space: SearchSpace, base: dict[str, Any], input_shape: tuple[int, ...] | None,
                      num_classes: int = 2, models: dict | None = None) -> list[tuple[dict[str, Any], list]]:
    """Plans every value alone, then every combination, against the base model, without data: each
    combination with its phase plans. A value that fails alone is named by its key; a combination by its
    values. Imports TensorFlow and builds the model once per set of the parameters it depends on, kept in
    `models` (pass one dict to share them between calls with the same `input_shape` and `num_classes`)."""
    from freeze_trainer.keras.planning.freeze_plan import plan_policy
    from freeze_trainer.tfx.trainer_model import planning_model

    models = {} if models is None else models

    def plan(values: dict[str, Any]) -> list:
        config = trial_config(base, values)
        key = (*(getattr(config, name) for name in _MODEL_PARAMETERS), config.freeze_policy.bn_runs_in_inference_mode)
        if key not in models:
            models[key] = planning_model(config, input_shape, num_classes)
        return plan_policy(config.freeze_policy, models[key], config.learning_rate, config.epochs)

    for name in space.hyperparameters:
        for value in space.checked_values(name):
            try:
                plan({name: value})
            except (PolicyError, ConfigError) as err:
                raise _value_error(name, value, err) from None
    planned = []
    for number, values in enumerate(space.combinations(), start=1):
        try:
            planned.append((values, plan(values)))
        except (PolicyError, ConfigError) as err:
            raise SearchSpaceError("hyperparameters", f"combination {number} ({format_values(values)}):"
                                   f" {str(err).removeprefix('freeze policy: ')}") from None
    return planned

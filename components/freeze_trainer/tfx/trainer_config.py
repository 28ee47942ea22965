"""The trainer's parameters: one table, and the typed configuration validated from it.

`TrainerConfig`'s fields are the table. Each is declared once, with its type, default, one-line doc and
whether a pipeline run may override it (`per_run`) and whether only training reads it (`training_only`:
building the model does not). The component spec, the component's keyword
arguments and docstring, the executor, the local runner's options, `create_pipeline`, the Kubeflow
compile flags and the KFP/Vertex runtime parameters are all derived from it (`TRAINER_PARAMETERS`).

This module imports no TensorFlow, so command-line `--help` and policy checks stay fast.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator

from freeze_trainer.policy.freeze_policy import (
    FROZEN_BASE_POLICY,
    FreezePolicy,
    LearningRate,
    PolicyError,
    parse_policy,
)
from freeze_trainer.policy.validation import first_error

CUSTOM_CONFIG_KEY = "freeze_trainer"
CUSTOM_BACKBONE = "custom"  # any Keras model from a `.keras` file, or from a user module's `build_model`
# A hyperparameters file is a name -> value mapping (or KerasTuner's config of one): a few kB. The cap keeps a
# wrong path (a data file, a model) from being read whole.
MAX_HYPERPARAMETERS_BYTES = 1024 * 1024


def transformed_name(key: str) -> str:
    """The Transform output a raw feature becomes by default (the bundled `preprocessing_fn`'s naming)."""
    return f"{key}_xf"


class ConfigError(ValueError):
    """A bad trainer parameter other than the policy; `key` names the parameter."""

    def __init__(self, key: str, reason: str):
        self.key = key
        super().__init__(f"{key}: {reason}")


def _parameter(default: Any, doc: str, *, per_run: bool = True, training_only: bool = False):
    """A table row: `per_run=False` marks a compile-time parameter (fixed when a pipeline is compiled);
    `training_only=True` one that building the model does not read (a policy search's trials that differ
    only in such parameters train one built model)."""
    return Field(default, description=doc, json_schema_extra={"per_run": per_run, "training_only": training_only})


class TrainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    freeze_policy: FreezePolicy = _parameter(
        FROZEN_BASE_POLICY, "The freeze policy: JSON or YAML text (the language of `freeze-policy schema`)."
    )
    backbone: str = _parameter(
        "MobileNetV2",
        "A keras.applications architecture, or `custom`: any Keras model in a `.keras` `backbone_weights` file.",
        per_run=False,
    )
    backbone_weights: str = _parameter(
        "imagenet", "`imagenet`, `none`, a weights file, or a `.keras` backbone (local path or URI)."
    )
    backbone_alpha: Annotated[float, Field(gt=0.0, le=4.0, allow_inf_nan=False)] | None = _parameter(
        None, "Width multiplier of MobileNet backbones; unset: the architecture's default.", per_run=False
    )
    epochs: PositiveInt = _parameter(10, "Epochs of a phase that sets neither `epochs` nor `steps`.", training_only=True)
    learning_rate: LearningRate = _parameter(1e-2, "The head's learning rate where a phase sets none.",
                                              training_only=True)
    # 2**16 examples: past large-batch training's largest global batches; the bound keeps a typo (1e23) from
    # reaching the input pipeline, where it fails after the data is read.
    batch_size: Annotated[int, Field(ge=1, le=65536)] = _parameter(
        32, "Examples per training batch (global, across replicas).", training_only=True)
    dropout: float = _parameter(0.2, "Dropout rate before the new head's classifier.")
    # NumPy's and TensorFlow's seeds are unsigned 32-bit: -1 crashes the trainer at its first shuffle.
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = _parameter(0, "Seed of weight initialisation, shuffling and dropout.")
    training_loop: Literal["fit", "gradient_tape"] = _parameter("fit", "Keras `fit`, or a `tf.GradientTape` loop.",
                                                                 training_only=True)
    distribution: Literal["auto", "one_device", "mirrored", "multi_worker"] = _parameter(
        "auto", "The tf.distribute strategy; `auto` picks from TF_CONFIG and the local GPUs.", per_run=False
    )
    mixed_precision: Literal["none", "mixed_float16", "mixed_bfloat16"] = _parameter(
        "none", "Keras mixed-precision policy; the head's softmax stays float32."
    )
    jit_compile: bool = _parameter(False, "XLA-compile the forward and backward pass.", training_only=True)
    feature_cache: Literal["auto", "off"] = _parameter(
        "auto", "`auto` computes a phase's frozen, deterministic prefix once and trains only the rest on its outputs "
        "(the head on pooled features where the whole base is frozen); `off` never caches.", training_only=True
    )
    # Two of the cache's 64 MB pieces (the pooled features of ~26k examples at 1,280 floats); past that the
    # disk (page cache) serves them as fast here, and the trainer's memory stops growing with the data
    # (benchmarks/pipeline_scale.py).
    feature_cache_memory_mb: PositiveInt = _parameter(128, "Cached features beyond this many MB go to disk.",
                                                       training_only=True)
    checkpoint_every_steps: NonNegativeInt = _parameter(
        0, "Save a training checkpoint every N steps of a phase; 0: at every epoch's end.", training_only=True
    )
    feature_key: str = _parameter("image", "The raw feature the model reads (the bundled image Transform's input).",
                                  per_run=False)
    label_key: str = _parameter("label", "The raw label feature.", per_run=False)
    transformed_feature_key: str = _parameter(
        "",
        "The Transform output a one-input model takes (empty: `<feature_key>_xf`); several inputs read their own names.",
        per_run=False,
    )
    transformed_label_key: str = _parameter(
        "", "The Transform output holding the label; empty: `<label_key>_xf`.", per_run=False
    )
    label_vocabulary: str = _parameter(
        "", "The Transform vocabulary of the classes; empty: the one named like `label_key`, else integer labels.",
        per_run=False,
    )
    task: Literal["auto", "multiclass", "binary", "multi_label", "regression"] = _parameter(
        "auto", "`auto`: floats are regression, vectors multi_label, two classes binary, else multiclass.",
        per_run=False,
    )
    head_layers: str = _parameter(
        "", "Comma-separated names of the model's own head layers; empty: a new head for the task.", per_run=False
    )
    head_output: Literal["auto", "logits", "probabilities"] = _parameter(
        "auto", "What a classification head outputs; `auto`: logits when its last layer has no activation.",
        per_run=False,
    )

    @field_validator("dropout")
    @classmethod
    def _rate(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be in [0, 1)")
        return value

    @field_validator("feature_key", "label_key")
    @classmethod
    def _names_a_feature(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("empty; it names a feature of the examples")
        return name

    @field_validator("label_vocabulary")
    @classmethod
    def _vocabulary_name(cls, name: str) -> str:
        # The name of a file among the Transform output's assets: a path would read a file outside the run.
        if name and (name in (".", "..") or "/" in name or "\\" in name or "\0" in name):
            raise ValueError(f"{name!r} is a path; it names a Transform vocabulary (tft's vocab_filename)")
        return name

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        from freeze_trainer.keras.models.backbones import BACKBONES  # TensorFlow: only when a config is validated

        if name not in BACKBONES and name != CUSTOM_BACKBONE:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)} or {CUSTOM_BACKBONE!r}")
        return name

    @property
    def model_feature_key(self) -> str:
        return self.transformed_feature_key or transformed_name(self.feature_key)

    @property
    def model_label_key(self) -> str:
        return self.transformed_label_key or transformed_name(self.label_key)

    @property
    def head_layer_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.head_layers.split(",") if name.strip())

    @field_validator("freeze_policy", mode="before")
    @classmethod
    def _parse_policy_text(cls, value):
        return parse_policy(value) if isinstance(value, str) else value

    @classmethod
    def from_parameters(cls, **values) -> TrainerConfig:
        """Validates pipeline parameters; `None` means the default. The policy is parsed first so that
        its errors surface as PolicyError with the policy's own key path."""
        values = {key: value for key, value in values.items() if value is not None}
        if isinstance(values.get("freeze_policy"), str):
            values["freeze_policy"] = parse_policy(values["freeze_policy"])
        try:
            return cls.model_validate(values)
        except pydantic.ValidationError as err:
            raise ConfigError(*first_error(err)) from None

    def parameter_values(self) -> dict[str, Any]:
        """Every parameter as a pipeline value (the policy as canonical JSON, booleans as 0/1)."""
        return {parameter.name: parameter.pipeline_value(getattr(self, parameter.name)) for parameter in TRAINER_PARAMETERS}


@dataclass(frozen=True)
class TrainerParameter:
    """One row of the table, as the component spec, the runners and the compiler use it."""

    name: str
    annotation: Any
    default: Any
    doc: str
    per_run: bool
    training_only: bool

    @property
    def choices(self) -> tuple[str, ...] | None:
        return typing.get_args(self.annotation) if typing.get_origin(self.annotation) is Literal else None

    @property
    def pipeline_type(self) -> type:
        """The TFX ExecutionParameter / RuntimeParameter type: str, int or float (booleans travel as 0/1)."""
        if self.annotation is FreezePolicy or self.choices:
            return str
        for kind in (bool, int, float, str):
            if _admits(self.annotation, kind):
                return int if kind is bool else kind
        raise TypeError(f"{self.name}: no pipeline type for {self.annotation}")

    @property
    def is_flag(self) -> bool:
        return _admits(self.annotation, bool)

    def pipeline_value(self, value: Any) -> Any:
        if isinstance(value, FreezePolicy):
            return value.canonical_json()
        return int(value) if isinstance(value, bool) else value

    @property
    def pipeline_default(self) -> Any:
        return self.pipeline_value(self.default)


def _admits(annotation: Any, kind: type) -> bool:
    """Whether `annotation` (PositiveInt, `float | None`, ...) is, or holds, `kind`."""
    if annotation is kind or typing.get_origin(annotation) is typing.Annotated and typing.get_args(annotation)[0] is kind:
        return True
    return any(_admits(arg, kind) for arg in typing.get_args(annotation) if typing.get_origin(annotation) is not Literal)


TRAINER_PARAMETERS: tuple[TrainerParameter, ...] = tuple(
    TrainerParameter(
        name=name,
        annotation=field.rebuild_annotation(),
        default=field.default,
        doc=field.description,
        per_run=field.json_schema_extra["per_run"],
        training_only=field.json_schema_extra["training_only"],
    )
    for name, field in TrainerConfig.model_fields.items()
)
TRAINER_PARAMETER_NAMES = tuple(parameter.name for parameter in TRAINER_PARAMETERS)
_COMPILE_TIME = tuple(parameter.name for parameter in TRAINER_PARAMETERS if not parameter.per_run)


def check_parameter_names(component: str, names) -> None:
    """A component's keyword arguments beyond its own are trainer parameters: any other name is a
    TypeError, as Python's own for an unexpected keyword argument."""
    unknown = sorted(set(names) - set(TRAINER_PARAMETER_NAMES))
    if unknown:
        raise TypeError(f"{component} got unknown parameter(s) {unknown}; it takes {list(TRAINER_PARAMETER_NAMES)}")


def check_literal_parameters(**values) -> None:
    """What `FreezeTrainer(...)` checks when the pipeline is defined: the parameters given as plain values,
    validated as `TrainerConfig.from_parameters` does, with the defaults for the rest, and a local
    `backbone_weights` file (`keras.backbones.weights_refusal`: it exists; a `.keras` file names only
    allowed classes). A RuntimeParameter or placeholder is left to the executor, when the run starts.
    Raises PolicyError or ConfigError naming the parameter."""
    literal = {key: value for key, value in values.items() if isinstance(value, (str, int, float))}
    config = TrainerConfig.from_parameters(**literal)
    if "backbone_weights" in literal:
        from freeze_trainer.keras.models.backbones import weights_refusal  # TensorFlow, as the backbone validator

        refusal = weights_refusal(config.backbone_weights)
        if refusal:
            raise ConfigError("backbone_weights", refusal)


POLICY_HYPERPARAMETER_PREFIX = "policy."


def apply_hyperparameters(values: dict[str, Any], hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """`values` (parameter name -> value, None for the default) with the Tuner's `hyperparameters` applied:
    a name of the table overrides that parameter; `policy.<path>` a policy field, e.g.
    `policy.phases.1.learning_rate`. Other names are the user model's own (`model_hyperparameters`)."""
    values = dict(values)
    policy_fields = {}
    for name, value in hyperparameters.items():
        if name in TRAINER_PARAMETER_NAMES:
            values[name] = value
        elif name.startswith(POLICY_HYPERPARAMETER_PREFIX):
            policy_fields[name.removeprefix(POLICY_HYPERPARAMETER_PREFIX)] = value
    if policy_fields:
        source = values.get("freeze_policy")
        policy = parse_policy(source) if isinstance(source, str) else (source or FROZEN_BASE_POLICY)
        document = policy.model_dump(mode="json", exclude_none=True)
        for path, value in policy_fields.items():
            _set_path(document, path, value)
        values["freeze_policy"] = json.dumps(document)
    return values


def hyperparameter_values(document: dict[str, Any] | None) -> dict[str, Any]:
    """The name -> value mapping of a hyperparameters document: KerasTuner's `HyperParameters.get_config()`
    (what TFX's Tuner writes), or a plain mapping (an Importer's file); {} without one."""
    document = document or {}
    return dict(document.get("values", document))


def model_hyperparameters(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters `apply_hyperparameters` leaves alone, the user model's own: what a module's
    `build_model(config, contract, hyperparameters)` receives (a Tuner's `num_layers`, say)."""
    return {name: value for name, value in hyperparameters.items()
            if name not in TRAINER_PARAMETER_NAMES and not name.startswith(POLICY_HYPERPARAMETER_PREFIX)}


def read_hyperparameters_text(text: str, source: str) -> dict[str, Any]:
    """The name -> value mapping of a hyperparameters file's text (`hyperparameter_values`); `source` names
    the file in errors. Raises ConfigError (key `hyperparameters`) for text that is not such a mapping."""
    try:
        document = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except ValueError as err:
        raise ConfigError("hyperparameters", f"{source} is not JSON: {err}") from None
    if not isinstance(document, dict) or not isinstance(document.get("values", document), dict):
        raise ConfigError("hyperparameters", f"{source} holds no name -> value mapping")
    return hyperparameter_values(document)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a finite number")


def _finite(text: str) -> float:
    """A JSON number as a float; 1e999 reads as infinity, which would train to NaN."""
    if not math.isfinite(value := float(text)):
        raise ValueError(f"{text} is not a finite number")
    return value


def read_hyperparameters_file(path: str) -> dict[str, Any]:
    """`read_hyperparameters_text` of a local file, refused unread when larger than MAX_HYPERPARAMETERS_BYTES."""
    try:
        if os.path.getsize(path) > MAX_HYPERPARAMETERS_BYTES:
            raise ConfigError("hyperparameters", f"{path} is larger than {MAX_HYPERPARAMETERS_BYTES} bytes")
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as err:
        raise ConfigError("hyperparameters", f"{path}: {err.strerror or err}") from None
    return read_hyperparameters_text(text, path)


def config_with_hyperparameters(values: dict[str, Any], hyperparameters: dict[str, Any],
                                user_model: bool = False) -> TrainerConfig:
    """`TrainerConfig.from_parameters` of `values` with `hyperparameters` applied, each checked first: a
    table name must be a per-run parameter (a compile-time one, `backbone` say, shapes the pipeline and
    would be recorded without having taken effect), its value typed and bounded by the table; other names
    are the user model's own only with `user_model` (a module whose `build_model` or `run_fn` reads them),
    and otherwise refused with the closest name. Raises ConfigError or PolicyError naming the hyperparameter."""
    for name in hyperparameters:
        if name in _COMPILE_TIME:
            raise ConfigError(f"hyperparameters.{name}", "a compile-time parameter (it shapes the pipeline); a "
                              "hyperparameter may change only per-run parameters and policy.<path> fields")
        if name not in TRAINER_PARAMETER_NAMES and not name.startswith(POLICY_HYPERPARAMETER_PREFIX) and not user_model:
            close = difflib.get_close_matches(name, TRAINER_PARAMETER_NAMES, n=1, cutoff=0.6)
            hint = f"; closest: {close[0]}" if close else (
                "; a hyperparameter names a per-run trainer parameter or a policy field as policy.<path> (a "
                "model's own names need a trainer module that reads them)")
            raise ConfigError(f"hyperparameters.{name}", f"unknown hyperparameter{hint}")
    try:
        return TrainerConfig.from_parameters(**apply_hyperparameters(values, hyperparameters))
    except ConfigError as err:
        if err.key in hyperparameters:
            raise ConfigError(f"hyperparameters.{err.key}",
                              f"value {hyperparameters[err.key]!r}: {str(err).removeprefix(err.key + ': ')}") from None
        raise


def _set_path(document: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = document
    try:
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value
    except (KeyError, IndexError, ValueError, TypeError):
        raise PolicyError(path, f"hyperparameter {POLICY_HYPERPARAMETER_PREFIX}{path} names no field of the policy") from None


def parameter_table_markdown() -> str:
    """The table as the README shows it (`tests/test_package_layers.py` keeps the README in step)."""
    rows = ["| parameter | type | default | set | what it is |", "| --- | --- | --- | --- | --- |"]
    for p in TRAINER_PARAMETERS:
        default = "frozen base" if p.name == "freeze_policy" else p.pipeline_default if p.pipeline_default != "" else '""'
        rows.append(f"| `{p.name}` | {p.pipeline_type.__name__} | `{default}` | "
                    f"{'per run' if p.per_run else 'compile time'} | {p.doc} |")
    return "\n".join(rows) + "\n"

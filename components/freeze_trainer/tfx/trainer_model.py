"""The model a `TrainerConfig` describes, and its plan: what the executor, the local runner's start-up check
and `freeze-policy plan` build, without reading any data.

Three sources of a model:
- a keras.applications architecture (`backbone`), with `imagenet`, random, or a weights or `.keras` file,
  under a new head for the task;
- any Keras model in a `.keras` file (`backbone: custom`), used as the pretrained base under a new head,
  or, when `head_layers` names its own head layers, as the whole model;
- a user module's `build_model(config, contract[, hyperparameters])` hook, or a model a user `run_fn`
  passes: a base under a new head, or, with `head_layers`, the whole model.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import replace
from typing import Any, Callable

import tensorflow as tf

from freeze_trainer.keras.models.backbones import BackboneError, build_backbone
from freeze_trainer.keras.models.classifier_model import (
    HEAD_LAYER_NAMES, HeadError, backbone_of, build_classifier, declare_head, has_head, head_layer_names,
)
from freeze_trainer.keras.planning.freeze_plan import PhasePlan, plan_policy
from freeze_trainer.keras.models.tasks import MULTICLASS, Task
from freeze_trainer.tfx.data_contract import DataContract, Shape, model_inputs
from freeze_trainer.policy import PolicyError
from freeze_trainer.tfx.trainer_config import CUSTOM_BACKBONE, ConfigError, TrainerConfig

BuildModel = Callable[..., tf.keras.Model]

# What a wrong parameter, policy or model raises, at planning or once the data is read: the callers (the
# local runner, the CLI, the Kubeflow submission) print it as one line, without a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (PolicyError, ConfigError, BackboneError, HeadError)


def build_from_config(
    config: TrainerConfig,
    contract: DataContract,
    build_model: BuildModel | None = None,
    given: tf.keras.Model | None = None,
    hyperparameters: dict[str, Any] | None = None,
) -> tf.keras.Model:
    """The model to train: `given`, or what `build_model` returns (`call_build_model`), or the configured
    backbone; with a new head for the contract's task unless `head_layers` names the model's own or it has
    a head already (built with `build_classifier`)."""
    if given is not None:
        base = given
    elif build_model is not None:
        base = call_build_model(build_model, config, contract, hyperparameters or {})
    else:
        architecture = None if config.backbone == CUSTOM_BACKBONE else config.backbone
        # A `.keras` base keeps its own inputs: `bind_inputs` checks them against the data, every one by name.
        base = build_backbone(architecture, config.backbone_weights, architecture and contract.input_shape,
                              config.backbone_alpha)
    if config.head_layer_names:
        return declare_head(base, config.head_layer_names)
    if has_head(base):  # a model built with build_classifier, or with its head declared already
        return base
    return build_classifier(
        base,
        None if config.backbone == CUSTOM_BACKBONE or build_model or given else config.backbone,
        contract.num_classes,
        bn_inference_mode=config.freeze_policy.bn_runs_in_inference_mode,
        dropout=config.dropout,
        input_name=contract.feature_key,
        task=Task(contract.task.name, "logits" if config.head_output == "logits" else "probabilities"),
    )


def bind_inputs(config: TrainerConfig, contract: DataContract, model: tf.keras.Model,
                from_module: bool = False) -> DataContract:
    """The contract with `inputs`, the feature each of the model's inputs reads (`model_inputs`); a
    missing or mis-shaped one raises ConfigError keyed by the parameter the model comes from."""
    parameter = ("module_file" if from_module else "backbone_weights" if config.backbone == CUSTOM_BACKBONE
                 else "backbone")
    return replace(contract, inputs=model_inputs(contract, model, parameter))


def call_build_model(build_model: BuildModel, config: TrainerConfig, contract: DataContract,
                     hyperparameters: dict[str, Any]) -> tf.keras.Model:
    """`build_model(config=..., contract=..., hyperparameters=...)`: the model's own hyperparameters
    (`trainer_config.model_hyperparameters`) go to a function that takes a `hyperparameters` argument (or
    `**kwargs`); the original two-argument form gets only the config and the contract."""
    parameters = inspect.signature(build_model).parameters.values()
    takes = any(p.name == "hyperparameters" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    model = build_model(config=config, contract=contract, **({"hyperparameters": hyperparameters} if takes else {}))
    if not isinstance(model, tf.keras.Model):
        raise ConfigError("trainer_module", f"build_model returned {type(model).__name__} {model!r:.40}, not a Keras "
                                            "model")
    return model


def base_model_name(model: tf.keras.Model) -> str:
    """The base's own Keras name: the model a new head wraps (`build_classifier`), else the model's own (one
    whose head `head_layers` declares)."""
    if head_layer_names(model) == HEAD_LAYER_NAMES:
        with contextlib.suppress(ValueError):  # not one nested model: the model is the base's only name
            return backbone_of(model).name
    return model.name


def planning_contract(input_shape: tuple[int, ...] | None, num_classes: int = 2, task: Task = MULTICLASS,
                      features: dict[str, Shape] | None = None, feature_key: str = "features") -> DataContract:
    """A stand-in contract for planning without examples: only the shapes and the task matter to a plan.
    `features`, where known (the Transform's outputs), are the examples' features, else `feature_key`
    with `input_shape` (none without a shape)."""
    if features is None:
        features = {feature_key: tuple(input_shape)} if input_shape else {}
    return DataContract(feature_key, "label", features, task, num_classes, None, None)


def planning_model(config: TrainerConfig, input_shape: tuple[int, ...] | None, num_classes: int = 2,
                   build_model: BuildModel | None = None, features: dict[str, Shape] | None = None,
                   hyperparameters: dict[str, Any] | None = None) -> tf.keras.Model:
    """The model a plan resolves against, without data or downloads: the backbone is built with random
    weights for `imagenet` (a download), and with the given file otherwise, so that a weights file
    that does not fit fails here rather than after the data is processed; `build_model` (a user
    module's hook, given the model's own `hyperparameters`) builds the model instead. With `features`
    (the Transform's outputs and their shapes, where known before the pipeline runs), the model's inputs
    are checked against them too."""
    weights = "none" if config.backbone_weights.lower() == "imagenet" else config.backbone_weights
    config = config.model_copy(update={"backbone_weights": weights})
    contract = planning_contract(input_shape, num_classes, features=features,
                                 feature_key=config.model_feature_key if features is not None else "features")
    model = build_from_config(config, contract, build_model=build_model, hyperparameters=hyperparameters)
    if features is not None:
        bind_inputs(config, contract, model, from_module=build_model is not None)
    return model


def plan_for_config(config: TrainerConfig, input_shape: tuple[int, ...] | None, num_classes: int = 2,
                    build_model: BuildModel | None = None, features: dict[str, Shape] | None = None,
                    hyperparameters: dict[str, Any] | None = None) -> list[PhasePlan]:
    """Plans a trainer configuration without data or downloads, on its `planning_model`."""
    model = planning_model(config, input_shape, num_classes, build_model, features, hyperparameters)
    return plan_policy(config.freeze_policy, model, config.learning_rate, config.epochs)

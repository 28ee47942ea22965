"""The model a `TrainerConfig` describes, and its plan: what the executor, the local runner's start-up check
and `freeze-policy plan` build, without reading any data.

Three sources of a model:
- a keras.applications architecture (`backbone`), with `imagenet`, random, or a weights or `.keras` file,
  under a new head for the task;
- any Keras model in a `.keras` file (`backbone: custom`), used as the pretrained base under a new head,
  or, when `head_layers` names its own head layers, as the whole model;
- a user module's `build_model(config, contract)` hook, or a model a user `run_fn` passes: a base under a
  new head, or, with `head_layers`, the whole model.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from freeze_trainer.keras.backbones import build_backbone
from freeze_trainer.keras.classifier_model import build_classifier, declare_head, has_head
from freeze_trainer.keras.freeze_plan import PhasePlan, plan_policy
from freeze_trainer.keras.tasks import MULTICLASS, Task
from freeze_trainer.tfx.data_contract import DataContract
from freeze_trainer.tfx.trainer_config import CUSTOM_BACKBONE, TrainerConfig

BuildModel = Callable[..., tf.keras.Model]


def build_from_config(
    config: TrainerConfig,
    contract: DataContract,
    build_model: BuildModel | None = None,
    given: tf.keras.Model | None = None,
) -> tf.keras.Model:
    """The model to train: `given`, or what `build_model(config=..., contract=...)` returns, or the
    configured backbone; with a new head for the contract's task unless `head_layers` names the model's own
    or it has a head already (built with `build_classifier`)."""
    if given is not None:
        base = given
    elif build_model is not None:
        base = build_model(config=config, contract=contract)
    else:
        architecture = None if config.backbone == CUSTOM_BACKBONE else config.backbone
        base = build_backbone(architecture, config.backbone_weights, contract.input_shape, config.backbone_alpha)
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


def planning_contract(input_shape: tuple[int, ...] | None, num_classes: int = 2, task: Task = MULTICLASS) -> DataContract:
    """A stand-in contract for planning without data: only the shapes and the task matter to a plan."""
    return DataContract("features", "label", input_shape and tuple(input_shape), task, num_classes, None, None)


def planning_model(config: TrainerConfig, input_shape: tuple[int, ...] | None, num_classes: int = 2,
                   build_model: BuildModel | None = None) -> tf.keras.Model:
    """The model a plan is made on, without data or downloads: the backbone is built with random weights
    for `imagenet` (a download), and with the given file otherwise, so that a weights file that does not
    fit fails here rather than after the data is processed; `build_model` (a user module's hook) builds
    the model instead."""
    weights = "none" if config.backbone_weights.lower() == "imagenet" else config.backbone_weights
    if config.backbone == CUSTOM_BACKBONE:  # the model file's own input, whatever the data's shape
        input_shape = None
    return build_from_config(config.model_copy(update={"backbone_weights": weights}),
                             planning_contract(input_shape, num_classes), build_model=build_model)


def plan_for_config(config: TrainerConfig, input_shape: tuple[int, ...] | None, num_classes: int = 2,
                    build_model: BuildModel | None = None) -> list[PhasePlan]:
    """Plans a trainer configuration without data or downloads, on its `planning_model`."""
    model = planning_model(config, input_shape, num_classes, build_model)
    return plan_policy(config.freeze_policy, model, config.learning_rate, config.epochs)

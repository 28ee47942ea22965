"""The classifier a `TrainerConfig` describes, and its plan: what the executor, the local runner's start-up
check and `freeze-policy plan` build, without reading any data."""

from __future__ import annotations

import tensorflow as tf

from freeze_trainer.keras.backbones import build_backbone, is_saved_backbone
from freeze_trainer.keras.classifier_model import build_classifier
from freeze_trainer.keras.freeze_plan import PhasePlan, plan_policy
from freeze_trainer.tfx.image_transform import IMAGE_KEY, transformed_name
from freeze_trainer.tfx.trainer_config import TrainerConfig


def build_from_config(config: TrainerConfig, input_shape: tuple[int, int, int], num_classes: int) -> tf.keras.Model:
    """The classifier a `TrainerConfig` describes; its input is named after the transformed image feature."""
    backbone = build_backbone(config.backbone, config.backbone_weights, input_shape, config.backbone_alpha)
    return build_classifier(
        backbone,
        config.backbone,
        num_classes,
        bn_inference_mode=config.freeze_policy.bn_runs_in_inference_mode,
        dropout=config.dropout,
        input_name=transformed_name(IMAGE_KEY),
    )


def plan_for_config(config: TrainerConfig, input_shape: tuple[int, int, int], num_classes: int = 2) -> list[PhasePlan]:
    """Plans a trainer configuration without data or downloads: the backbone is built with random
    weights unless it is a saved `.keras` backbone, whose own architecture is the one that matters."""
    weights = config.backbone_weights if is_saved_backbone(config.backbone_weights) else "none"
    model = build_from_config(config.model_copy(update={"backbone_weights": weights}), input_shape, num_classes)
    return plan_policy(config.freeze_policy, model, config.learning_rate, config.epochs)

"""FreezeTrainer: a TFX Trainer whose freeze policy is a first-class, top-level pipeline parameter.

`freeze_policy` and the training knobs are top-level execution parameters rather than entries of
`custom_config`, because Kubeflow Pipelines v2 substitutes a `RuntimeParameter` only at the top
level. The inputs, outputs and user-module handling are those of TFX's own Trainer.
"""

from __future__ import annotations

from typing import Any

from tfx import types
from tfx.components.util import udf_utils
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import trainer_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils

from components.freeze_trainer.executor import Executor

FREEZE_POLICY_KEY = "freeze_policy"
TRAINING_PARAMETERS = {
    FREEZE_POLICY_KEY: ExecutionParameter(type=str),
    "backbone": ExecutionParameter(type=str),
    "backbone_weights": ExecutionParameter(type=str),
    "backbone_alpha": ExecutionParameter(type=float, optional=True),
    "epochs": ExecutionParameter(type=int, optional=True),
    "learning_rate": ExecutionParameter(type=float, optional=True),
    "batch_size": ExecutionParameter(type=int, optional=True),
    "training_loop": ExecutionParameter(type=str, optional=True),
    "distribution": ExecutionParameter(type=str, optional=True),
    "mixed_precision": ExecutionParameter(type=str, optional=True),
    "jit_compile": ExecutionParameter(type=int, optional=True),
    "feature_cache": ExecutionParameter(type=str, optional=True),
    "feature_cache_memory_mb": ExecutionParameter(type=int, optional=True),
    "checkpoint_every_steps": ExecutionParameter(type=int, optional=True),
}


class FreezeTrainerSpec(standard_component_specs.TrainerSpec):
    PARAMETERS = {**standard_component_specs.TrainerSpec.PARAMETERS, **TRAINING_PARAMETERS}


class FreezeTrainer(base_component.BaseComponent):
    """Fine-tunes a keras.applications backbone under a freeze policy; outputs `Model` and `ModelRun`.

    Without `module_file` or `run_fn` it trains the standard image classifier (backbone, pooling,
    dropout, softmax) on the Transform output of `image_transform.preprocessing_fn`.
    """

    SPEC_CLASS = FreezeTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(
        self,
        examples: types.BaseChannel,
        transform_graph: types.BaseChannel,
        freeze_policy: Any,
        backbone: Any = "MobileNetV2",
        backbone_weights: Any = "imagenet",
        backbone_alpha: Any = None,
        epochs: Any = None,
        learning_rate: Any = None,
        batch_size: Any = None,
        training_loop: Any = None,
        distribution: Any = None,
        mixed_precision: Any = None,
        jit_compile: Any = None,
        feature_cache: Any = None,
        feature_cache_memory_mb: Any = None,
        checkpoint_every_steps: Any = None,
        schema: types.BaseChannel | None = None,
        base_model: types.BaseChannel | None = None,
        hyperparameters: types.BaseChannel | None = None,
        train_args: trainer_pb2.TrainArgs | None = None,
        eval_args: trainer_pb2.EvalArgs | None = None,
        module_file: str | None = None,
        run_fn: str | None = None,
        custom_config: dict | None = None,
    ):
        if module_file and run_fn:
            raise ValueError("FreezeTrainer takes at most one of `module_file` and `run_fn`.")
        spec = FreezeTrainerSpec(
            examples=examples,
            transform_graph=transform_graph,
            schema=schema,
            base_model=base_model,
            hyperparameters=hyperparameters,
            train_args=train_args or trainer_pb2.TrainArgs(),
            eval_args=eval_args or trainer_pb2.EvalArgs(),
            module_file=module_file,
            run_fn=run_fn,
            custom_config=json_utils.dumps(custom_config),
            freeze_policy=freeze_policy,
            backbone=backbone,
            backbone_weights=backbone_weights,
            backbone_alpha=backbone_alpha,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            training_loop=training_loop,
            distribution=distribution,
            mixed_precision=mixed_precision,
            jit_compile=jit_compile,
            feature_cache=feature_cache,
            feature_cache_memory_mb=feature_cache_memory_mb,
            checkpoint_every_steps=checkpoint_every_steps,
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun),
        )
        super().__init__(spec=spec)
        if module_file and udf_utils.should_package_user_modules():
            udf_utils.add_user_module_dependency(
                self, standard_component_specs.MODULE_FILE_KEY, standard_component_specs.MODULE_PATH_KEY
            )

"""FreezeTrainer: a TFX Trainer whose freeze policy is a first-class, top-level pipeline parameter.

The training parameters are top-level execution parameters rather than entries of `custom_config`,
because Kubeflow Pipelines v2 substitutes a `RuntimeParameter` only at the top level. They come from the
one parameter table (`trainer_config.TRAINER_PARAMETERS`). The inputs, outputs and user-module handling
are those of TFX's own Trainer.
"""

from __future__ import annotations

import inspect

from tfx import types
from tfx.components.util import udf_utils
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import trainer_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import json_utils

from freeze_trainer.policy import FROZEN_BASE_POLICY
from freeze_trainer.tfx.executor import Executor
from freeze_trainer.tfx.search_report import TUNER_RESULTS_KEY
from freeze_trainer.tfx.trainer_config import TRAINER_PARAMETERS, check_literal_parameters, check_parameter_names


# The table's parameters as top-level execution parameters (FreezeTrainer's, and FreezeTuner's: its trials
# train as the trainer does).
TRAINER_EXECUTION_PARAMETERS = {
    parameter.name: ExecutionParameter(type=parameter.pipeline_type, optional=parameter.name != "freeze_policy")
    for parameter in TRAINER_PARAMETERS
}


class FreezeTrainerSpec(standard_component_specs.TrainerSpec):
    PARAMETERS = {**standard_component_specs.TrainerSpec.PARAMETERS, **TRAINER_EXECUTION_PARAMETERS}
    INPUTS = {
        **standard_component_specs.TrainerSpec.INPUTS,
        # A policy search's trials (FreezeTuner's `tuner_results`, holding `trials.json`), for the run report.
        TUNER_RESULTS_KEY: ChannelParameter(type=standard_artifacts.TunerResults, optional=True),
    }


class FreezeTrainer(base_component.BaseComponent):
    """Fine-tunes a pretrained Keras base under a freeze policy; outputs `Model` and `ModelRun`.

    Without `module_file` or `run_fn` it trains the standard image classifier (base, pooling, dropout,
    softmax) on the Transform output of `freeze_trainer.tfx.image_transform.preprocessing_fn`.

    Args:
      examples: A `BaseChannel` of `Examples`, usually Transform's `transformed_examples`.
      transform_graph: An optional `BaseChannel` of `TransformGraph`. Without one the trainer reads raw
        examples (the preprocessing lives in the user's model) and needs `schema`.
      freeze_policy: The policy as JSON/YAML text, or a `RuntimeParameter` of type str; None: the
        frozen-base policy.
      schema: An optional `BaseChannel` of `Schema`.
      base_model: An optional `BaseChannel` of `Model` to warm-start from (retraining).
      hyperparameters: An optional `BaseChannel` of `HyperParameters`.
      train_args: `trainer_pb2.TrainArgs`.
      eval_args: `trainer_pb2.EvalArgs`.
      module_file: A user module file holding `run_fn`; at most one of `module_file` and `run_fn`.
      run_fn: The dotted path of a user `run_fn`.
      custom_config: A dict passed to `run_fn` as `fn_args.custom_config`.
      tuner_results: An optional `BaseChannel` of `TunerResults`: a FreezeTuner's, whose trials the run
        report shows (the search that made `hyperparameters`).
      **training_parameters: Any of the trainer parameters below, each a value or a `RuntimeParameter`;
        unset ones take the default.

    Raises:
      PolicyError, ConfigError: a parameter given as a value is invalid (one "key: reason" line): a policy
        error, a value out of its choices or bounds, a local `backbone_weights` file that does not exist or
        whose `.keras` config names a class that is not allowed. RuntimeParameters are checked when the run
        starts.
    """

    SPEC_CLASS = FreezeTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(
        self,
        examples: types.BaseChannel,
        transform_graph: types.BaseChannel | None = None,
        freeze_policy=None,
        schema: types.BaseChannel | None = None,
        base_model: types.BaseChannel | None = None,
        hyperparameters: types.BaseChannel | None = None,
        train_args: trainer_pb2.TrainArgs | None = None,
        eval_args: trainer_pb2.EvalArgs | None = None,
        module_file: str | None = None,
        run_fn: str | None = None,
        custom_config: dict | None = None,
        tuner_results: types.BaseChannel | None = None,
        **training_parameters,
    ):
        if module_file and run_fn:
            raise ValueError("FreezeTrainer takes at most one of `module_file` and `run_fn`.")
        check_parameter_names("FreezeTrainer", training_parameters)
        # A bad value fails here, where the pipeline is defined; RuntimeParameters when the run starts.
        check_literal_parameters(freeze_policy=freeze_policy, **training_parameters)
        spec = FreezeTrainerSpec(
            examples=examples,
            transform_graph=transform_graph,
            schema=schema,
            base_model=base_model,
            hyperparameters=hyperparameters,
            tuner_results=tuner_results,
            train_args=train_args or trainer_pb2.TrainArgs(),
            eval_args=eval_args or trainer_pb2.EvalArgs(),
            module_file=module_file,
            run_fn=run_fn,
            custom_config=json_utils.dumps(custom_config),
            freeze_policy=freeze_policy if freeze_policy is not None else FROZEN_BASE_POLICY.canonical_json(),
            **training_parameters,
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun),
        )
        super().__init__(spec=spec)
        if module_file and udf_utils.should_package_user_modules():
            udf_utils.add_user_module_dependency(
                self, standard_component_specs.MODULE_FILE_KEY, standard_component_specs.MODULE_PATH_KEY
            )


def _document_parameters() -> None:
    """The table's parameters as keyword-only arguments of `FreezeTrainer(...)` (for help() and IDEs) and
    as its docstring's trainer-parameter list."""
    init = FreezeTrainer.__init__
    signature = inspect.signature(init)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    table = [
        inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default)
        for p in TRAINER_PARAMETERS
        if p.name != "freeze_policy"
    ]
    init.__signature__ = signature.replace(parameters=[*fixed, *table])
    lines = [f"      {p.name} ({p.pipeline_type.__name__}, default {p.pipeline_default!r}): {p.doc}"
             for p in TRAINER_PARAMETERS if p.name != "freeze_policy"]
    FreezeTrainer.__doc__ += "\n    Trainer parameters:\n" + "\n".join(lines) + "\n"


_document_parameters()

"""FreezeTuner: TFX's Tuner running the freeze-aware policy search, its inputs as pipeline parameters.

TFX's stock Tuner takes the search space and FreezeTrainer's parameters only inside `custom_config`
(tuner.py), where Kubeflow Pipelines v2 substitutes no RuntimeParameter. FreezeTuner is that Tuner (TFX's
TunerSpec, inputs, outputs, `tuner_fn` and search loop) with the trainer's parameters as top-level
execution parameters, from the one parameter table as FreezeTrainer has them, and with `search_space`, the
space's text, as one more: a compiled pipeline makes each a pipeline parameter, so a run searches another
space, or the same one with another policy, without recompiling.

Its executor also keeps the trials where a person and FreezeTrainer find them: `trials.json` (every
trial's values, objective, seconds, reused and trained phases) in the `tuner_results` output, beside TFX's
own `tuner_results.json`. Without a search folder of the runner's (`search_dir`, where a rerun resumes),
KerasTuner's oracle state goes there too. The trainer takes `tuner_results` to show the trials in its run
report; they cannot travel beside `best_hyperparameters.txt`, since TFX reads that folder's only file.
"""

from __future__ import annotations

import os
from typing import Any

from tfx import types
from tfx.components.tuner import executor as tuner_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils

from freeze_trainer.policy import FROZEN_BASE_POLICY
from freeze_trainer.tfx.component import TRAINER_EXECUTION_PARAMETERS, TUNER_RESULTS_KEY
from freeze_trainer.tfx.trainer_config import TRAINER_PARAMETER_NAMES, check_parameter_names
from freeze_trainer.tfx.search_report import TRIALS_FILE
from freeze_trainer.tfx.tuner import SEARCH_DIR_KEY, SEARCH_SPACE_KEY, TRAINER_PARAMETERS_KEY

SEARCH_SPACE_PARAMETER = "search_space"
TUNER_FN = "freeze_trainer.tfx.tuner.tuner_fn"
_CUSTOM_CONFIG_KEY = standard_component_specs.CUSTOM_CONFIG_KEY


class FreezeTunerSpec(standard_component_specs.TunerSpec):
    PARAMETERS = {
        **standard_component_specs.TunerSpec.PARAMETERS,
        **TRAINER_EXECUTION_PARAMETERS,
        SEARCH_SPACE_PARAMETER: ExecutionParameter(type=str),
    }


def search_properties(exec_properties: dict[str, Any], results_dir: str) -> dict[str, Any]:
    """The stock Tuner's execution properties for `tuner_fn`: the space and the trainer's parameters in
    `custom_config`, and the oracle's state in `results_dir` unless the runner named a search folder."""
    custom_config = json_utils.loads(exec_properties.get(_CUSTOM_CONFIG_KEY) or "null") or {}
    custom_config[SEARCH_SPACE_KEY] = exec_properties[SEARCH_SPACE_PARAMETER]
    custom_config[TRAINER_PARAMETERS_KEY] = {name: exec_properties[name] for name in TRAINER_PARAMETER_NAMES
                                             if exec_properties.get(name) is not None}
    custom_config.setdefault(SEARCH_DIR_KEY, results_dir)
    return {**exec_properties, _CUSTOM_CONFIG_KEY: json_utils.dumps(custom_config)}


class Executor(tuner_executor.Executor):
    """TFX's Tuner executor, given the space and parameters as `tuner_fn` reads them; keeps `trials.json`."""

    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        results_dir = artifact_utils.get_single_uri(output_dict[TUNER_RESULTS_KEY])
        tuner = tuner_executor.search(input_dict, search_properties(exec_properties, results_dir),
                                      self._get_tmp_dir())
        tuner_executor.write_best_hyperparameters(tuner, output_dict)
        if fileio.exists(tuner.records_path):
            fileio.copy(tuner.records_path, os.path.join(results_dir, TRIALS_FILE), overwrite=True)


class FreezeTuner(base_component.BaseComponent):
    """A policy search before FreezeTrainer: outputs `best_hyperparameters` (for the trainer's
    `hyperparameters`) and `tuner_results` (TFX's `tuner_results.json` and `trials.json`, for the trainer's
    `tuner_results`).

    Args:
      examples, transform_graph, schema: as FreezeTrainer's.
      search_space: The space's YAML or JSON text (tfx/search_space.py), or a `RuntimeParameter` of type str.
      search_dir: A folder that outlives the execution, for the oracle's state: a search rerun there with
        the same space and parameters resumes its finished trials. Default: the `tuner_results` output.
      train_args, eval_args: as FreezeTrainer's (each trial trains as it would).
      freeze_policy, **training_parameters: FreezeTrainer's parameters, values or RuntimeParameters: the
        base every trial's values apply to.
    """

    SPEC_CLASS = FreezeTunerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples: types.BaseChannel, search_space, transform_graph: types.BaseChannel | None = None,
                 schema: types.BaseChannel | None = None, search_dir: str | None = None,
                 train_args: trainer_pb2.TrainArgs | None = None, eval_args: trainer_pb2.EvalArgs | None = None,
                 freeze_policy=None, **training_parameters):
        check_parameter_names("FreezeTuner", training_parameters)
        spec = FreezeTunerSpec(
            examples=examples,
            transform_graph=transform_graph,
            schema=schema,
            tuner_fn=TUNER_FN,
            train_args=train_args or trainer_pb2.TrainArgs(),
            eval_args=eval_args or trainer_pb2.EvalArgs(),
            custom_config=json_utils.dumps({SEARCH_DIR_KEY: search_dir} if search_dir else None),
            search_space=search_space,
            freeze_policy=freeze_policy if freeze_policy is not None else FROZEN_BASE_POLICY.canonical_json(),
            **training_parameters,
            best_hyperparameters=types.Channel(type=standard_artifacts.HyperParameters),
            tuner_results=types.Channel(type=standard_artifacts.TunerResults),
        )
        super().__init__(spec=spec)

"""FreezeTrainer's executor: validates the policy, runs the trainer function, records the proof.

Everything the user passes is validated into a `TrainerConfig` before any artifact is read, so a bad
policy fails in seconds with one error that names the key. After training, the freeze report the
run_fn exported with the model is copied onto the Model artifact as MLMD custom properties.
"""

from __future__ import annotations

from typing import Any

from tfx import types
from tfx.components.trainer.executor import GenericExecutor
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import json_utils, path_utils

from components.freeze_trainer.run_fn import FREEZE_REPORT_ASSET
from components.freeze_trainer.serving_export import read_extra_asset
from components.freeze_trainer.trainer_config import TrainerConfig

DEFAULT_RUN_FN = "components.freeze_trainer.run_fn.run_fn"
CONFIG_PARAMETERS = (
    "freeze_policy", "backbone", "backbone_weights", "backbone_alpha", "epochs", "learning_rate", "batch_size",
    "training_loop", "distribution", "mixed_precision", "jit_compile", "feature_cache", "feature_cache_memory_mb",
)


def trainer_config_from_exec_properties(exec_properties: dict[str, Any]) -> TrainerConfig:
    """Raises PolicyError for a bad policy and ConfigError for other bad parameters."""
    return TrainerConfig.from_parameters(**{key: exec_properties.get(key) for key in CONFIG_PARAMETERS})


def record_freeze_report(model_artifact: types.Artifact, config: TrainerConfig, report: dict) -> None:
    model_artifact.set_string_custom_property("freeze_policy", config.freeze_policy.canonical_json())
    model_artifact.set_string_custom_property("freeze_policy_sha256", report["policy_sha256"])
    model_artifact.set_string_custom_property("backbone", config.backbone)
    model_artifact.set_string_custom_property("freeze_check", "passed" if report["freeze_check_passed"] else "failed")
    last = report["phases"][-1]  # the state the exported model was trained in last
    model_artifact.set_int_custom_property("frozen_variables", last["frozen_variables"])
    model_artifact.set_int_custom_property("trainable_variables", last["trainable_variables"])
    model_artifact.set_int_custom_property("frozen_params", last["frozen_params"])
    model_artifact.set_int_custom_property("trainable_params", last["trainable_params"])
    model_artifact.set_json_value_custom_property("freeze_phases", report["phases"])


class Executor(GenericExecutor):
    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        config = trainer_config_from_exec_properties(exec_properties)
        custom_config = json_utils.loads(exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "null")
        exec_properties = {
            **exec_properties,
            standard_component_specs.CUSTOM_CONFIG_KEY: json_utils.dumps(
                {**(custom_config or {}), **config.to_custom_config()}
            ),
        }
        if not any(exec_properties.get(key) for key in ("module_file", "module_path", "run_fn")):
            exec_properties["run_fn"] = DEFAULT_RUN_FN
        super().Do(input_dict, output_dict, exec_properties)

        model_artifact = artifact_utils.get_single_instance(output_dict[standard_component_specs.MODEL_KEY])
        report = read_extra_asset(path_utils.serving_model_dir(model_artifact.uri), FREEZE_REPORT_ASSET)
        record_freeze_report(model_artifact, config, report)

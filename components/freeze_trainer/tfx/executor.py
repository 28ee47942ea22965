"""FreezeTrainer's executor: validates the parameters, runs the trainer function, records the proof.

Everything the user passes is validated into a `TrainerConfig` before any artifact is read, so a bad
policy fails in seconds with one error that names the key. The validated config reaches `run_fn` through
TFX's one seam, `_GetFnArgs`, as `fn_args.custom_config["freeze_trainer"]`: validated once per process,
never re-serialized. After training, the freeze report the run_fn exported with the model is copied
onto the Model artifact as MLMD custom properties.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from typing import Any

from tfx import types
from tfx.components.trainer import fn_args_utils
from tfx.components.trainer.executor import GenericExecutor
from tfx.components.util import udf_utils
from tfx.types import artifact_utils, standard_component_specs
from tfx.dsl.io import fileio
from tfx.utils import io_utils, path_utils
from tensorflow.python.lib.io import file_io

from freeze_trainer.keras.distribution import is_chief
from freeze_trainer.tfx.search_report import TRIALS_KEY, read_trials
from freeze_trainer.tfx.resume import adopted_checkpoints, custom_config_of
from freeze_trainer.tfx.serving_export import EXTRA_ASSETS_DIR, FREEZE_REPORT_ASSET, read_extra_asset
from freeze_trainer.tfx.trainer_config import (
    CUSTOM_CONFIG_KEY,
    TRAINER_PARAMETER_NAMES,
    MAX_HYPERPARAMETERS_BYTES,
    ConfigError,
    TrainerConfig,
    config_with_hyperparameters,
    model_hyperparameters,
    read_hyperparameters_text,
)

DEFAULT_RUN_FN = "freeze_trainer.tfx.run_fn.run_fn"
# A user module may define `build_model(config, contract[, hyperparameters])` instead of `run_fn`: the
# default run_fn then trains the model it returns, which reaches run_fn here in fn_args.custom_config.
BUILD_MODEL_FN = "build_model"
BUILD_MODEL_KEY = "freeze_trainer_build_model"
# The file of the user's build_model or run_fn, which the freeze report names when that code makes the model.
USER_CODE_KEY = "freeze_trainer_user_code"
# The freeze report's provenance fields (run_fn.model_source), recorded on the Model artifact as they are.
MODEL_SOURCE_FIELDS = ("model_source", "base_name", "backbone", "backbone_weights", "backbone_weights_sha256",
                       "module_file", "module_file_sha256")
_MODULE_KEYS = (standard_component_specs.MODULE_FILE_KEY, standard_component_specs.MODULE_PATH_KEY)


def trainer_config_from_exec_properties(
    exec_properties: dict[str, Any], hyperparameters: dict[str, Any] | None = None
) -> TrainerConfig:
    """Raises PolicyError for a bad policy and ConfigError for other bad parameters. `hyperparameters`
    (the Tuner's best values) override the parameters and policy fields they name, checked as the local
    runner checks them (`config_with_hyperparameters`): other names only where a user module may read them."""
    values = {key: exec_properties.get(key) for key in TRAINER_PARAMETER_NAMES}
    user_code = any(exec_properties.get(key) for key in (*_MODULE_KEYS, "run_fn"))
    return config_with_hyperparameters(values, hyperparameters or {}, user_model=user_code)


def read_hyperparameters(input_dict: dict[str, list[types.Artifact]]) -> dict[str, Any]:
    """The `values` of a HyperParameters artifact (KerasTuner's `HyperParameters.get_config()`, as TFX's
    Tuner writes it, or a plain name -> value mapping from an Importer); {} without one."""
    artifacts = input_dict.get(standard_component_specs.HYPERPARAMETERS_KEY)
    if not artifacts:
        return {}
    path = io_utils.get_only_uri_in_dir(artifact_utils.get_single_uri(artifacts))
    if file_io.stat(path).length > MAX_HYPERPARAMETERS_BYTES:
        raise ConfigError("hyperparameters", f"{path} is larger than {MAX_HYPERPARAMETERS_BYTES} bytes")
    return read_hyperparameters_text(file_io.read_file_to_string(path), path)


def source_file(fn: Any) -> str | None:
    """The file that defines a user function: the module file as given, TFX's packaged copy of it (the same
    bytes: a module file is packaged as a wheel when the pipeline runs), or a `run_fn` path's module."""
    try:
        return inspect.getsourcefile(fn) if fn is not None else None
    except TypeError:  # not Python source: a builtin or a C extension's function
        return None


def record_freeze_report(model_artifact: types.Artifact, config: TrainerConfig, report: dict) -> None:
    model_artifact.set_string_custom_property("freeze_policy", config.freeze_policy.canonical_json())
    model_artifact.set_string_custom_property("freeze_policy_sha256", report["policy_sha256"])
    for field in MODEL_SOURCE_FIELDS:
        if field in report:
            model_artifact.set_string_custom_property(field, report[field])
    model_artifact.set_string_custom_property("freeze_check", "passed" if report["freeze_check_passed"] else "failed")
    last = report["phases"][-1]  # the state the exported model was trained in last
    model_artifact.set_int_custom_property("frozen_variables", last["frozen_variables"])
    model_artifact.set_int_custom_property("trainable_variables", last["trainable_variables"])
    model_artifact.set_int_custom_property("frozen_params", last["frozen_params"])
    model_artifact.set_int_custom_property("trainable_params", last["trainable_params"])
    model_artifact.set_json_value_custom_property("freeze_phases", report["phases"])


def record_exported_freeze_report(output_dict: dict[str, list[types.Artifact]], config: TrainerConfig) -> None:
    """Copies the freeze report the chief exported with the model onto the Model artifact."""
    model_artifact = artifact_utils.get_single_instance(output_dict[standard_component_specs.MODEL_KEY])
    serving_dir = path_utils.serving_model_dir(model_artifact.uri)
    if not fileio.exists(os.path.join(serving_dir, EXTRA_ASSETS_DIR, FREEZE_REPORT_ASSET)):
        raise RuntimeError(
            f"run_fn: the model has no {EXTRA_ASSETS_DIR}/{FREEZE_REPORT_ASSET}, so nothing proves what stayed "
            "frozen; a user run_fn trains and exports with freeze_trainer.tfx.run_fn.train_and_export(fn_args, model)"
        )
    record_freeze_report(model_artifact, config, read_extra_asset(serving_dir, FREEZE_REPORT_ASSET))


class Executor(GenericExecutor):
    _config: TrainerConfig
    _build_model: Any = None
    _user_code: str | None = None
    _trials: list[dict] | None = None

    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        hyperparameters = read_hyperparameters(input_dict)
        self._config = trainer_config_from_exec_properties(exec_properties, hyperparameters)
        model_own = model_hyperparameters(hyperparameters)
        overrides = {name: value for name, value in hyperparameters.items() if name not in model_own}
        # On the training log, beside the progress bar, not only in the absl log: only what took effect.
        if overrides:
            print(f"Hyperparameters override the trainer parameters: {json.dumps(overrides)}", flush=True)
        if model_own:
            print(f"Hyperparameters for the trainer module's model: {json.dumps(model_own)}", flush=True)
        exec_properties = self._with_run_fn(exec_properties)
        self._trials = read_trials(input_dict)  # a FreezeTuner's, for the run report
        if not is_chief():
            self._train_as_non_chief(input_dict, output_dict, exec_properties)
            return
        # An interrupted execution's checkpoints, when the runner names them: training resumes from a copy
        # of them, and they leave the interrupted execution only once this one has exported.
        model_run_dir = artifact_utils.get_single_uri(output_dict[standard_component_specs.MODEL_RUN_KEY])
        with adopted_checkpoints(model_run_dir, custom_config_of(exec_properties)):
            super().Do(input_dict, output_dict, exec_properties)
        model_artifact = artifact_utils.get_single_instance(output_dict[standard_component_specs.MODEL_KEY])
        if hyperparameters:
            model_artifact.set_json_value_custom_property("hyperparameters", hyperparameters)
        record_exported_freeze_report(output_dict, self._config)

    def _with_run_fn(self, exec_properties: dict[str, Any]) -> dict[str, Any]:
        """The default run_fn unless the user gave one; a module with `build_model` and no `run_fn` gets
        the default run_fn training that model."""
        has_module = any(exec_properties.get(key) for key in _MODULE_KEYS)
        user_run_fn = udf_utils.try_get_fn(exec_properties, "run_fn") if has_module or exec_properties.get(
            "run_fn") else None
        if has_module and user_run_fn is None:
            self._build_model = udf_utils.try_get_fn(exec_properties, BUILD_MODEL_FN)
            if self._build_model is None:
                raise ValueError(f"module_file: defines neither run_fn nor {BUILD_MODEL_FN}")
            has_module = False
            exec_properties = {key: value for key, value in exec_properties.items() if key not in _MODULE_KEYS}
        self._user_code = source_file(self._build_model or user_run_fn)
        if not has_module and not exec_properties.get("run_fn"):
            exec_properties = {**exec_properties, "run_fn": DEFAULT_RUN_FN}
        return exec_properties

    def _GetFnArgs(self, input_dict, output_dict, exec_properties) -> fn_args_utils.FnArgs:
        fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
        extra = {CUSTOM_CONFIG_KEY: self._config}
        if self._build_model is not None:
            extra[BUILD_MODEL_KEY] = self._build_model
        if self._user_code is not None:
            extra[USER_CODE_KEY] = self._user_code
        if self._trials:
            extra[TRIALS_KEY] = self._trials
        fn_args.custom_config = {**(fn_args.custom_config or {}), **extra}
        return fn_args

    def _train_as_non_chief(self, input_dict, output_dict, exec_properties) -> None:
        """Every replica of a multi-worker job (a Vertex CustomJob with worker pools) runs this executor, and
        each must run run_fn because training and saving are collectives across the replicas. The Model and
        ModelRun outputs are the chief's, though: GenericExecutor.Do would fail this replica when the model is
        not at the shared URI (the chief exports it, maybe later), and the MLMD properties are the chief's to
        record. So this replica trains with its outputs pointed at a scratch folder it discards, which also
        keeps a run_fn that exports unconditionally, and what run_fn writes under model_run_dir (TensorBoard
        logs, spilled feature caches), off the chief's URIs."""
        self._log_startup(input_dict, output_dict, exec_properties)
        fn_args = self._GetFnArgs(input_dict, output_dict, exec_properties)
        with tempfile.TemporaryDirectory(prefix="non-chief-outputs-") as scratch:
            fn_args.serving_model_dir = path_utils.serving_model_dir(scratch)
            fn_args.eval_model_dir = path_utils.eval_model_dir(scratch)
            fn_args.model_run_dir = os.path.join(scratch, "model_run")
            udf_utils.get_fn(exec_properties, "run_fn")(fn_args)


def trainer_config(fn_args: fn_args_utils.FnArgs) -> TrainerConfig:
    """The validated configuration the executor handed to `run_fn` (a user `run_fn` reads it here too)."""
    config = (fn_args.custom_config or {}).get(CUSTOM_CONFIG_KEY)
    if not isinstance(config, TrainerConfig):
        raise ValueError(f"fn_args.custom_config[{CUSTOM_CONFIG_KEY!r}] holds no TrainerConfig: run_fn runs under "
                         "freeze_trainer.tfx.executor.Executor, which validates the parameters and puts it there")
    return config

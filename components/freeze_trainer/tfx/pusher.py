"""A Pusher whose filesystem push is atomic, never reuses a version and records only what is there.

TFX's stock executor names the version by the second and skips the copy when that folder exists, so
two pushes in one second both record the same destination while it holds only the first model; and it
copies straight into the version folder, so a push killed mid-copy leaves an incomplete newest version.

Here a push copies into a temporary folder inside the destination, `.tmp-<version>-<pid>-<host>` (model
servers ignore it: TF Serving loads only all-digit version folders), then renames it to the version. The
version is the stock one, the Unix second, raised above every version already there or being written,
and raised again if another writer takes it first. The PushedModel is marked pushed only after the
rename, when the version holds this model's saved_model.pb. A push removes the temporary folders of
earlier pushes from this host whose process is gone (killed). Other destinations behave as stock.

Given the Evaluator's `model_evaluation`, the Pusher also completes the trainer's run report
(run_report.py) with TFMA's overall metrics and the blessing: `report.html` and its data,
`run_report.json`, into both pushed copies' `assets.extra/`, or, for a model it does not push, into
its PushedModel folder, so a rejected candidate's report is there too.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from typing import Any

from absl import logging
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.components.pusher import executor as stock_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import io_utils, json_utils, proto_utils

from freeze_trainer.tfx.run_report import REPORT_ASSET, REPORT_DATA_ASSET, overall_metrics, render_report, with_evaluation
from freeze_trainer.tfx.serving_export import EXTRA_ASSETS_DIR

MODEL_EVALUATION_KEY = "model_evaluation"
TEMP_PREFIX = ".tmp-"
_TEMP_NAME = re.compile(r"^\.tmp-(\d+)-(\d+)-(.+)$")
_RENAME_ATTEMPTS = 100


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _names(base_directory: str) -> list[str]:
    return [name.rstrip("/") for name in fileio.listdir(base_directory)]


def remove_abandoned_temporaries(base_directory: str) -> list[str]:
    """Removes the temporary folders of pushes from this host whose process no longer runs; returns them."""
    removed = []
    for name in _names(base_directory):
        match = _TEMP_NAME.match(name)
        if match and match.group(3) == _host() and not _pid_alive(int(match.group(2))):
            path = os.path.join(base_directory, name)
            logging.info("Removing %s, left by an interrupted push.", path)
            fileio.rmtree(path)
            removed.append(path)
    return removed


def _next_version(base_directory: str) -> int:
    """The Unix second, or one more than the newest version present or being written if that is later."""
    names = _names(base_directory)
    taken = [int(name) for name in names if name.isdigit()]
    taken += [int(m.group(1)) for m in map(_TEMP_NAME.match, names) if m]
    return max([int(time.time()), *(version + 1 for version in taken)])


def _copy_model(model_path: str, destination: str) -> None:
    # saved_model.pb goes last, as in the stock executor: readers take it to mean the model is complete.
    io_utils.copy_dir(model_path, destination, deny_regex_patterns=[r"saved_model\.pb"])
    saved_model = os.path.join(model_path, "saved_model.pb")
    if fileio.exists(saved_model):
        io_utils.copy_file(saved_model, os.path.join(destination, "saved_model.pb"))


def _write_files(folder: str, files: dict[str, str]) -> None:
    for relative_path, text in files.items():
        io_utils.write_string_file(os.path.join(folder, relative_path), text)


def push_to_filesystem(model_path: str, base_directory: str, extra_files: dict[str, str] | None = None
                       ) -> tuple[str, str]:
    """Copies the SavedModel at `model_path` to a new version under `base_directory`, atomically, with
    `extra_files` (path inside the model: text) written over the copy.

    Returns (serving path, version). The version folder appears only complete: it is renamed from a
    temporary folder once every file is copied."""
    fileio.makedirs(base_directory)
    remove_abandoned_temporaries(base_directory)
    version = _next_version(base_directory)
    temporary = os.path.join(base_directory, f"{TEMP_PREFIX}{version}-{os.getpid()}-{_host()}")
    try:
        _copy_model(model_path, temporary)
        _write_files(temporary, extra_files or {})
        for _ in range(_RENAME_ATTEMPTS):
            serving_path = os.path.join(base_directory, str(version))
            try:
                if not fileio.exists(serving_path):
                    fileio.rename(temporary, serving_path, overwrite=False)
                    break
            except Exception:  # noqa: BLE001  (another writer took the name between the check and the rename)
                if not fileio.exists(serving_path):
                    raise
            version += 1
        else:
            raise RuntimeError(f"found no free version under {base_directory} in {_RENAME_ATTEMPTS} attempts")
    except BaseException:
        if fileio.exists(temporary):
            fileio.rmtree(temporary)
        raise
    if fileio.exists(os.path.join(model_path, "saved_model.pb")) and not fileio.exists(
        os.path.join(serving_path, "saved_model.pb")
    ):
        raise RuntimeError(f"push to {serving_path} left no saved_model.pb there")
    logging.info("Model written to serving path %s.", serving_path)
    return serving_path, str(version)


class Executor(stock_executor.Executor):
    """The stock Pusher executor with `push_to_filesystem` for filesystem destinations."""

    def Do(self, input_dict: dict[str, list], output_dict: dict[str, list], exec_properties: dict[str, Any]) -> None:
        push_destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], push_destination)
        if push_destination.WhichOneof("destination") != "filesystem":
            super().Do(input_dict, output_dict, exec_properties)
            return
        fs_config = push_destination.filesystem
        if fs_config.versioning not in (pusher_pb2.Versioning.AUTO, pusher_pb2.Versioning.UNIX_TIMESTAMP):
            raise NotImplementedError(f"Invalid Versioning {fs_config.versioning}")

        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        blessed = self.CheckBlessing(input_dict)
        model_path = self.GetModelPath(input_dict)
        report = self._completed_report(input_dict, model_path, blessed)
        if not blessed:
            self._MarkNotPushed(model_push)
            _write_files(model_push.uri, report)
            return
        report_files = {os.path.join(EXTRA_ASSETS_DIR, name): text for name, text in report.items()}
        # The archive copy first, so the serving version appears last, just before the push is recorded.
        io_utils.copy_dir(model_path, model_push.uri)
        _write_files(model_push.uri, report_files)
        serving_path, version = push_to_filesystem(model_path, fs_config.base_directory, report_files)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)
        logging.info("Model pushed to %s.", model_push.uri)

    @staticmethod
    def _completed_report(input_dict: dict[str, list], model_path: str, blessed: bool) -> dict[str, str]:
        """The trainer's run report and its data with the evaluation and the blessing, by file name; none
        when the model carries no report data (a run_fn of its own) or no evaluation is given, and none,
        with a warning naming the file, when it cannot be completed (a half-written file, say): a report
        never stops a push."""
        data_path = os.path.join(model_path, EXTRA_ASSETS_DIR, REPORT_DATA_ASSET)
        if not input_dict.get(MODEL_EVALUATION_KEY) or not fileio.exists(data_path):
            return {}
        try:
            return _report_with_evaluation(input_dict, data_path, blessed)
        except Exception as err:  # noqa: BLE001  (a side output: the push goes on without it)
            logging.warning("The run report is skipped: %s cannot be read or completed (%s: %s); the push goes on "
                            "without the evaluation in it.", data_path, type(err).__name__, err)
            return {}


def _report_with_evaluation(input_dict: dict[str, list], data_path: str, blessed: bool) -> dict[str, str]:
    with fileio.open(data_path) as f:
        data = json.load(f)
    evaluation = artifact_utils.get_single_instance(input_dict[MODEL_EVALUATION_KEY])
    blessings = input_dict.get(standard_component_specs.MODEL_BLESSING_KEY) or []
    baseline = blessings[0].get_string_custom_property(
        evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY) if blessings else ""
    data = with_evaluation(data, overall_metrics(evaluation.uri), blessed, baseline or None)
    return {REPORT_ASSET: render_report(data), REPORT_DATA_ASSET: json.dumps(data, indent=2, sort_keys=True)}


class PusherSpec(standard_component_specs.PusherSpec):
    """TFX's Pusher spec with the Evaluator's evaluation as an optional input, for the run report."""

    INPUTS = {
        **standard_component_specs.PusherSpec.INPUTS,
        MODEL_EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation, optional=True),
    }


class Pusher(base_component.BaseComponent):
    """TFX's Pusher with the executor above: unique versions, atomic filesystem pushes, completed run reports.

    Args:
      model: A `Channel` of type `standard_artifacts.Model`, usually the trainer's `model` output.
      model_blessing: A `Channel` of type `standard_artifacts.ModelBlessing`, usually the Evaluator's `blessing`.
      push_destination: A `pusher_pb2.PushDestination`: where a blessed model goes.
      model_evaluation: An optional `Channel` of type `standard_artifacts.ModelEvaluation`, the Evaluator's
        `evaluation`: its overall metrics go into the pushed model's run report.
      infra_blessing: An optional `Channel` of type `standard_artifacts.InfraBlessing`.
      custom_config: An optional dict passed to the executor, as TFX's Pusher takes it.
    """

    SPEC_CLASS = PusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(
        self,
        model: types.BaseChannel,
        model_blessing: types.BaseChannel | None = None,
        push_destination: pusher_pb2.PushDestination | None = None,
        model_evaluation: types.BaseChannel | None = None,
        infra_blessing: types.BaseChannel | None = None,
        custom_config: dict[str, Any] | None = None,
    ):
        super().__init__(spec=PusherSpec(
            model=model,
            model_blessing=model_blessing,
            model_evaluation=model_evaluation,
            infra_blessing=infra_blessing,
            push_destination=push_destination,
            custom_config=json_utils.dumps(custom_config),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
        ))

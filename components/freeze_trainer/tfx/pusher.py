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
"""

from __future__ import annotations

import os
import re
import socket
import time
from typing import Any

from absl import logging
from tfx.components.pusher.component import Pusher as StockPusher
from tfx.components.pusher import executor as stock_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

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


def push_to_filesystem(model_path: str, base_directory: str) -> tuple[str, str]:
    """Copies the SavedModel at `model_path` to a new version under `base_directory`, atomically.

    Returns (serving path, version). The version folder appears only complete: it is renamed from a
    temporary folder once every file is copied."""
    fileio.makedirs(base_directory)
    remove_abandoned_temporaries(base_directory)
    version = _next_version(base_directory)
    temporary = os.path.join(base_directory, f"{TEMP_PREFIX}{version}-{os.getpid()}-{_host()}")
    try:
        _copy_model(model_path, temporary)
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
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        # The archive copy first, so the serving version appears last, just before the push is recorded.
        io_utils.copy_dir(model_path, model_push.uri)
        serving_path, version = push_to_filesystem(model_path, fs_config.base_directory)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)
        logging.info("Model pushed to %s.", model_push.uri)


class Pusher(StockPusher):
    """TFX's Pusher with the executor above: unique versions, atomic filesystem pushes."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

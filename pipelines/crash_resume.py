"""A local run killed mid-training does not mean starting over.

TFX's LocalDagRunner gives every run new executions, each with its own output folders
(`<pipeline_root>/<node>/<output>/<execution id>`), and a killed run leaves its executions RUNNING in ML
Metadata and its trainer's checkpoints in its own ModelRun folder. Before a run, while it holds the
output-folder lock (so no run of this folder is alive), the local runner:

- marks every execution of the pipeline still RUNNING (or NEW) CANCELED, with a `canceled_because` note;
- finds the latest interrupted (CANCELED by this, or still RUNNING) trainer execution whose run had the
  same fingerprint (trainer parameters, data files, modules, runner settings: `run_fingerprint`) and
  whose ModelRun folder still holds checkpoints;
- names those checkpoints in the trainer's custom_config (`freeze_trainer.tfx.resume`), so the new
  execution copies them into its own ModelRun folder and training resumes where the killed one stopped;
  they stay with the killed execution until the new one has exported, so a new attempt that fails (and
  whose outputs TFX removes) is no loss. Older interrupted executions' checkpoints are removed: the
  latest one continued from a copy of them.

Every trainer execution records its run's fingerprint in its custom_config, which ML Metadata keeps with
the execution, so the next run can tell whether it is the same run again.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import tensorflow as tf
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from freeze_trainer.tfx.resume import CHECKPOINTS, RESUME_KEY

MODEL_RUN = "model_run"  # the trainer's ModelRun output key, a folder of that name under its node's folder
_INTERRUPTED = (metadata_store_pb2.Execution.RUNNING, metadata_store_pb2.Execution.NEW)
_RESUMABLE = (metadata_store_pb2.Execution.RUNNING, metadata_store_pb2.Execution.CANCELED)


def _stat(path: str | None) -> Any:
    if not path or not tf.io.gfile.exists(path):
        return path
    if tf.io.gfile.isdir(path):
        return {name: _stat(os.path.join(path, name)) for name in sorted(tf.io.gfile.listdir(path))}
    stat = tf.io.gfile.stat(path)
    return [path, stat.length, stat.mtime_nsec]


def run_fingerprint(parameters: dict[str, Any], data: str, files: list[str | None], **settings: Any) -> str:
    """A run's identity for resuming: the trainer `parameters`, `data` (the data folder, each file by size
    and modification time, or a name for generated data), `files` (modules, weights, ...) the same way,
    and the runner's other `settings`."""
    identity = {"parameters": parameters, "data": _stat(data), "files": [_stat(path) for path in files],
                "settings": settings}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _custom_config(execution: metadata_store_pb2.Execution) -> dict[str, Any]:
    value = execution.custom_properties.get("custom_config")
    try:
        config = json.loads(value.string_value) if value is not None else None
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def resume_interrupted_training(metadata_path: str, pipeline_name: str, pipeline_root: str,
                                fingerprint: str) -> dict[str, Any]:
    """Cancels the interrupted executions of earlier runs and returns the trainer's custom_config: this
    run's fingerprint, and the checkpoints of an interrupted trainer execution of the same run, if any."""
    resume = {"key": fingerprint, "checkpoints": ""}
    if not os.path.exists(metadata_path):  # a first run: nothing to resume (and no store to create here)
        return {RESUME_KEY: resume}
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
    store = metadata_store.MetadataStore(config)
    prefix = f"{pipeline_name}."
    candidates = []
    for context in store.get_contexts_by_type("node"):
        if not context.name.startswith(prefix):
            continue
        node_id = context.name[len(prefix):]
        for execution in store.get_executions_by_context(context.id):
            if execution.last_known_state in _INTERRUPTED:
                execution.last_known_state = metadata_store_pb2.Execution.CANCELED
                execution.custom_properties["canceled_because"].string_value = (
                    "still running when a later run of this output folder started: the run was killed")
                store.put_executions([execution])
            elif execution.last_known_state not in _RESUMABLE:
                continue
            checkpoints = os.path.join(pipeline_root, node_id, MODEL_RUN, str(execution.id), CHECKPOINTS)
            if (_custom_config(execution).get(RESUME_KEY) or {}).get("key") == fingerprint and \
                    tf.io.gfile.isdir(checkpoints):
                candidates.append((execution.id, checkpoints))
    if candidates:
        (_, resume["checkpoints"]), *superseded = sorted(candidates, reverse=True)
        for _, checkpoints in superseded:  # the latest one continued from a copy of these: they are stale
            tf.io.gfile.rmtree(checkpoints)
    return {RESUME_KEY: resume}

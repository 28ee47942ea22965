"""Resuming the training of an interrupted FreezeTrainer execution in a new one.

TFX gives every execution its own ModelRun folder (`<pipeline_root>/<node>/model_run/<execution id>`), so
a trainer killed mid-run and rerun by a new pipeline run would start over: its checkpoints lie in the
killed execution's folder. The runner that knows the killed execution (the local runner reads ML Metadata
for it, see `pipelines/crash_resume.py`) names that folder in the trainer's `custom_config`, under
RESUME_KEY, and only when the killed run had the same inputs and parameters. Before training, the new
execution copies those checkpoints into its own ModelRun folder, where run_fn's training resumes from them
("Resuming from ... at phase ..."). The killed execution keeps them until the new one has exported: when
an attempt fails (a full disk, say), TFX removes its outputs, ModelRun and the copy included, and the next
run resumes from the killed execution's checkpoints again instead of starting over.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator

import absl.logging
import tensorflow as tf
from tfx.utils import io_utils

RESUME_KEY = "freeze_trainer_resume"  # custom_config: {"key": run fingerprint, "checkpoints": folder or ""}
CHECKPOINTS = "checkpoints"  # under a ModelRun folder, where run_fn keeps the training checkpoints


def custom_config_of(exec_properties: dict[str, Any]) -> dict[str, Any]:
    value = exec_properties.get("custom_config")
    value = json.loads(value) if isinstance(value, str) else value
    return value if isinstance(value, dict) else {}


def _repoint_checkpoint_state(directory: str) -> None:
    """The `checkpoint` state file names checkpoints by absolute path, in the folder they were saved in:
    after a move they are named in `directory` (else the latest checkpoint is not found, and training
    silently starts over)."""
    state = tf.train.get_checkpoint_state(directory)
    if state is None:
        return

    def moved(path: str) -> str:
        return os.path.join(directory, os.path.basename(path))

    tf.compat.v1.train.update_checkpoint_state(
        directory,
        moved(state.model_checkpoint_path),
        [moved(path) for path in state.all_model_checkpoint_paths],
        all_model_checkpoint_timestamps=list(state.all_model_checkpoint_timestamps) or None,
        last_preserved_timestamp=state.last_preserved_timestamp or None,
    )


def adopt_checkpoints(model_run_dir: str, custom_config: dict[str, Any]) -> str | None:
    """Copies the checkpoints `custom_config[RESUME_KEY]["checkpoints"]` names into `model_run_dir`, unless
    it holds checkpoints already; returns where they came from, or None. The copy is renamed into place
    whole, so a kill mid-copy leaves no partial checkpoints for a later run to resume from."""
    source = (custom_config.get(RESUME_KEY) or {}).get("checkpoints")
    target = os.path.join(model_run_dir, CHECKPOINTS)
    if not source or not tf.io.gfile.isdir(source) or tf.io.gfile.exists(target):
        return None
    partial = f"{target}.partial"
    if tf.io.gfile.exists(partial):
        tf.io.gfile.rmtree(partial)
    io_utils.copy_dir(source, partial)
    tf.io.gfile.rename(partial, target)
    _repoint_checkpoint_state(target)
    absl.logging.warning("Continuing an interrupted execution's training: its checkpoints %s copied to %s",
                         source, target)
    return source


@contextlib.contextmanager
def adopted_checkpoints(model_run_dir: str, custom_config: dict[str, Any]) -> Iterator[str | None]:
    """Adopts the interrupted execution's checkpoints (`adopt_checkpoints`) for the training inside, and
    removes them from the interrupted execution once it has exported. If it fails they stay: TFX removes
    a failed attempt's outputs, the copy with them, and the next run resumes from them again."""
    source = adopt_checkpoints(model_run_dir, custom_config)
    yield source
    if source and tf.io.gfile.exists(source):
        try:
            tf.io.gfile.rmtree(source)
        except tf.errors.OpError as err:  # the model is exported: a leftover costs disk, not the run
            absl.logging.warning("Could not remove the resumed checkpoints %s: %s", source, err)

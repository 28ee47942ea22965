"""Warm start: copies a previously exported model's weights into a freshly built classifier.

Retraining feeds the latest blessed model to the trainer as `base_model`. That model is the SavedModel
`serving_export.py` wrote; it tracks `model_variables`, the classifier's variables in `model.variables`
order. Variables are paired by name and shape (the k-th variable named X with the k-th fresh one named X),
never by identity or `var in list`, which compares tensors elementwise. A variable whose name is missing
or whose shape changed (say a new class count in the head) keeps its fresh value.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import tensorflow as tf
from absl import logging

from freeze_trainer.tfx.serving_export import MODEL_VARIABLES


class WarmStartError(ValueError):
    pass


@dataclass(frozen=True)
class WarmStartReport:
    source: str
    loaded: int
    shape_mismatch: tuple[str, ...]
    missing: tuple[str, ...]

    def summary(self) -> str:
        return (
            f"warm start from {self.source}: loaded {self.loaded} variables, "
            f"{len(self.shape_mismatch)} with a changed shape, {len(self.missing)} not in the base model"
        )


def _by_name(variables) -> dict[str, list]:
    grouped = defaultdict(list)
    for variable in variables:
        grouped[variable.name].append(variable)
    return grouped


def copy_matching_variables(target: list[tf.Variable], source: list[tf.Variable], source_name: str) -> WarmStartReport:
    """Assigns each target variable the value of the source variable with the same name and shape."""
    sources = _by_name(source)
    seen: dict[str, int] = defaultdict(int)
    loaded, mismatched, missing = 0, [], []
    for variable in target:
        index = seen[variable.name]
        seen[variable.name] += 1
        candidates = sources.get(variable.name, [])
        if index >= len(candidates):
            missing.append(variable.name)
            continue
        value = candidates[index]
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(variable.name)
            continue
        variable.assign(tf.cast(value, variable.dtype))
        loaded += 1
    report = WarmStartReport(source_name, loaded, tuple(mismatched), tuple(missing))
    if loaded == 0:
        raise WarmStartError(f"{report.summary()}; the base model shares no variable with this classifier")
    return report


def warm_start_from_saved_model(model: tf.keras.Model, base_model_dir: str) -> WarmStartReport:
    """Loads `base_model_dir` (a SavedModel from `export_serving_model`) into `model` in place."""
    saved = tf.saved_model.load(base_model_dir)
    if not hasattr(saved, MODEL_VARIABLES):
        raise WarmStartError(f"base model {base_model_dir} has no `{MODEL_VARIABLES}`; it was not exported by FreezeTrainer")
    report = copy_matching_variables(list(model.variables), list(getattr(saved, MODEL_VARIABLES)), base_model_dir)
    logging.info("%s", report.summary())
    for name in report.shape_mismatch + report.missing:
        logging.info("warm start: %s keeps its fresh value", name)
    return report

"""What the trainer reads from the examples: which feature the model takes, which holds the label, the
task and its classes. Resolved from the trainer's parameters and the Transform output (or, without a
Transform, the raw schema) before any training, so a wrong key fails in one line naming it and the
features there are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tensorflow as tf

from freeze_trainer.keras.tasks import Task
from freeze_trainer.tfx.trainer_config import ConfigError, TrainerConfig


@dataclass(frozen=True)
class DataContract:
    feature_key: str  # in the examples the trainer reads (transformed, or raw without a Transform)
    label_key: str
    input_shape: tuple[int, ...]
    task: Task
    num_classes: int  # 1 for regression
    class_names: tuple[str, ...] | None  # from the label vocabulary; None for integer or numeric labels
    vocabulary: str | None  # the Transform vocabulary the class names come from


def _spec(feature_spec: dict, parameter: str, key: str, where: str):
    if key not in feature_spec:
        raise ConfigError(parameter, f"no feature {key!r} in the {where}; its features are {', '.join(sorted(feature_spec))}")
    return feature_spec[key]


def resolve_contract(
    config: TrainerConfig,
    feature_spec: dict,
    where: str,
    vocabulary_names: Callable[[str], list[str] | None],
    int_label_domain: Callable[[str], int | None],
    count_int_classes: Callable[[], int],
    transformed: bool,
) -> DataContract:
    """`feature_spec` is the transformed (or raw) feature spec; `vocabulary_names(name)` the named Transform
    vocabulary or None; `int_label_domain(key)` the schema's int_domain size for the label or None;
    `count_int_classes()` scans the training labels (the last resort for integer labels)."""
    feature_key = config.model_feature_key if transformed else config.feature_key
    label_key = config.model_label_key if transformed else config.label_key
    feature_parameter = "transformed_feature_key" if transformed and config.transformed_feature_key else "feature_key"
    label_parameter = "transformed_label_key" if transformed and config.transformed_label_key else "label_key"
    feature = _spec(feature_spec, feature_parameter, feature_key, where)
    label = _spec(feature_spec, label_parameter, label_key, where)
    if not feature.shape:
        raise ConfigError(feature_parameter, f"feature {feature_key!r} has no fixed shape in the {where}")

    label_width = int(tf.TensorShape(label.shape).num_elements() or 1)
    vocabulary = (config.label_vocabulary or config.label_key) if transformed else None
    names = vocabulary_names(vocabulary) if vocabulary else None
    if config.label_vocabulary and names is None:
        raise ConfigError("label_vocabulary", f"the Transform output has no vocabulary {config.label_vocabulary!r}")
    numeric = label.dtype.is_floating and names is None

    task = config.task
    if task == "auto":
        task = "multi_label" if label_width > 1 else "regression" if numeric else None
    if task == "regression":
        return DataContract(feature_key, label_key, tuple(feature.shape), Task("regression"), 1, None, None)
    if task == "multi_label":
        return DataContract(feature_key, label_key, tuple(feature.shape), Task("multi_label"), label_width,
                            tuple(names) if names else None, vocabulary if names else None)
    if names is not None:
        num_classes = len(names)
    else:
        if label.dtype.is_floating:
            raise ConfigError("task", f"label {label_key!r} holds floats; a {task or 'classification'} task needs "
                                      "class indices or a label vocabulary")
        num_classes = int_label_domain(label_key) or count_int_classes()
    if num_classes < 2:
        raise ConfigError(label_parameter, f"label {label_key!r} has {num_classes} class(es); classification needs two or more")
    task = task or ("binary" if num_classes == 2 else "multiclass")
    if task == "binary" and num_classes != 2:
        raise ConfigError("task", f"binary needs two classes; label {label_key!r} has {num_classes}")
    return DataContract(feature_key, label_key, tuple(feature.shape), Task(task), num_classes,
                        tuple(names) if names else None, vocabulary if names else None)

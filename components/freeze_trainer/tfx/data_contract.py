"""What the trainer reads from the examples: which features the model takes, which holds the label, the
task and its classes. Resolved from the trainer's parameters and the Transform output (or, without a
Transform, the raw schema) before any training, so a wrong key fails in one line naming it and the
features there are.

The input rule: a model with one input reads `transformed_feature_key` (`feature_key` without a
Transform); a model with several reads, for each input, the feature of the input's name (the Keras
convention for dict inputs). `model_inputs` binds a built model's inputs to the features, or fails in
one line naming every input and every feature."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import tensorflow as tf

from freeze_trainer.keras.models.tasks import Task
from freeze_trainer.tfx.trainer_config import ConfigError, TrainerConfig


Shape = tuple[int, ...] | None  # a feature's shape without the batch; None: no fixed shape (sparse, ragged)


@dataclass(frozen=True)
class DataContract:
    feature_key: str  # what a one-input model reads, in the examples the trainer reads (transformed, or raw)
    label_key: str
    features: dict[str, Shape]  # every feature of those examples but the label: what named inputs can read
    task: Task
    num_classes: int  # 1 for regression
    class_names: tuple[str, ...] | None  # from the label vocabulary; None for integer or numeric labels
    vocabulary: str | None  # the Transform vocabulary the class names come from
    where: str = "Transform output"  # or "schema": where the features are, for messages
    feature_parameter: str = "transformed_feature_key"  # the parameter naming `feature_key`, for messages
    # The feature each of the model's inputs reads, by input name: set once the model is built (`model_inputs`).
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of `feature_key`, the input of a one-input model; raises ConfigError naming the
        parameter when the examples have no such feature or it has no fixed shape."""
        shape = _named(self.features, self.feature_parameter, self.feature_key, self.where)
        if shape is None:
            raise ConfigError(self.feature_parameter, f"feature {self.feature_key!r} has no fixed shape in the {self.where}")
        return shape


def _named(mapping: dict, parameter: str, key: str, where: str):
    if key not in mapping:
        raise ConfigError(parameter, f"no feature {key!r} in the {where}; its features are {', '.join(sorted(mapping))}")
    return mapping[key]


def _shown(shapes: dict[str, Shape]) -> str:
    return ", ".join(f"{name} {shape if shape is not None else '(no fixed shape)'}" for name, shape in sorted(shapes.items()))


def model_inputs(contract: DataContract, model: tf.keras.Model, model_parameter: str) -> dict[str, str]:
    """The feature each of `model`'s inputs reads, by input name: `feature_key` for a model with one input,
    the feature of its own name for each input of a model with several. Raises ConfigError when a feature
    is missing or its shape differs from the input's, naming every input and every feature (the key is
    `model_parameter`, the parameter the model comes from, for a model with several inputs)."""
    shapes = {name: tuple(tensor.shape[1:]) for name, tensor in zip(model.input_names, model.inputs)}
    if len(shapes) == 1:
        (name, shape), = shapes.items()
        data_shape = contract.input_shape
        if not tf.TensorShape(shape).is_compatible_with(data_shape):
            raise ConfigError(model_parameter, f"the model's input {name!r} takes {shape}; {contract.feature_parameter} "
                                               f"{contract.feature_key!r} is {data_shape} in the {contract.where}")
        return {name: contract.feature_key}
    missing = [name for name in shapes if name not in contract.features]
    misfits = [name for name, shape in shapes.items() if name not in missing
               and not (contract.features[name] is not None and tf.TensorShape(shape).is_compatible_with(contract.features[name]))]
    if missing or misfits:
        problems = [*(f"no feature {name!r}" for name in missing),
                    *(f"{name!r} is {contract.features[name]}" for name in misfits)]
        raise ConfigError(model_parameter, f"the model's {len(shapes)} inputs read the {contract.where}'s features of "
                                           f"their names: {'; '.join(problems)}. The model's inputs: {_shown(shapes)}. "
                                           f"The {contract.where}'s features: {_shown(contract.features)}")
    return {name: name for name in shapes}


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
    label = _named(feature_spec, label_parameter, label_key, where)
    # A feature without a fixed shape (VarLen, sparse, ragged) has none; an empty shape is a scalar's.
    features = {name: tuple(spec.shape) if isinstance(spec, (tf.io.FixedLenFeature, tf.io.FixedLenSequenceFeature))
                else None for name, spec in feature_spec.items() if name != label_key}
    contract = partial(DataContract, feature_key, label_key, features, where=where, feature_parameter=feature_parameter)

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
        # Class indices of a vocabulary are no quantity: a model regressing on them learns the vocabulary's order.
        if names is not None or not (label.dtype.is_floating or label.dtype.is_integer):
            raise ConfigError("task", f"regression needs numeric labels; label {label_key!r} holds "
                                      + (f"class indices of the vocabulary {vocabulary!r}" if names is not None
                                         else f"{label.dtype.name} values"))
        return contract(Task("regression"), 1, None, None)
    if task == "multi_label":
        if label_width < 2:
            raise ConfigError("task", f"multi_label needs a vector of 0/1 a class in every label; label {label_key!r} "
                                      "holds one value an example")
        return contract(Task("multi_label"), label_width, tuple(names) if names else None, vocabulary if names else None)
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
    return contract(Task(task), num_classes, tuple(names) if names else None, vocabulary if names else None)

"""What the new head predicts, and how it is trained and scored: one value per task, used by the head,
both training loops and the export.

| task | head | loss | metric |
| --- | --- | --- | --- |
| multiclass | softmax over N classes | sparse categorical cross-entropy | accuracy |
| binary | one sigmoid unit | binary cross-entropy | accuracy, AUC |
| multi_label | N sigmoid units (multi-hot labels) | binary cross-entropy | binary accuracy |
| regression | one linear unit | mean squared error | mean squared error |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import tensorflow as tf

TaskName = Literal["multiclass", "binary", "multi_label", "regression"]


@dataclass(frozen=True)
class Task:
    name: TaskName

    def units(self, num_classes: int) -> int:
        return num_classes if self.name in ("multiclass", "multi_label") else 1

    @property
    def activation(self) -> str:
        return {"multiclass": "softmax", "binary": "sigmoid", "multi_label": "sigmoid", "regression": "linear"}[self.name]

    def loss(self, reduction: str = tf.keras.losses.Reduction.AUTO) -> tf.keras.losses.Loss:
        if self.name == "multiclass":
            return tf.keras.losses.SparseCategoricalCrossentropy(reduction=reduction)
        if self.name == "regression":
            return tf.keras.losses.MeanSquaredError(reduction=reduction)
        return tf.keras.losses.BinaryCrossentropy(reduction=reduction)

    def metrics(self) -> list[tf.keras.metrics.Metric]:
        """Fresh metric objects; the first is the one progress bars and reports lead with."""
        if self.name == "multiclass":
            return [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        if self.name == "binary":
            return [tf.keras.metrics.BinaryAccuracy(name="accuracy"), tf.keras.metrics.AUC(name="auc")]
        if self.name == "multi_label":
            return [tf.keras.metrics.BinaryAccuracy(name="accuracy")]
        return [tf.keras.metrics.MeanSquaredError(name="mse")]

    def prepare_labels(self, labels: tf.Tensor) -> tf.Tensor:
        """Labels as the loss takes them: class indices for multiclass, floats of the head's shape otherwise."""
        if self.name == "multiclass":
            return labels
        labels = tf.cast(labels, tf.float32)
        return labels if self.name == "multi_label" else tf.reshape(labels, [-1, 1])


MULTICLASS = Task("multiclass")

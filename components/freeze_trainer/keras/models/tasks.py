"""What the new head predicts, and how it is trained and scored: one value per task, used by the head,
both training loops and the export.

| task | head | loss | metric |
| --- | --- | --- | --- |
| multiclass | softmax over N classes | sparse categorical cross-entropy | accuracy |
| binary | one sigmoid unit | binary cross-entropy | accuracy, AUC |
| multi_label | N sigmoid units (multi-hot labels) | binary cross-entropy | binary accuracy |
| regression | one linear unit | mean squared error | mean squared error |

A classification head may output logits instead (its last layer without activation, the Keras
`from_logits=True` convention): the loss and the metrics then take logits, and the export turns them
into probabilities with the task's activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import tensorflow as tf

TaskName = Literal["multiclass", "binary", "multi_label", "regression"]
HeadOutput = Literal["probabilities", "logits"]


@dataclass(frozen=True)
class Task:
    name: TaskName
    head_output: HeadOutput = "probabilities"

    def units(self, num_classes: int) -> int:
        return num_classes if self.name in ("multiclass", "multi_label") else 1

    @property
    def classifies(self) -> bool:
        return self.name != "regression"

    @property
    def from_logits(self) -> bool:
        return self.head_output == "logits"

    @property
    def activation(self) -> str:
        """The last head layer's activation for this head output."""
        if self.from_logits:
            return "linear"
        return {"multiclass": "softmax", "binary": "sigmoid", "multi_label": "sigmoid", "regression": "linear"}[self.name]

    def loss(self, reduction: str = tf.keras.losses.Reduction.AUTO) -> tf.keras.losses.Loss:
        if self.name == "multiclass":
            return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=self.from_logits, reduction=reduction)
        if self.name == "regression":
            return tf.keras.losses.MeanSquaredError(reduction=reduction)
        return tf.keras.losses.BinaryCrossentropy(from_logits=self.from_logits, reduction=reduction)

    def metrics(self) -> list[tf.keras.metrics.Metric]:
        """Fresh metric objects; the first is the one progress bars and reports lead with."""
        threshold = 0.0 if self.from_logits else 0.5  # sigmoid(0) = 0.5
        if self.name == "multiclass":  # the arg max of logits is that of their softmax
            return [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        if self.name == "binary":
            return [tf.keras.metrics.BinaryAccuracy(name="accuracy", threshold=threshold),
                    tf.keras.metrics.AUC(name="auc", from_logits=self.from_logits)]
        if self.name == "multi_label":
            return [tf.keras.metrics.BinaryAccuracy(name="accuracy", threshold=threshold)]
        return [tf.keras.metrics.MeanSquaredError(name="mse")]

    def predictions(self, scores: tf.Tensor) -> tf.Tensor:
        """The head's outputs as the task predicts: probabilities for classification, values for regression."""
        if not self.from_logits:
            return scores
        scores = tf.cast(scores, tf.float32)  # a float16 head under mixed precision: squash in float32
        return tf.nn.softmax(scores) if self.name == "multiclass" else tf.sigmoid(scores)

    def prepare_labels(self, labels: tf.Tensor) -> tf.Tensor:
        """Labels as the loss takes them: class indices for multiclass, floats of the head's shape otherwise."""
        if self.name == "multiclass":
            return labels
        labels = tf.cast(labels, tf.float32)
        return labels if self.name == "multi_label" else tf.reshape(labels, [-1, 1])


MULTICLASS = Task("multiclass")

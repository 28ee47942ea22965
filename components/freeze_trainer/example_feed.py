"""Each phase's model and batches: the classifier on examples, or its head on cached base features.

Every phase batches its examples afresh with the same seed, cached or not, so a head trained on cached
features sees the same batches in the same order as one trained on images.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from components.freeze_trainer.classifier_model import head_on_features
from components.freeze_trainer.feature_cache import FeatureCache
from components.freeze_trainer.freeze_plan import PhasePlan

SHUFFLE_BUFFER = 10_000  # examples, as tfx_bsl's default record shuffle


def training_batches(examples: tf.data.Dataset, batch_size: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches unbatched examples, shuffled with `shuffle_seed` (None keeps their order). The order
    depends only on the seed and the position, so images and their cached features line up."""
    if shuffle_seed is not None:
        examples = examples.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed, reshuffle_each_iteration=True)
    return examples.batch(batch_size)


@dataclass(frozen=True)
class PhaseData:
    model: tf.keras.Model  # what the phase fits: the classifier, or its head over cached features
    train: tf.data.Dataset
    eval: tf.data.Dataset


@dataclass(frozen=True)
class ExampleFeed:
    """Unbatched, finite training and evaluation examples and how to batch them; with a FeatureCache,
    phases whose plan `caches_features` train on cached features."""

    train_examples: tf.data.Dataset
    eval_examples: tf.data.Dataset
    batch_size: int
    shuffle_seed: int | None = None
    feature_cache: FeatureCache | None = None

    def phase_data(self, model: tf.keras.Model, plan: PhasePlan) -> PhaseData:
        if self.feature_cache is not None and plan.caches_features:
            features = self.feature_cache.features(
                model, {"train": self.train_examples, "eval": self.eval_examples}, self.batch_size
            )
            model, train, evaluation = head_on_features(model), features["train"], features["eval"]
        else:
            train, evaluation = self.train_examples, self.eval_examples
        return PhaseData(
            model, training_batches(train, self.batch_size, self.shuffle_seed), training_batches(evaluation, self.batch_size)
        )

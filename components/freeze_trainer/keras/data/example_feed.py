"""Each phase's model and batches: the classifier on examples, or the part of it that a phase trains on
cached tensors (its head on the base's pooled features, or its live part on a frozen prefix's outputs).

Training batches are an endless stream, pass after pass over the data, that each training call builds
afresh from a position (the batches of the phase already trained): a resumed phase sees the batches an
uninterrupted one would have, and a model trained on cached tensors sees the same batches in the same
order as one trained on the examples (one input tensor, or a dict of them for a model with several inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Callable

import numpy as np
import tensorflow as tf

from freeze_trainer.keras.data.feature_cache import FeatureCache
from freeze_trainer.keras.data.prefix_cache import cached_models
from freeze_trainer.keras.planning.phase_schedule import ScheduledPhase

SHUFFLE_BUFFER = 10_000  # examples, as tfx_bsl's default record shuffle


def endless_batches(
    examples: tf.data.Dataset, batch_size: int, shuffle_seed: int | None, position: int
) -> tf.data.Dataset:
    """Pass after pass over unbatched examples, batched, from batch `position` on; each pass is shuffled
    with `shuffle_seed` (None keeps their order). Every call builds its own shuffle, whose reshuffles
    restart from the seed, so a batch depends only on the seed, the number of examples and its position."""
    if shuffle_seed is not None:
        examples = examples.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed, reshuffle_each_iteration=True)
    return examples.batch(batch_size).repeat().skip(position)


def count_elements(dataset: tf.data.Dataset) -> int:
    """The dataset's length: its cardinality where tf.data knows it, else one pass over it."""
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError("endless training data needs `steps_per_epoch`")
    if cardinality == tf.data.UNKNOWN_CARDINALITY:
        return int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
    return cardinality


@dataclass(frozen=True)
class PhaseData:
    model: tf.keras.Model  # what the phase fits: the classifier, or the part of it over cached tensors
    batches: Callable[[int], tf.data.Dataset]  # p -> endless training batches from batch p of the phase on
    eval: tf.data.Dataset | None
    cached_features: bool = False  # `model` trains on cached tensors (`ScheduledPhase.cache`)


@dataclass(frozen=True)
class BatchedFeed:
    """Batched training and evaluation datasets, the same for every phase.

    A phase trains on `train.repeat()`, and a resumed one skips the batches already trained: it sees the
    batches an uninterrupted phase would have only where `train`'s order does not depend on how often it
    was iterated before (unshuffled data, say). Shuffled data resumes exactly through an ExampleFeed."""

    train: tf.data.Dataset
    eval: tf.data.Dataset | None

    @cached_property
    def epoch_batches(self) -> int:
        return count_elements(self.train)

    def phase_data(self, model: tf.keras.Model, phase: ScheduledPhase) -> PhaseData:
        return PhaseData(model, lambda position: self.train.repeat().skip(position), self.eval)


@dataclass(frozen=True)
class ExampleFeed:
    """Unbatched, finite training and evaluation examples and how to batch them; with a FeatureCache,
    phases the schedule has use the cache (`ScheduledPhase.cache`) train on the tensors it holds."""

    train_examples: tf.data.Dataset
    eval_examples: tf.data.Dataset
    batch_size: int
    shuffle_seed: int | None = None
    feature_cache: FeatureCache | None = None

    @cached_property
    def epoch_batches(self) -> int:
        """Global batches in one pass over the training examples, counted over the examples rather than
        their cached features, which under MultiWorkerMirroredStrategy hold only this worker's shard:
        every worker must run as many steps as the others."""
        return math.ceil(count_elements(self.train_examples) / self.batch_size)

    def phase_data(self, model: tf.keras.Model, phase: ScheduledPhase) -> PhaseData:
        cached = phase.cache is not None  # the schedule caches only where the feed has a cache
        if cached:
            extractor, phase_model, unpack = cached_models(model, phase.cache)
            stored = self.feature_cache.features(
                model, {"train": self.train_examples, "eval": self.eval_examples}, self.batch_size, extractor
            )
            model = phase_model
            train, evaluation = (stored[split].map(unpack) if unpack else stored[split] for split in ("train", "eval"))
        else:
            train, evaluation = self.train_examples, self.eval_examples
        batches = partial(endless_batches, train, self.batch_size, self.shuffle_seed)
        return PhaseData(model, batches, evaluation.batch(self.batch_size), cached)

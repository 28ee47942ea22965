"""The frozen-prefix cache: a phase whose frozen prefix is deterministic trains only its live part, on
the prefix's outputs computed once.

`PrefixFeed` serves the training loops as an `ExampleFeed` does: for each phase it finds the cut
(prefix_cut.py); where the phase caches, it computes the cut tensors once per example through a
`FeatureCache` (memory budget, disk spill, a key over the prefix's architecture, weights and the data,
so a later phase with the same cut and an unchanged prefix reuses them) and returns the live model over
them, batched in the same seeded order as the examples. Other phases train on the examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import tensorflow as tf

from freeze_trainer.keras.data.example_feed import ExampleFeed, PhaseData, endless_batches
from freeze_trainer.keras.data.feature_cache import FeatureCache
from freeze_trainer.keras.planning.phase_schedule import ScheduledPhase
from freeze_trainer.keras.planning.prefix_cut import PrefixCut, find_cut, live_model, prefix_model


def packed_prefix(model: tf.keras.Model, cut: PrefixCut) -> tf.keras.Model:
    """The prefix with one output, which the FeatureCache stores: the cut tensor itself, or several
    flattened and concatenated per example (see `unpack`)."""
    prefix = prefix_model(model, cut)
    if len(cut.tensors) == 1:
        return prefix
    # Fixed layer names: the cache key covers the architecture, and a rebuilt prefix must match it.
    flat = [tf.keras.layers.Reshape((-1,), name=f"pack_{i}")(output) for i, output in enumerate(prefix.outputs)]
    packed = tf.keras.layers.Concatenate(name="pack")(flat)
    return tf.keras.Model(prefix.inputs, packed, name=f"{prefix.name}_packed")


def unpack(cut: PrefixCut):
    """The inverse of `packed_prefix`'s packing for one (packed, label) example: (cut tensors, label)."""
    shapes = [tuple(t.shape[1:]) for t in cut.tensors]
    if len(shapes) == 1:
        return lambda packed, label: (packed, label)
    sizes = [int(np.prod(shape)) for shape in shapes]

    def split(packed, label):
        parts = tf.split(packed, sizes, axis=-1)
        return tuple(tf.reshape(part, shape) for part, shape in zip(parts, shapes)), label

    return split


@dataclass(frozen=True)
class PrefixFeed(ExampleFeed):
    """An ExampleFeed whose phases with a deterministic frozen prefix train their live part on the cut
    tensors `prefix_cache` holds; other phases are served as by an ExampleFeed."""

    prefix_cache: FeatureCache | None = None

    def phase_data(self, model: tf.keras.Model, phase: ScheduledPhase) -> PhaseData:
        cut = find_cut(model, phase.plan)
        if self.prefix_cache is None or not cut.caches:
            return super().phase_data(model, phase)
        splits = {"train": self.train_examples, "eval": self.eval_examples}
        stored = self.prefix_cache.features(model, splits, self.batch_size, extractor=packed_prefix(model, cut))
        train, evaluation = (stored[split].map(unpack(cut)) for split in ("train", "eval"))
        batches = partial(endless_batches, train, self.batch_size, self.shuffle_seed)
        return PhaseData(live_model(model, cut), batches, evaluation.batch(self.batch_size), cached_features=True)

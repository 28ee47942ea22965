"""The frozen-prefix cache: a phase whose frozen prefix is deterministic trains only its live part, on
the prefix's outputs computed once.

Where the schedule says a phase caches (`ScheduledPhase.cache`, decided in phase_schedule.py),
`cached_models` gives what the `FeatureCache` computes once per example and the model the phase trains on
it: the frozen prefix to its cut tensors and the live part over them (prefix_cut.py), or, where the whole
base is frozen, the base to its pooled features and the head over them. `ExampleFeed` batches the cached
tensors in the same seeded order as the examples.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from freeze_trainer.keras.models.classifier_model import feature_extractor, head_on_features
from freeze_trainer.keras.planning.phase_schedule import CacheUse
from freeze_trainer.keras.planning.prefix_cut import PrefixCut, live_model, prefix_model


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
    """The inverse of `packed_prefix`'s packing of several cut tensors, for one (packed, label) example:
    (cut tensors, label)."""
    shapes = [tuple(t.shape[1:]) for t in cut.tensors]
    sizes = [int(np.prod(shape)) for shape in shapes]

    def split(packed, label):
        parts = tf.split(packed, sizes, axis=-1)
        return tuple(tf.reshape(part, shape) for part, shape in zip(parts, shapes)), label

    return split


def cached_models(model: tf.keras.Model, cache: CacheUse
                  ) -> tuple[tf.keras.Model, tf.keras.Model, Callable | None]:
    """(what computes the cached tensors, the model trained on them, how to unpack a cached (tensor,
    label) example, None when there is nothing to unpack); both models share `model`'s layer objects."""
    if cache.prefix is None:
        return feature_extractor(model), head_on_features(model), None
    packing = unpack(cache.prefix) if len(cache.prefix.tensors) > 1 else None
    return packed_prefix(model, cache.prefix), live_model(model, cache.prefix), packing

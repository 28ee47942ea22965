"""Frozen-feature cache: while the whole base is frozen, compute its features once per example.

In a phase where no layer before the pooled features trains and nothing there draws random numbers
(see `PhasePlan.caches_features`), every epoch would recompute the same base outputs. The cache runs
the base once over the training and evaluation examples, and `ExampleFeed` trains the head alone on
the stored features, batched like the examples would have been.

The cache key covers the example files and the Transform graph (the caller's `source_fingerprint`),
the extractor's architecture and every one of its weights (BatchNorm statistics included), the dtype
policy and the worker's shard: features are reused only while all of those are unchanged, so a later
head-only phase after the base trained computes them again. Features stay in memory up to a budget;
the rest is written to disk in shards and streamed back. A run's phases need one key at a time; a policy
search's trials cut the base at a few places and come back to each (`keep_stale`: every key built stays,
all of them within the one memory budget). Under MultiWorkerMirroredStrategy each worker
caches only its own shard of the examples.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from functools import reduce

import numpy as np
import tensorflow as tf
from absl import logging

from freeze_trainer.keras.models.classifier_model import feature_extractor
from freeze_trainer.keras.distribution import worker_shard

PIECE_BYTES = 64 << 20  # features are kept and spilled in pieces of about this size


def files_fingerprint(patterns: list[str]) -> str:
    """Every file under or matching `patterns` with its size and modification time (TFX artifacts are
    written once, so this stands in for hashing their contents)."""
    entries = []
    for pattern in patterns:
        for path in sorted(tf.io.gfile.glob(pattern)):
            if tf.io.gfile.isdir(path):
                for root, _, files in tf.io.gfile.walk(path):
                    entries.extend(os.path.join(root, name) for name in sorted(files))
            else:
                entries.append(path)
    stats = [f"{path}:{tf.io.gfile.stat(path).length}:{tf.io.gfile.stat(path).mtime_nsec}" for path in entries]
    return hashlib.sha256("\n".join(stats).encode()).hexdigest()


def cache_key(extractor: tf.keras.Model, source_fingerprint: str, shard: tuple[int, int]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([source_fingerprint, shard, tf.keras.mixed_precision.global_policy().name]).encode())
    digest.update(extractor.to_json().encode())
    for weight in extractor.weights:
        digest.update(weight.name.encode())
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:24]


class _FeatureStore:
    """One split's features and labels in order: pieces in memory up to a budget, then pieces on disk."""

    def __init__(self, directory: str, budget_bytes: int):
        self.directory, self.budget_bytes = directory, budget_bytes
        self.memory: list[tuple[np.ndarray, np.ndarray]] = []
        self.disk: list[str] = []
        self.memory_bytes = self.disk_bytes = self.examples = 0
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_bytes = 0
        self._spec = None

    def add(self, features: np.ndarray, labels: np.ndarray) -> None:
        self._spec = self._spec or (features.dtype, features.shape[1:], labels.dtype, labels.shape[1:])
        self._pending.append((features, labels))
        self._pending_bytes += features.nbytes + labels.nbytes
        self.examples += len(features)
        if self._pending_bytes >= PIECE_BYTES:
            self.seal()

    def seal(self) -> None:
        """Stores what was added since the last piece."""
        if not self._pending:
            return
        features = np.concatenate([f for f, _ in self._pending])
        labels = np.concatenate([label for _, label in self._pending])
        size = self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        if self.memory_bytes + size <= self.budget_bytes:
            self.memory.append((features, labels))
            self.memory_bytes += size
            return
        prefix = os.path.join(self.directory, f"piece-{len(self.disk):05d}")
        tf.io.gfile.makedirs(self.directory)
        tf.io.write_file(prefix + ".features", tf.io.serialize_tensor(features))
        tf.io.write_file(prefix + ".labels", tf.io.serialize_tensor(labels))
        self.disk.append(prefix)
        self.disk_bytes += size

    def dataset(self) -> tf.data.Dataset:
        """The stored (feature, label) pairs, unbatched, in the order they were added."""
        feature_dtype, feature_shape, label_dtype, label_shape = self._spec
        parts = [tf.data.Dataset.from_tensor_slices(piece) for piece in self.memory]
        if self.disk:

            def read(prefix):
                features = tf.io.parse_tensor(tf.io.read_file(prefix + ".features"), tf.as_dtype(feature_dtype))
                labels = tf.io.parse_tensor(tf.io.read_file(prefix + ".labels"), tf.as_dtype(label_dtype))
                features.set_shape([None, *feature_shape])
                labels.set_shape([None, *label_shape])
                return tf.data.Dataset.from_tensor_slices((features, labels))

            parts.append(tf.data.Dataset.from_tensor_slices(self.disk).flat_map(read))
        # A known length keeps `fit`'s epochs identical to the in-memory case (with an unknown one,
        # Keras draws the next epoch's shuffle differently).
        examples = reduce(lambda left, right: left.concatenate(right), parts)
        return examples.apply(tf.data.experimental.assert_cardinality(self.examples))


class FeatureCache:
    """Computes and keeps the features of the examples under the current base; `close()` (or leaving
    a `with` block) deletes what was spilled to `spill_dir`. With `keep_stale`, features built under an
    earlier key stay, for when that key comes back."""

    def __init__(self, source_fingerprint: str, spill_dir: str, memory_budget_bytes: int = 1 << 30,
                 keep_stale: bool = False):
        self.source_fingerprint, self.spill_dir, self.memory_budget_bytes = source_fingerprint, spill_dir, memory_budget_bytes
        self.keep_stale = keep_stale
        self.key: str | None = None
        self._built: dict[str, dict[str, _FeatureStore]] = {}  # key -> each split's store

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._built, self.key = {}, None
        if tf.io.gfile.exists(self.spill_dir):
            tf.io.gfile.rmtree(self.spill_dir)

    @property
    def _stores(self) -> dict[str, _FeatureStore]:
        return self._built.get(self.key, {})

    @property
    def cached_examples(self) -> dict[str, int]:
        """How many examples of each split the current key holds (this worker's shard only)."""
        return {split: store.examples for split, store in self._stores.items()}

    def features(
        self, model: tf.keras.Model, examples: dict[str, tf.data.Dataset], batch_size: int,
        extractor: tf.keras.Model | None = None,
    ) -> dict[str, tf.data.Dataset]:
        """Unbatched (features, label) of each split of `examples` (unbatched (inputs, label): a tensor, or a
        dict of them for a model with several inputs), in order, under `model`'s current base; computed
        again, `batch_size` examples at a time, only when the cache key changed. Under
        MultiWorkerMirroredStrategy, only this worker's shard. `extractor` (one output; default: `model`'s
        feature extractor) computes the features: a frozen prefix, say."""
        extractor = extractor or feature_extractor(model)
        multi_worker = isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy)
        shard = worker_shard() if multi_worker else (1, 0)
        key = cache_key(extractor, self.source_fingerprint, shard)
        if key not in self._built:
            if not self.keep_stale:
                self.close()  # a stale cache goes before the new one takes memory
            held = sum(store.memory_bytes for stores in self._built.values() for store in stores.values())
            self._built[key] = self._build(extractor, examples, batch_size, key, shard, self.memory_budget_bytes - held)
        self.key = key
        options = tf.data.Options()
        if shard[0] > 1:  # each worker already holds only its own shard
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return {split: store.dataset().with_options(options) for split, store in self._stores.items()}

    def _build(self, extractor, examples: dict[str, tf.data.Dataset], batch_size: int, key: str, shard,
               budget: int) -> dict[str, _FeatureStore]:
        start = time.perf_counter()
        extract = tf.function(lambda inputs: extractor(inputs, training=False), reduce_retracing=True)
        stores = {}
        for split, split_examples in examples.items():
            store = _FeatureStore(os.path.join(self.spill_dir, key, split), budget)
            for inputs, labels in split_examples.shard(*shard).batch(batch_size).prefetch(1):
                store.add(extract(inputs).numpy(), labels.numpy())
            store.seal()
            budget -= store.memory_bytes
            stores[split] = store
        logging.info(
            "Feature cache %s: %s examples, %.1f MB in memory, %.1f MB on disk, built in %.1f s",
            key,
            {split: store.examples for split, store in stores.items()},
            sum(s.memory_bytes for s in stores.values()) / 1e6,
            sum(s.disk_bytes for s in stores.values()) / 1e6,
            time.perf_counter() - start,
        )
        return stores

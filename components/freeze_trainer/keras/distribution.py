"""Chooses the tf.distribute strategy and says whether this process is the chief."""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")


def _tf_config() -> dict:
    return json.loads(os.environ.get("TF_CONFIG") or "{}")


def _cluster() -> dict:
    return _tf_config().get("cluster", {})


def cluster_workers() -> int:
    return sum(len(_cluster().get(role, [])) for role in ("chief", "master", "worker"))


def choose_strategy(kind: str = "auto") -> tf.distribute.Strategy:
    """`auto`: MultiWorkerMirroredStrategy when TF_CONFIG names several workers, MirroredStrategy for
    several local GPUs, else the default single-device strategy. `mirrored` without GPUs mirrors over
    the logical CPU devices, which is how the tests exercise it."""
    if kind == "multi_worker" or (kind == "auto" and cluster_workers() > 1):
        # Before anything lists devices: collective ops must be configured before the runtime starts.
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "auto":
        kind = "mirrored" if len(gpus) > 1 else "one_device"
    if kind == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if kind == "one_device":
        return tf.distribute.get_strategy()
    raise ValueError(f"distribution: unknown strategy {kind!r}; choose one of {STRATEGIES}")


def worker_shard() -> tuple[int, int]:
    """(number of workers, this worker's index) in MultiWorkerMirroredStrategy's order: the chief first."""
    task = _tf_config().get("task", {})
    if cluster_workers() <= 1 or not task:
        return 1, 0
    chiefs = len(_cluster().get("chief", [])) + len(_cluster().get("master", []))
    index = task.get("index", 0) + (chiefs if task.get("type") == "worker" else 0)
    return cluster_workers(), index


def is_chief() -> bool:
    """The process that exports: TF_CONFIG's chief (or master), or worker 0 when there is none."""
    task = _tf_config().get("task", {})
    if not task or cluster_workers() <= 1:
        return True
    has_chief = bool(_cluster().get("chief") or _cluster().get("master"))
    return task.get("type") in ("chief", "master") or (not has_chief and task.get("type") == "worker"
                                                        and task.get("index") == 0)

"""The trainer is written against tf-keras (Keras 2). TensorFlow 2.16 routes `tf.keras` to Keras 3 unless
TF_USE_LEGACY_KERAS is set when `tf.keras` is first touched, so importing `freeze_trainer` sets it, and
refuses to go on in a process where `tf.keras` already resolved to Keras 3."""

from __future__ import annotations

import os
import sys

ENV_VAR = "TF_USE_LEGACY_KERAS"


class Keras3Error(ImportError):
    pass


def require_legacy_keras() -> None:
    os.environ.setdefault(ENV_VAR, "1")
    tensorflow = sys.modules.get("tensorflow")
    # `tf.keras` is a lazy loader that picks Keras 2 or 3 on first use; reading its state does not load it.
    loader = getattr(tensorflow, "__dict__", {}).get("keras")
    if getattr(loader, "__dict__", {}).get("_tfll_keras_version") == "keras_3":
        raise Keras3Error(
            "freeze_trainer needs tf-keras (Keras 2) as tf.keras, but this process already uses Keras 3 as "
            f"tf.keras: set {ENV_VAR}=1 in the environment, or import freeze_trainer before TensorFlow."
        )
    if os.environ[ENV_VAR] not in ("1", "true", "True"):
        raise Keras3Error(f"freeze_trainer needs tf-keras (Keras 2): {ENV_VAR} is {os.environ[ENV_VAR]!r}; set it to 1.")

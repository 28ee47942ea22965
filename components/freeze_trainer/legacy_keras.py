"""The trainer is written against tf-keras (Keras 2). TensorFlow 2.16 routes `tf.keras` to Keras 3 unless
TF_USE_LEGACY_KERAS is set when `tf.keras` is first touched, so importing `freeze_trainer` sets it, and
refuses to go on in a process where `tf.keras` already resolved to Keras 3."""

from __future__ import annotations

import os
import sys

ENV_VAR = "TF_USE_LEGACY_KERAS"
_LEGACY_VALUES = ("1", "true", "True")


class Keras3Error(ImportError):
    pass


def _resolved_to_keras_3(keras) -> bool:
    """Whether `tf.keras` (TensorFlow's module attribute) already resolved to Keras 3.

    Before first use it is a `KerasLazyLoader` that has chosen nothing. Its first attribute access picks
    Keras 2 or 3 (recording `_tfll_keras_version`) and then replaces itself, in TensorFlow's namespace,
    by the chosen module: `tf_keras.api._v2.keras` for tf-keras, `keras._tf_keras.keras` for Keras 3."""
    if keras is None:
        return False
    state = getattr(keras, "__dict__", {})
    if "_tfll_initialized" in state:  # still the lazy loader: initialised (by dir()) but not yet loaded
        return state.get("_tfll_keras_version") == "keras_3"
    name = getattr(keras, "__name__", "")
    if name.split(".")[0] == "tf_keras":
        return False
    return name.split(".")[0] == "keras" and str(getattr(keras, "__version__", "3")).startswith("3")


def require_legacy_keras() -> None:
    tensorflow = sys.modules.get("tensorflow")
    # Reading TensorFlow's namespace directly does not trigger the lazy loader.
    if _resolved_to_keras_3(getattr(tensorflow, "__dict__", {}).get("keras")):
        raise Keras3Error(
            "freeze_trainer needs tf-keras (Keras 2) as tf.keras, but this process already uses Keras 3 as "
            f"tf.keras: set {ENV_VAR}=1 in the environment, or import freeze_trainer before TensorFlow and TFX."
        )
    os.environ.setdefault(ENV_VAR, "1")
    if os.environ[ENV_VAR] not in _LEGACY_VALUES:
        raise Keras3Error(
            f"freeze_trainer needs tf-keras (Keras 2): {ENV_VAR} is {os.environ[ENV_VAR]!r}; set it to 1."
        )

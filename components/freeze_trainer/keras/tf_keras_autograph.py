"""Keeps AutoGraph out of tf-keras' own source code.

AutoGraph never converts modules named `tensorflow` or `keras`, but TensorFlow 2.16 does not know
the `tf_keras` package (Keras 2, which TFX 1.16 uses). So the first `fit` converts the whole of
Keras' training loop and every layer call through AST rewriting: 90 s before the first step of a
frozen MobileNetV2 on 2 cores, 6 s with this rule. Keras' code is graph-safe as written, which is
why TensorFlow exempts it under its other name. The rule list is private TensorFlow API, so this
degrades to a no-op if it moves.
"""

from __future__ import annotations

from absl import logging


def exempt_tf_keras_from_autograph() -> None:
    try:
        from tensorflow.python.autograph.core import config
    except ImportError:  # pragma: no cover - a TensorFlow that moved its private config
        logging.warning("AutoGraph's conversion rules were not found; tf-keras tracing stays slow.")
        return
    rule = config.DoNotConvert("tf_keras")
    if not any(getattr(existing, "_prefix", None) == "tf_keras" for existing in config.CONVERSION_RULES):
        config.CONVERSION_RULES = (rule, *config.CONVERSION_RULES)

"""Adam with a learning-rate multiplier per variable, for per-group and decayed learning rates.

Adam's step is linear in the learning rate, so scaling the step a variable takes by `k` is exactly
Adam at `k` × the rate, with the same moment estimates. One optimizer serves every phase: it is
built once over every variable any phase will train, so moments survive phase changes and a newly
unfrozen variable is already known (tf-keras otherwise fails with "optimizer cannot recognize
variable" when the set of trainable variables grows).
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf


class LayerRateAdam(tf.keras.optimizers.Adam):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._multipliers: dict[str, float] = {}

    def set_multipliers(self, multipliers: Iterable[tuple[tf.Variable, float]]) -> None:
        """Takes effect when the training step is next traced (Keras retraces after `compile`)."""
        self._multipliers = {self._var_key(variable): float(k) for variable, k in multipliers if k != 1.0}

    def update_step(self, gradient, variable):
        multiplier = self._multipliers.get(self._var_key(variable))
        if multiplier is None:
            return super().update_step(gradient, variable)
        before = tf.identity(variable)
        super().update_step(gradient, variable)
        variable.assign(before + multiplier * (variable - before))

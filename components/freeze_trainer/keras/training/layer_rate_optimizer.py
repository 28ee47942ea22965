"""Adam with a step count and a learning-rate multiplier per variable, and a warm-up of chosen variables.

One optimizer serves every phase: it is built once over every variable any phase will train, so a newly
unfrozen variable is already known (tf-keras otherwise fails with "optimizer cannot recognize variable"
when the set of trainable variables grows). Each variable keeps its own step count (a `step` slot beside
Adam's `m` and `v`, as PyTorch's Adam keeps one per parameter): its bias correction counts the steps it
trained, not the optimizer's `iterations`, so a variable unfrozen at step 190 takes a fresh Adam's first
step. `reset_state` starts chosen variables afresh (moments and step count) at a phase start.

A multiplier k on a variable scales its learning rate: Adam's step is linear in the rate, so this is
exactly Adam at k × the rate. A warm-up scales the multiplier of chosen variables by a factor that grows
with the phase's steps (`Warmup.factor`). Multipliers, warm-up and the phase's first step live in
variables read inside the graph: changing them takes effect at the next step, without retracing, and
they survive a checkpoint with the moments and step counts.
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf

from freeze_trainer.policy.freeze_policy import Warmup


class LayerRateAdam(tf.keras.optimizers.Adam):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending_multipliers: dict = {}

    def build(self, var_list):
        super().build(var_list)
        if getattr(self, "_layer_rates_built", False):
            return
        self._layer_rates_built = True
        self._steps = [self.add_variable_from_reference(var, "step", shape=[]) for var in var_list]
        count = len(var_list)
        self._multipliers = self.add_variable([count], tf.float32, "ones", "lr_multiplier")
        self._warms = self.add_variable([count], tf.float32, "zeros", "warms_up")
        # The warm-up of this phase: [linear ramp steps, start ratio, growth per epoch (0: linear), epoch steps].
        self._warmup = self.add_variable([4], tf.float32, "zeros", "warmup")
        self._phase_start = self.add_variable([], tf.int64, "zeros", "phase_start")
        self._assign_multipliers(self._pending_multipliers)

    def _indices(self, variables: Iterable[tf.Variable]) -> list[int]:
        """Positions of the variables the optimizer was built over (others are ignored)."""
        keys = (self._var_key(variable) for variable in variables)
        return [self._index_dict[key] for key in keys if key in self._index_dict]

    def _assign_multipliers(self, multipliers: dict) -> None:
        values = [1.0] * len(self._steps)
        for key, (_, k) in multipliers.items():
            if key in self._index_dict:
                values[self._index_dict[key]] = k
        self._multipliers.assign(values)

    def set_multipliers(self, multipliers: Iterable[tuple[tf.Variable, float]]) -> None:
        """Each variable's rate as a multiple of the optimizer's; variables left out train at 1 ×."""
        self._pending_multipliers = {self._var_key(variable): (variable, float(k)) for variable, k in multipliers}
        if getattr(self, "_layer_rates_built", False):
            self._assign_multipliers(self._pending_multipliers)

    def set_warmup(self, variables: Iterable[tf.Variable], warmup: Warmup | None, epoch_steps: int) -> None:
        """From the phase's first step (`start_phase`) on, `variables` ramp up to their rate as `warmup`
        says; every other variable trains at its rate. None: no warm-up."""
        warms = [0.0] * len(self._steps)
        if warmup is not None:
            for index in self._indices(variables):
                warms[index] = 1.0
        self._warms.assign(warms)
        schedule = [0.0, 0.0, 0.0, 1.0]
        if warmup is not None:
            schedule = [float(warmup.ramp_steps(epoch_steps)), warmup.ratio, warmup.growth or 0.0, float(epoch_steps)]
        self._warmup.assign(schedule)

    def start_phase(self) -> None:
        """Marks the next step as the phase's first: the warm-up counts from it."""
        self._phase_start.assign(self.iterations)

    def reset_state(self, variables: Iterable[tf.Variable] | None = None) -> None:
        """A fresh Adam for `variables` (None: every variable): zero moments and step count."""
        slots = [self._momentums, self._velocities, self._steps]
        if self.amsgrad:
            slots.append(self._velocity_hats)
        for index in range(len(self._steps)) if variables is None else self._indices(variables):
            for slot in slots:
                slot[index].assign(tf.zeros(slot[index].shape, slot[index].dtype))

    def step_count(self, variable: tf.Variable) -> int:
        """How many updates `variable` has taken since its state was last reset."""
        return int(self._steps[self._index_dict[self._var_key(variable)]].numpy())

    def warmup_factor(self, index: int) -> tf.Tensor:
        """The warm-up's factor on variable `index`'s rate at the coming step (1 where it does not warm up)."""
        ramp_steps, ratio, growth, epoch_steps = tf.unstack(tf.convert_to_tensor(self._warmup))
        step = tf.cast(self.iterations - self._phase_start + 1, tf.float32)  # the phase's step, from 1
        linear = ratio + (1.0 - ratio) * step / tf.maximum(ramp_steps, 1.0)
        geometric = ratio * tf.pow(tf.maximum(growth, 1.0), tf.floor((step - 1.0) / tf.maximum(epoch_steps, 1.0)))
        ramp = tf.minimum(1.0, tf.where(growth > 0.0, geometric, linear))
        return tf.where(self._warms[index] > 0.0, ramp, 1.0)

    def update_step(self, gradient, variable):
        """Adam's update with the variable's own step count, at its multiplier × warm-up × the rate."""
        index = self._index_dict[self._var_key(variable)]
        dtype = variable.dtype
        local_step = tf.cast(self._steps[index].assign_add(tf.ones([], self._steps[index].dtype)), dtype)
        beta_1_power = tf.pow(tf.cast(self.beta_1, dtype), local_step)
        beta_2_power = tf.pow(tf.cast(self.beta_2, dtype), local_step)
        factor = self._multipliers[index] * self.warmup_factor(index)
        lr = tf.cast(self.learning_rate, dtype) * tf.cast(factor, dtype)
        m = self._momentums[index]
        v = self._velocities[index]
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        epsilon = self.epsilon * tf.sqrt(1 - beta_2_power) if self.adaptive_epsilon else self.epsilon
        if isinstance(gradient, tf.IndexedSlices):
            m.assign_add(-m * (1 - self.beta_1))
            m.scatter_add(tf.IndexedSlices(gradient.values * (1 - self.beta_1), gradient.indices))
            v.assign_add(-v * (1 - self.beta_2))
            v.scatter_add(tf.IndexedSlices(tf.square(gradient.values) * (1 - self.beta_2), gradient.indices))
        else:
            m.assign_add((gradient - m) * (1 - self.beta_1))
            v.assign_add((tf.square(gradient) - v) * (1 - self.beta_2))
        if self.amsgrad:
            v_hat = self._velocity_hats[index]
            v_hat.assign(tf.maximum(v_hat, v))
            v = v_hat
        variable.assign_sub((m * alpha) / (tf.sqrt(v) + epsilon))

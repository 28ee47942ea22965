"""The phase transition of fine-tuning (issue #14): per-variable Adam state, optimizer_state, warm-up and
restore_best, under both loops, a MirroredStrategy and a resumed checkpoint."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from freeze_trainer.keras.models.classifier_model import backbone_of, build_classifier
from freeze_trainer.keras.training.fit_training import train_with_fit
from freeze_trainer.keras.planning.freeze_plan import plan_policy
from freeze_trainer.keras.training.gradient_tape_loop import train_with_gradient_tape
from freeze_trainer.keras.training.layer_rate_optimizer import LayerRateAdam
from freeze_trainer.keras.training.phase_runner import build_phase_optimizer, newly_trainable_variables
from freeze_trainer.keras.planning.phase_schedule import build_schedule
from freeze_trainer.keras.planning.plan_report import format_plan
from freeze_trainer.policy.freeze_policy import PolicyError, Warmup, parse_policy, policy_from_dict
from tests.model_builders import SHAPE, random_images

LOOPS = {"fit": train_with_fit, "gradient_tape": train_with_gradient_tape}
RTOL = 1e-6
FREEZE_BASE = {"freeze": {"base": True}}
UNFREEZE_B = {"unfreeze": {"names": ["conv_b"]}}
BATCH, EXAMPLES = 8, 16  # two steps an epoch


def _tiny(num_classes: int = 3) -> tf.keras.Model:
    """conv_a, bn, conv_b under the standard head, without dropout: every step is deterministic."""
    backbone = tf.keras.Sequential(
        [tf.keras.Input(SHAPE), tf.keras.layers.Conv2D(4, 3, strides=4, name="conv_a"),
         tf.keras.layers.BatchNormalization(name="bn"), tf.keras.layers.Conv2D(2, 1, name="conv_b")],
        name="tiny_backbone",
    )
    return build_classifier(backbone, "MobileNetV2", num_classes, bn_inference_mode=True, dropout=0.0)


def _data():
    images, labels = random_images(EXAMPLES)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH)


def _phases(*phases) -> dict:
    return {"version": 1, "phases": list(phases)}


def _run(policy: dict, loop: str = "fit", make_callbacks=lambda model, optimizer: [], **kwargs):
    tf.keras.utils.set_random_seed(0)
    model = _tiny()
    plans = plan_policy(policy_from_dict(policy), model, 1e-2, 1)
    optimizer = build_phase_optimizer(model, plans)
    data = _data()
    checks, metrics = LOOPS[loop](model, plans, data, data, callbacks=make_callbacks(model, optimizer), verbose=0,
                                  optimizer=optimizer, **kwargs)
    return model, optimizer, checks, metrics


def _index(optimizer, variable) -> int:
    return optimizer._index_dict[optimizer._var_key(variable)]


def _adam_deltas(gradients, learning_rates, initial):
    """The updates a fresh tf.keras Adam takes from `initial`, one learning rate per step."""
    variable = tf.Variable(initial)
    adam = tf.keras.optimizers.Adam(1.0)
    deltas = []
    for gradient, rate in zip(gradients, learning_rates):
        adam.learning_rate = rate
        before = variable.numpy().copy()
        adam.apply_gradients([(tf.constant(gradient), variable)])
        deltas.append(variable.numpy() - before)
    return deltas


GRADIENTS = [np.array([0.3, -1.0, 2.0], np.float32), np.array([0.1, 0.5, -0.2], np.float32),
             np.array([-0.7, 0.2, 0.9], np.float32), np.array([0.4, 0.4, -1.5], np.float32)] * 2


# Per-variable Adam state ------------------------------------------------------------------------------


def test_a_variable_first_trained_late_takes_a_fresh_adams_first_steps():
    early, late = tf.Variable([1.0, 2.0, 3.0]), tf.Variable([1.0, 2.0, 3.0])
    optimizer = LayerRateAdam(1e-2)
    optimizer.build([early, late])
    for gradient in GRADIENTS * 20:  # 160 steps of another variable before `late` trains
        optimizer.apply_gradients([(tf.constant(gradient), early)])
    deltas = []
    for gradient in GRADIENTS[:3]:
        before = late.numpy().copy()
        optimizer.apply_gradients([(tf.constant(gradient), late)])
        deltas.append(late.numpy() - before)
    assert int(optimizer.iterations) == 163 and optimizer.step_count(late) == 3
    for ours, fresh in zip(deltas, _adam_deltas(GRADIENTS[:3], [1e-2] * 3, [1.0, 2.0, 3.0])):
        np.testing.assert_allclose(ours, fresh, rtol=RTOL)


def test_reset_state_starts_a_variable_afresh_and_leaves_the_others():
    kept, reset = tf.Variable([0.5, 0.5, 0.5]), tf.Variable([1.0, 2.0, 3.0])
    optimizer = LayerRateAdam(1e-2)
    optimizer.build([kept, reset])
    for gradient in GRADIENTS:
        optimizer.apply_gradients([(tf.constant(gradient), kept), (tf.constant(gradient), reset)])
    optimizer.reset_state([reset])
    assert optimizer.step_count(kept) == len(GRADIENTS) and optimizer.step_count(reset) == 0
    start = reset.numpy().copy()
    before = reset.numpy().copy()
    optimizer.apply_gradients([(tf.constant(GRADIENTS[0]), reset)])
    np.testing.assert_allclose(reset.numpy() - before, _adam_deltas(GRADIENTS[:1], [1e-2], start)[0], rtol=RTOL)


class _WeightsAtBatch(tf.keras.callbacks.Callback):
    """Copies one variable after every training batch, counted across phases."""

    def __init__(self, variable):
        super().__init__()
        self.variable, self.values = variable, []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(self.variable.numpy().copy())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_the_first_update_of_a_variable_unfrozen_in_phase_two_is_a_fresh_adams(loop):
    """Phase 1 trains the head for 3 epochs (6 steps); phase 2 unfreezes conv_b. Its first step, recovered
    from its first moment m = (1 - beta_1) g, must be a fresh Adam's step on g at the phase's rate."""
    policy = _phases({"name": "head", "epochs": 3, "rules": [FREEZE_BASE]},
                     {"name": "top", "epochs": 1, "learning_rate": 1e-3, "rules": [FREEZE_BASE, UNFREEZE_B]})
    state = {}

    class _FirstStep(tf.keras.callbacks.Callback):
        def __init__(self, kernel, optimizer):
            super().__init__()
            self.kernel, self.optimizer, self.batches = kernel, optimizer, 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if self.batches == 6:
                state["start"] = self.kernel.numpy().copy()
            if self.batches == 7:
                state["after"] = self.kernel.numpy().copy()
                state["m"] = self.optimizer._momentums[_index(self.optimizer, self.kernel)].numpy().copy()
                state["steps"] = self.optimizer.step_count(self.kernel)

    def probe(model, optimizer):
        return [_FirstStep(backbone_of(model).get_layer("conv_b").kernel, optimizer)]

    _, optimizer, checks, _ = _run(policy, loop, probe)
    assert all(check.passed for check in checks)
    assert state["steps"] == 1 and int(optimizer.iterations) == 8
    gradient = state["m"] / (1 - optimizer.beta_1)
    fresh = _adam_deltas([gradient], [1e-3], state["start"])[0]
    np.testing.assert_allclose(state["after"] - state["start"], fresh, rtol=RTOL, atol=1e-12)


def _step_counts(mode: str, loop: str = "fit"):
    """Phase 1 trains the head and conv_b, phase 2 the head alone, phase 3 the head and conv_b again."""
    policy = _phases(
        {"name": "one", "epochs": 1, "rules": [FREEZE_BASE, UNFREEZE_B]},
        {"name": "two", "epochs": 1, "rules": [FREEZE_BASE], "optimizer_state": mode},
        {"name": "three", "epochs": 1, "rules": [FREEZE_BASE, UNFREEZE_B], "optimizer_state": mode},
    )
    model, optimizer, checks, _ = _run(policy, loop)
    assert all(check.passed for check in checks)
    head = model.get_layer("head_classifier").kernel
    conv_b = backbone_of(model).get_layer("conv_b").kernel
    return optimizer.step_count(head), optimizer.step_count(conv_b)


@pytest.mark.parametrize(
    "mode, head_steps, conv_b_steps",
    [
        ("keep", 6, 4),  # everything carries over: conv_b's count resumes where phase 1 left it
        ("reset_new", 6, 2),  # conv_b did not train in phase 2: it starts fresh in phase 3; the head keeps
        ("reset", 2, 2),  # every variable starts fresh at phase 3's start
    ],
)
def test_optimizer_state_modes(mode, head_steps, conv_b_steps):
    assert _step_counts(mode) == (head_steps, conv_b_steps)


def test_optimizer_state_defaults_to_reset_and_the_lightning_and_ulmfit_recipes_reset_new():
    policy = parse_policy(json.dumps(_phases({"name": "p", "rules": [FREEZE_BASE]})))
    assert policy.resolved_phases()[0].optimizer_state_mode == "reset"
    assert "optimizer_state" not in policy.canonical_json()  # an unset default keeps the policy's hash
    recipes = {
        "head_then_top": {"head_epochs": 1, "finetune_epochs": 1, "top_layers": 3, "finetune_learning_rate": 1e-4},
        "backbone_at_epoch": {"unfreeze_at_epoch": 1, "epochs": 3},
        "gradual": {},
    }
    for name, spec in recipes.items():
        phases = parse_policy(json.dumps({"version": 1, "recipe": {name: spec}})).resolved_phases()
        # Safe defaults: every phase after the head restores its best epoch (or its start).
        assert [phase.restores_best for phase in phases] == [False] + [True] * (len(phases) - 1), name
        expected = "reset" if name == "head_then_top" else "reset_new"  # the Keras guide; Lightning and ULMFiT
        assert {phase.optimizer_state_mode for phase in phases[1:]} == {expected}, name
        off = parse_policy(json.dumps({"version": 1, "recipe": {name: {**spec, "restore_best": False}}}))
        assert not any(phase.restores_best for phase in off.resolved_phases()), name


# Warm-up ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "warmup, epoch_steps, factors",
    [
        (Warmup(steps=4), 3, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]),
        (Warmup(epochs=2), 2, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]),
        (Warmup(steps=4, ratio=0.2), 3, [0.4, 0.6, 0.8, 1.0, 1.0, 1.0]),
        (Warmup(ratio=0.1, growth=4.0), 2, [0.1, 0.1, 0.4, 0.4, 1.0, 1.0]),
    ],
)
def test_warmup_ramps_the_new_variables_rate_inside_one_traced_step(warmup, epoch_steps, factors):
    warming, steady = tf.Variable([1.0, 2.0, 3.0]), tf.Variable([1.0, 2.0, 3.0])
    optimizer = LayerRateAdam(1e-2)
    optimizer.build([steady, warming])
    optimizer.set_multipliers([(warming, 0.5)])
    for gradient in GRADIENTS[:3]:  # a previous phase: the warm-up counts from the phase's own start
        optimizer.apply_gradients([(tf.constant(gradient), steady)])
    optimizer.reset_state([steady])
    optimizer.set_warmup([warming], warmup, epoch_steps)
    optimizer.start_phase()
    traces = []

    @tf.function
    def step(gradient):
        traces.append(1)
        optimizer.apply_gradients([(gradient, warming), (gradient, steady)])

    warm_deltas, steady_deltas = [], []
    for gradient in GRADIENTS[: len(factors)]:
        before = warming.numpy().copy(), steady.numpy().copy()
        step(tf.constant(gradient))
        warm_deltas.append(warming.numpy() - before[0])
        steady_deltas.append(steady.numpy() - before[1])
    assert len(traces) == 1  # the factor is computed in the graph: no retrace per step
    assert [warmup.factor(k, epoch_steps) for k in range(1, len(factors) + 1)] == pytest.approx(factors)
    gradients = GRADIENTS[: len(factors)]
    expected = _adam_deltas(gradients, [0.5e-2 * factor for factor in factors], [1.0, 2.0, 3.0])
    for ours, fresh in zip(warm_deltas, expected):
        np.testing.assert_allclose(ours, fresh, rtol=RTOL)
    # The variable that is not new trains at its full rate from the first step.
    steady_start = steady.numpy() - sum(steady_deltas)
    for ours, fresh in zip(steady_deltas, _adam_deltas(gradients, [1e-2] * len(factors), steady_start)):
        np.testing.assert_allclose(ours, fresh, rtol=1e-5)


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_warmup_in_a_phase_ramps_only_the_newly_trainable_layers(loop):
    policy = _phases({"name": "head", "epochs": 1, "rules": [FREEZE_BASE]},
                     {"name": "top", "epochs": 2, "warmup_steps": 4, "rules": [FREEZE_BASE, UNFREEZE_B]})
    factors = {"conv_b": [], "head_classifier": []}

    class _Factors(tf.keras.callbacks.Callback):
        def __init__(self, model, optimizer):
            super().__init__()
            self.optimizer = optimizer
            self.kernels = {"conv_b": backbone_of(model).get_layer("conv_b").kernel,
                            "head_classifier": model.get_layer("head_classifier").kernel}

        def on_train_batch_begin(self, batch, logs=None):
            for name, kernel in self.kernels.items():
                factors[name].append(float(self.optimizer.warmup_factor(_index(self.optimizer, kernel))))

    _, optimizer, checks, _ = _run(policy, loop, lambda model, optimizer: [_Factors(model, optimizer)])
    assert all(check.passed for check in checks)
    # Phase 1 (2 steps) has no warm-up; phase 2 (4 steps) ramps conv_b only, from its first step.
    assert factors["conv_b"] == pytest.approx([1.0, 1.0, 0.25, 0.5, 0.75, 1.0])
    assert factors["head_classifier"] == pytest.approx([1.0] * 6)


# restore_best ----------------------------------------------------------------------------------------


class _ScriptedValLoss(tf.keras.callbacks.Callback):
    """Replaces each epoch's `val_loss` by a scripted value (by epoch number) and keeps every epoch's
    weights, so that the best epoch is known in advance."""

    def __init__(self, model_variables, losses: dict):
        super().__init__()
        self.variables, self.losses, self.weights, self.measured = model_variables, losses, {}, {}

    def on_epoch_end(self, epoch, logs=None):
        self.measured[epoch] = logs["val_loss"]
        if epoch in self.losses:
            logs["val_loss"] = self.losses[epoch]
        self.weights[epoch] = [v.numpy().copy() for v in self.variables]


RESTORE_POLICY = _phases(
    {"name": "head", "epochs": 1, "rules": [FREEZE_BASE]},
    {"name": "top", "epochs": 3, "restore_best": True, "rules": [FREEZE_BASE, UNFREEZE_B]},
)
SCRIPT = {1: 30.0, 2: 0.01, 3: 20.0}  # phase 2 runs the run's epochs 1-3 (from 0); its second is best


def _restore_run(loop, script=SCRIPT, policy=RESTORE_POLICY, **kwargs):
    tf.keras.utils.set_random_seed(0)
    model = _tiny()
    plans = plan_policy(policy_from_dict(policy), model, 1e-2, 1)
    script = _ScriptedValLoss(model.variables, script)
    data = _data()
    checks, metrics = LOOPS[loop](model, plans, data, data, callbacks=[script, *kwargs.pop("callbacks", [])],
                                  verbose=0, **kwargs)
    return model, plans, script, checks, metrics


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_restore_best_ends_the_phase_with_its_best_epoch_and_the_proof_holds(loop):
    model, plans, script, checks, metrics = _restore_run(loop)
    assert [check.passed for check in checks] == [True, True]
    assert checks[0].best_epoch is None and checks[1].best_epoch == 2
    assert metrics["val_loss"] == 0.01  # the metrics of the weights the run ended with
    changing = plans[1].variable_split(model).may_change()
    for variable, best, last in zip(model.variables, script.weights[2], script.weights[3]):
        if variable.ref() in changing:
            np.testing.assert_array_equal(variable.numpy(), best, err_msg=variable.name)
        else:  # frozen in phase 2: untouched by the restore
            np.testing.assert_array_equal(variable.numpy(), last, err_msg=variable.name)
    assert any(not np.array_equal(b, l) for b, l in zip(script.weights[2], script.weights[3]))


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_restore_best_returns_to_the_phase_start_when_no_epoch_beats_it(loop):
    """The start's loss is the one the head phase ended with: fine-tuning never ends below the head."""
    model, plans, script, checks, metrics = _restore_run(loop, script={1: 30.0, 2: 20.0, 3: 40.0})
    assert [check.passed for check in checks] == [True, True]
    assert checks[1].best_epoch == 0  # the head's last epoch: the phase's start
    assert checks[1].unchanged_trainable == ()  # training moved every trainable variable before the restore
    assert metrics["val_loss"] == pytest.approx(script.measured[0])  # what the head phase ended with
    for variable, start in zip(model.variables, script.weights[0]):
        np.testing.assert_array_equal(variable.numpy(), start, err_msg=variable.name)


def test_restore_best_in_a_first_phase_picks_among_its_epochs():
    policy = _phases({"name": "head", "epochs": 3, "restore_best": True, "rules": [FREEZE_BASE]})
    model, _, script, checks, metrics = _restore_run("fit", script={0: 2.0, 1: 1.5, 2: 3.0}, policy=policy)
    assert checks[0].passed and checks[0].best_epoch == 1 and metrics["val_loss"] == 1.5
    for variable, best in zip(model.variables, script.weights[1]):
        np.testing.assert_array_equal(variable.numpy(), best, err_msg=variable.name)


def test_restore_best_needs_evaluation_data():
    tf.keras.utils.set_random_seed(0)
    model = _tiny()
    plans = plan_policy(policy_from_dict(RESTORE_POLICY), model, 1e-2, 1)
    with pytest.raises(ValueError, match="restore_best"):
        train_with_fit(model, plans, _data(), None, verbose=0)


class _Preempted(Exception):
    pass


class _StopAtBatch(tf.keras.callbacks.Callback):
    def __init__(self, at: int):
        super().__init__()
        self.at, self.batches = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches == self.at:
            raise _Preempted()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_resumed_restore_best_phase_ends_as_an_uninterrupted_one(tmp_path, loop):
    """Checkpoints at every epoch's end; killed in phase 2's third epoch, after its best epoch was saved."""
    whole_model, _, _, whole_checks, _ = _restore_run(loop)
    with pytest.raises(_Preempted):
        _restore_run(loop, callbacks=[_StopAtBatch(7)], checkpoint_dir=str(tmp_path))
    model, _, _, checks, _ = _restore_run(loop, checkpoint_dir=str(tmp_path))
    assert [check.as_dict() for check in checks] == [check.as_dict() for check in whole_checks]
    for ours, whole in zip(model.variables, whole_model.variables):
        np.testing.assert_array_equal(ours.numpy(), whole.numpy(), err_msg=ours.name)


# Policy, plan text and report ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phase, reason",
    [
        ({"warmup_steps": 2, "warmup_epochs": 1}, "one of `warmup_steps`"),
        ({"warmup_ratio": 0.5}, "needs `warmup_steps`"),
        ({"warmup_growth": 1.5, "warmup_ratio": 0.0}, "starts above 0"),
        ({"warmup_steps": 0}, "greater than 0"),
        ({"optimizer_state": "fresh"}, "'keep', 'reset' or 'reset_new'"),
    ],
)
def test_bad_transition_settings_are_policy_errors(phase, reason):
    with pytest.raises(PolicyError, match=reason):
        parse_policy(json.dumps(_phases({"name": "p", "rules": [FREEZE_BASE], **phase})))


def test_plan_text_and_report_show_the_transition():
    policy = policy_from_dict(_phases(
        {"name": "head", "epochs": 1, "rules": [FREEZE_BASE]},
        {"name": "top", "epochs": 2, "warmup_epochs": 1, "restore_best": True, "rules": [FREEZE_BASE, UNFREEZE_B]},
    ))
    model = _tiny()
    plans = plan_policy(policy, model, 1e-2, 1)
    # What the warm-up ramps and `reset_new` starts fresh: conv_b's variables, not the head's (trained before).
    new = newly_trainable_variables(model, build_schedule(plans)[1])
    assert sorted(v.name for v in new) == ["conv_b/bias:0", "conv_b/kernel:0"]
    lines = [line for line in format_plan(plans) if line.startswith("phase ")]
    assert "optimizer state" not in lines[0]
    assert ("; optimizer state reset (every variable starts a fresh Adam); 1 newly trainable "
            "layer(s) warm up linearly from 0 × their rate over 1 epoch; ends with its best epoch's weights "
            "(restore_best); no feature cache") in lines[1]
    assert plans[1].transition() == {"optimizer_state": "reset", "warmup": {"epochs": 1, "ratio": 0.0},
                                     "restore_best": True}
    assert plans[0].transition() == {"optimizer_state": "reset", "warmup": None, "restore_best": False}


# MirroredStrategy ------------------------------------------------------------------------------------

_MIRRORED = r"""
import os, sys, json
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np, tensorflow as tf
sys.path.insert(0, sys.argv[1])
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from freeze_trainer.keras.distribution import choose_strategy
from freeze_trainer.keras.models.classifier_model import backbone_of
from freeze_trainer.keras.training.fit_training import train_with_fit
from freeze_trainer.keras.training.gradient_tape_loop import train_with_gradient_tape
from freeze_trainer.keras.planning.freeze_plan import plan_policy
from freeze_trainer.keras.training.phase_runner import build_phase_optimizer
from freeze_trainer.policy.freeze_policy import policy_from_dict
from tests.test_finetune_transition import _tiny, _data, _adam_deltas
strategy = choose_strategy("mirrored")
policy = {"version": 1, "phases": [
    {"name": "head", "epochs": 2, "rules": [{"freeze": {"base": True}}]},
    {"name": "top", "epochs": 1, "learning_rate": 1e-3, "warmup_steps": 2, "restore_best": True,
     "rules": [{"freeze": {"base": True}}, {"unfreeze": {"names": ["conv_b"]}}]}]}
out = {}
for loop in ("fit", "gradient_tape"):
    tf.keras.utils.set_random_seed(0)
    with strategy.scope():
        model = _tiny()
        plans = plan_policy(policy_from_dict(policy), model, 1e-2, 1)
        optimizer = build_phase_optimizer(model, plans)
        kernel = backbone_of(model).get_layer("conv_b").kernel
        seen = {}
        class Probe(tf.keras.callbacks.Callback):
            batches = 0
            def on_train_batch_end(self, batch, logs=None):
                Probe.batches += 1
                if Probe.batches == 4:
                    seen["start"] = kernel.numpy().copy()
                if Probe.batches == 5:
                    index = optimizer._index_dict[optimizer._var_key(kernel)]
                    seen["after"] = kernel.numpy().copy()
                    seen["m"] = optimizer._momentums[index].numpy().copy()
                    seen["steps"] = optimizer.step_count(kernel)
        train = train_with_fit if loop == "fit" else (
            lambda *a, **k: train_with_gradient_tape(*a, strategy=strategy, **k))
        checks, _ = train(model, plans, _data(), _data(), verbose=0, optimizer=optimizer, callbacks=[Probe()])
    gradient = seen["m"] / (1 - optimizer.beta_1)
    fresh = _adam_deltas([gradient], [1e-3 * 0.5], seen["start"])[0]  # warm-up factor 1/2 at its first step
    agree = all(all(np.array_equal(np.asarray(c.numpy()), np.asarray(v.values[0].numpy())) for c in v.values)
                for v in model.variables if hasattr(v, "values"))
    out[loop] = {"passed": [c.passed for c in checks], "best_epoch": checks[1].best_epoch, "steps": seen["steps"],
                 "close": bool(np.allclose(seen["after"] - seen["start"], fresh, rtol=1e-6, atol=1e-12)),
                 "agree": agree, "replicas": strategy.num_replicas_in_sync}
print(json.dumps(out))
"""


def test_fresh_state_warmup_and_restore_best_under_mirrored_strategy():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", _MIRRORED, root], capture_output=True, text=True, timeout=600,
                            cwd=root)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for loop in ("fit", "gradient_tape"):
        assert out[loop] == {"passed": [True, True], "best_epoch": 2, "steps": 1, "close": True, "agree": True,
                             "replicas": 2}, loop

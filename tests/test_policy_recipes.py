"""Each recipe shortcut over a short multi-phase `fit` run, with the per-phase freeze proof."""

import json

import pytest
import tensorflow as tf

from freeze_trainer.keras.training.fit_training import train_with_fit
from freeze_trainer.keras.planning.freeze_plan import plan_policy
from freeze_trainer.policy.freeze_policy import parse_policy
from tests.model_builders import classifier, random_images

RECIPES = {
    "head_then_top": (
        {"head_then_top": {"head_epochs": 1, "finetune_epochs": 1, "top_fraction": 0.1, "finetune_learning_rate": 7e-6}},
        ["head", "finetune"],
    ),
    "backbone_at_epoch": (
        {"backbone_at_epoch": {"unfreeze_at_epoch": 1, "epochs": 4, "initial_ratio": 0.25, "growth": 2.0}},
        ["head", "backbone_epoch_1", "backbone_epoch_2", "backbone_aligned"],
    ),
    "gradual": ({"gradual": {"epochs_per_group": 1, "factor": 2.6}}, ["head", "top_1_groups", "top_2_groups"]),
}


class _PhaseStarts(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.iterations, self.optimizer_variables = [], []

    def on_train_begin(self, logs=None):
        self.iterations.append(int(self.model.optimizer.iterations.numpy()))
        self.optimizer_variables.append(len(self.model.optimizer.variables))


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_runs_every_phase_with_a_passing_proof(recipe):
    spec, phase_names = RECIPES[recipe]
    tf.keras.utils.set_random_seed(0)
    model = classifier("MobileNetV2")
    policy = parse_policy(json.dumps({"version": 1, "auto_groups": 2, "recipe": spec}))
    plans = plan_policy(policy, model, default_learning_rate=1e-2, default_epochs=1)
    assert [plan.phase.name for plan in plans] == phase_names

    images, labels = random_images(32)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    starts = _PhaseStarts()
    checks, _ = train_with_fit(model, plans, data, data, callbacks=[starts], verbose=0)

    assert [check.phase for check in checks] == phase_names
    assert all(check.passed and not check.changed_frozen for check in checks)
    # What trains in each phase moved; the trainable set grows as the recipe unfreezes.
    assert all(len(check.unchanged_trainable) < check.trainable_variables for check in checks)
    assert checks[-1].trainable_params > checks[0].trainable_params
    # One optimizer across phases: its step count and moments carry over, never rebuilt.
    steps_per_epoch = 2
    expected = [sum(plan.epochs for plan in plans[:i]) * steps_per_epoch for i in range(len(plans))]
    assert starts.iterations == expected
    assert len(set(starts.optimizer_variables)) == 1


def test_backbone_at_epoch_grows_the_backbone_rate_until_aligned():
    policy = parse_policy(json.dumps({"version": 1, "recipe": RECIPES["backbone_at_epoch"][0]}))
    plans = plan_policy(policy, classifier("MobileNetV2"), default_learning_rate=1e-2)
    rates = [plan.state("block_16_project").learning_rate for plan in plans[1:]]
    assert rates == pytest.approx([2.5e-3, 5e-3, 1e-2])
    assert sum(plan.epochs for plan in plans) == 4
    assert plans[0].state("block_16_project").learning_rate is None


def test_head_then_top_unfreezes_the_top_tenth_at_a_low_rate():
    policy = parse_policy(json.dumps({"version": 1, "recipe": RECIPES["head_then_top"][0]}))
    model = classifier("MobileNetV2")
    finetune = plan_policy(policy, model)[1]
    backbone_states = [state for state in finetune.layers if not state.in_head]
    top = backbone_states[-round(0.1 * len(backbone_states)):]
    assert all(state.trainable for state in top if state.batchnorm is None)
    assert not any(state.trainable for state in backbone_states[: -len(top)])
    assert finetune.learning_rate == 7e-6

"""Keras `fit` under a policy, with the per-phase proof that frozen variables stayed bit-identical."""

import json

import numpy as np
import pytest
import tensorflow as tf

from freeze_trainer.keras.models.classifier_model import backbone_of
from freeze_trainer.keras.training.fit_training import train_with_fit
from freeze_trainer.keras.planning.freeze_plan import apply_plan, plan_policy
from freeze_trainer.policy.freeze_policy import parse_policy
from freeze_trainer.keras.training.freeze_proof import FreezeViolation, check_phase, raise_on_violation, snapshot
from tests.model_builders import classifier, random_images, tiny_classifier

TWO_PHASES = {
    "version": 1,
    "batchnorm": "affine",
    "phases": [
        {"name": "head", "epochs": 1, "rules": [{"freeze": {"base": True}}]},
        {"name": "top", "epochs": 1, "learning_rate": 1e-4,
         "rules": [{"freeze": {"base": True}}, {"unfreeze": {"regex": "block_16_.*|Conv_1.*"}}]},
    ],
}


@pytest.fixture(scope="module")
def trained():
    tf.keras.utils.set_random_seed(0)
    model = classifier("MobileNetV2")
    initial = {v.ref(): v.numpy().copy() for v in model.variables}
    images, labels = random_images(64)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    plans = plan_policy(parse_policy(json.dumps(TWO_PHASES)), model, 1e-2, 1)
    checks, metrics = train_with_fit(model, plans, data, data, verbose=0)
    return model, initial, checks, metrics


def test_every_phase_passes_the_freeze_proof(trained):
    _, _, checks, metrics = trained
    assert [check.phase for check in checks] == ["head", "top"]
    assert all(check.passed for check in checks)
    assert "val_accuracy" in metrics


def test_only_unfrozen_layers_changed_and_batchnorm_statistics_did_not(trained):
    model, initial, checks, _ = trained
    backbone = backbone_of(model)
    changed = {v.name for v in model.variables if not np.array_equal(v.numpy(), initial[v.ref()])}
    assert any(name.startswith("head_classifier") for name in changed)
    assert any(name.startswith("block_16_project/") for name in changed)
    assert any(name.startswith("block_16_project_BN/gamma") for name in changed)  # affine mode trains gamma
    assert not any("moving_" in name for name in changed)
    assert not any(name.startswith(("Conv1/", "block_1_", "block_15_")) for name in changed)
    top = checks[1]
    assert top.trainable_params == sum(v.shape.num_elements() for v in model.trainable_variables)
    assert top.frozen_params + top.trainable_params == sum(v.shape.num_elements() for v in model.variables)
    assert backbone.get_layer("block_15_project").trainable is False


def test_a_changed_frozen_variable_fails_the_proof():
    model = classifier("MobileNetV2")
    step = plan_policy(parse_policy('{"version": 1, "rules": [{"freeze": {"base": true}}]}'), model)[0]
    apply_plan(model, step)
    before = snapshot(model)
    bn = backbone_of(model).get_layer("bn_Conv1")
    bn.moving_variance.assign_add(tf.ones_like(bn.moving_variance) * 1e-7)
    check = check_phase(model, step, before)
    assert not check.passed
    assert check.changed_frozen == ("bn_Conv1/moving_variance:0",)
    with pytest.raises(FreezeViolation, match="bn_Conv1/moving_variance"):
        raise_on_violation(check)


def test_batchnorm_train_mode_lets_statistics_of_unfrozen_layers_move():
    tf.keras.utils.set_random_seed(0)
    model = classifier("MobileNetV2", bn_inference_mode=False)
    policy = parse_policy('{"version": 1, "batchnorm": "train", "rules": [{"freeze": {"base": true}},'
                          ' {"unfreeze": {"names": ["Conv_1", "Conv_1_bn"]}}]}')
    images, labels = random_images(32)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    before = backbone_of(model).get_layer("Conv_1_bn").moving_mean.numpy().copy()
    frozen_bn_before = backbone_of(model).get_layer("bn_Conv1").moving_mean.numpy().copy()
    checks, _ = train_with_fit(model, plan_policy(policy, model, 1e-2, 1), data, data, verbose=0)
    assert checks[0].passed
    assert not np.array_equal(backbone_of(model).get_layer("Conv_1_bn").moving_mean.numpy(), before)
    assert np.array_equal(backbone_of(model).get_layer("bn_Conv1").moving_mean.numpy(), frozen_bn_before)


def test_a_phase_in_which_nothing_trained_fails_the_proof():
    model = classifier("MobileNetV2")
    step = plan_policy(parse_policy('{"version": 1, "rules": [{"freeze": {"base": true}}]}'), model)[0]
    apply_plan(model, step)
    check = check_phase(model, step, snapshot(model))
    assert not check.passed and check.changed_frozen == ()
    with pytest.raises(FreezeViolation, match="none of its 2 trainable variables changed"):
        raise_on_violation(check)


def test_an_epoch_of_data_of_unknown_length_is_one_pass_over_it():
    tf.keras.utils.set_random_seed(0)
    model = tiny_classifier()
    images, labels = random_images(40)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).filter(lambda image, label: True).batch(16)
    assert data.cardinality() == tf.data.UNKNOWN_CARDINALITY
    plans = plan_policy(parse_policy('{"version": 1, "rules": [{"freeze": {"names": ["conv_a"]}}]}'), model, 1e-2, 2)
    checks, _ = train_with_fit(model, plans, data, data, verbose=0)
    assert checks[0].passed
    assert model.optimizer.iterations.numpy() == 2 * 3  # two epochs of three batches (16, 16, 8)

"""The three classic ways to freeze weights in TF2, each expressed as a policy."""

import numpy as np
import pytest
import tensorflow as tf

from freeze_trainer.keras.models.classifier_model import backbone_of
from freeze_trainer.keras.training.fit_training import train_with_fit
from freeze_trainer.keras.planning.freeze_plan import apply_plan, plan_policy
from freeze_trainer.policy.freeze_policy import FROZEN_BASE_POLICY, parse_policy
from freeze_trainer.keras.training.freeze_proof import FreezeViolation, check_phase, raise_on_violation, snapshot
from tests.model_builders import classifier, random_images, tiny_classifier


def _data(count=32):
    images, labels = random_images(count)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)


def _values(layer):
    return [w.numpy().copy() for w in layer.weights]


def test_one_layer_trainable_false_in_a_small_sequential():
    tf.keras.utils.set_random_seed(0)
    model = tiny_classifier()
    backbone = backbone_of(model)
    conv_a, conv_b = _values(backbone.get_layer("conv_a")), _values(backbone.get_layer("conv_b"))
    plans = plan_policy(parse_policy('{"version": 1, "rules": [{"freeze": {"names": ["conv_a"]}}]}'), model, 0.05, 2)
    checks, _ = train_with_fit(model, plans, _data(), _data(), verbose=0)
    assert checks[0].passed
    assert backbone.get_layer("conv_a").trainable is False
    assert all(np.array_equal(a, b) for a, b in zip(conv_a, _values(backbone.get_layer("conv_a"))))
    assert not all(np.array_equal(a, b) for a, b in zip(conv_b, _values(backbone.get_layer("conv_b"))))


def test_gradient_tape_applies_gradients_only_to_the_policys_trainable_variables():
    tf.keras.utils.set_random_seed(0)
    model = tiny_classifier()
    plan = plan_policy(parse_policy('{"version": 1, "rules": [{"freeze": {"names": ["conv_a"]}}]}'), model)[0]
    apply_plan(model, plan)
    trainable = plan.variable_split(model).trainable  # the plan's value, the same the optimizer and proof use
    trainable_refs = {v.ref() for v in trainable}  # `var in list` would compare tensors elementwise
    assert trainable_refs == {v.ref() for v in model.trainable_variables}
    optimizer = tf.keras.optimizers.SGD(0.1)
    before = snapshot(model)
    images, labels = random_images(16)
    with tf.GradientTape() as tape:
        loss = tf.keras.losses.sparse_categorical_crossentropy(labels, model(images, training=True))
    optimizer.apply_gradients(zip(tape.gradient(loss, trainable), trainable))
    check = check_phase(model, plan, before)
    assert check.passed
    after = snapshot(model)
    changed = {ref for ref, value in before.items() if after[ref] != value}
    assert changed and changed <= trainable_refs
    assert not {v.ref() for v in backbone_of(model).get_layer("conv_a").weights} & trainable_refs


def test_vgg16_base_frozen_with_pooling_and_a_new_softmax_head():
    tf.keras.utils.set_random_seed(0)
    model = classifier("VGG16")
    assert [layer.name for layer in model.layers[-3:]] == ["head_pool", "head_dropout", "head_classifier"]
    assert model.layers[-1].activation is tf.keras.activations.softmax
    base_before = [v.numpy().copy() for v in backbone_of(model).weights]
    plans = plan_policy(FROZEN_BASE_POLICY, model, 1e-2, 1)
    checks, _ = train_with_fit(model, plans, _data(16), _data(16), verbose=0)
    assert checks[0].passed and checks[0].trainable_variables == 2
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(base_before, backbone_of(model).weights))


def test_the_proof_checks_the_plan_not_only_kerass_trainable_flags():
    """A layer made trainable behind the plan's back, and trained, fails the phase by name, even though
    Keras' own flags say that it was allowed to train."""
    tf.keras.utils.set_random_seed(0)
    model = tiny_classifier()
    plan = plan_policy(parse_policy('{"version": 1, "rules": [{"freeze": {"names": ["conv_a"]}}]}'), model)[0]
    apply_plan(model, plan)
    before = snapshot(model)
    backbone_of(model).get_layer("conv_a").trainable = True  # a user's stray flag after apply_plan
    images, labels = random_images(16)
    with tf.GradientTape() as tape:
        loss = tf.keras.losses.sparse_categorical_crossentropy(labels, model(images, training=True))
    variables = model.trainable_variables
    tf.keras.optimizers.SGD(0.1).apply_gradients(zip(tape.gradient(loss, variables), variables))
    check = check_phase(model, plan, before)
    assert not check.passed
    assert set(check.trainable_off_plan) == {"conv_a/kernel:0", "conv_a/bias:0"}
    assert set(check.changed_frozen) == {"conv_a/kernel:0", "conv_a/bias:0"}
    with pytest.raises(FreezeViolation, match="Keras trains variable.*the plan freezes: conv_a/"):
        raise_on_violation(check)


def test_a_diverged_phase_fails_instead_of_passing_with_nan_weights():
    tf.keras.utils.set_random_seed(0)
    model = tiny_classifier()
    plans = plan_policy(FROZEN_BASE_POLICY, model, default_learning_rate=float("inf"), default_epochs=2)
    with pytest.raises(FreezeViolation, match=r"phase 'train': training diverged: .* hold NaN or Inf"):
        train_with_fit(model, plans, _data(), _data(), verbose=0)

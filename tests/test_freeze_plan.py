"""Resolving policies against real keras.applications backbones (random weights)."""

import json

import pytest
import tensorflow as tf

from components.freeze_trainer.classifier_model import HEAD_LAYER_NAMES, backbone_of
from components.freeze_trainer.freeze_plan import apply_plan, plan_policy, policy_layers
from components.freeze_trainer.freeze_policy import FROZEN_BASE_POLICY, PolicyError, parse_policy
from tests.model_builders import classifier


@pytest.fixture(scope="module")
def mobilenet():
    return classifier("MobileNetV2")


def plan(model, rules, batchnorm="frozen"):
    policy = parse_policy(json.dumps({"version": 1, "batchnorm": batchnorm, "rules": rules}))
    return plan_policy(policy, model)[0]


def trainable_names(model):
    backbone, head = policy_layers(model)
    return {layer.name for layer in backbone + head if layer.trainable}


@pytest.mark.parametrize("name", ["MobileNetV2", "EfficientNetB0", "ResNet50", "VGG16"])
def test_frozen_base_leaves_only_the_head_trainable(name):
    model = classifier(name)
    apply_plan(model, plan_policy(FROZEN_BASE_POLICY, model)[0])
    assert trainable_names(model) == {"head_pool", "head_dropout", "head_classifier"}
    head = model.get_layer("head_classifier")
    assert {v.ref() for v in model.trainable_variables} == {v.ref() for v in head.trainable_variables}
    assert not backbone_of(model).trainable_weights


def test_named_layers(mobilenet):
    apply_plan(mobilenet, plan(mobilenet, [{"freeze": {"names": ["Conv1", "block_1_expand"]}}]))
    frozen = {layer.name for layer in policy_layers(mobilenet)[0] if not layer.trainable}
    # BatchNorm stays frozen in the default mode wherever it is.
    assert {"Conv1", "block_1_expand"} <= frozen
    assert all(name in {"Conv1", "block_1_expand"} or "BN" in name or "bn" in name for name in frozen)
    assert mobilenet.get_layer("mobilenetv2_0.35_32").get_layer("block_16_project").trainable


def test_regex_over_layer_names(mobilenet):
    apply_plan(mobilenet, plan(mobilenet, [{"freeze": {"base": True}}, {"unfreeze": {"regex": "block_16_.*"}}]))
    trainable = trainable_names(mobilenet) - set(HEAD_LAYER_NAMES)
    assert trainable and all(name.startswith("block_16_") for name in trainable)
    assert "block_16_project" in trainable
    assert "block_16_project_BN" not in trainable  # batchnorm: frozen


def test_all_but_top_n(mobilenet):
    step = plan(mobilenet, [{"freeze": {"base": True}}, {"unfreeze": {"top": 5}}], batchnorm="affine")
    apply_plan(mobilenet, step)
    backbone = policy_layers(mobilenet)[0]
    assert [layer.trainable for layer in backbone[-5:]] == [True] * 5
    assert not any(layer.trainable for layer in backbone[:-5])
    assert step.trainable_params == sum(v.shape.num_elements() for v in mobilenet.trainable_variables)


def test_layer_class_selector_and_last_rule_wins(mobilenet):
    step = plan(
        mobilenet,
        [{"freeze": {"base": True}}, {"unfreeze": {"layer_class": "Conv2D"}}, {"freeze": {"glob": "Conv*"}}],
    )
    assert step.is_trainable("block_16_project") and not step.is_trainable("Conv1")


def test_bottom_fraction(mobilenet):
    backbone = policy_layers(mobilenet)[0]
    step = plan(mobilenet, [{"freeze": {"bottom_fraction": 0.5}}])
    frozen = [state.name for state in step.layers if not state.trainable and not state.batchnorm]
    assert frozen and set(frozen) <= {layer.name for layer in backbone[: round(len(backbone) / 2)]}


@pytest.mark.parametrize(
    "rules, key, message",
    [
        ([{"freeze": {"names": ["block_1_expnd"]}}], "rules[0].freeze.names", "closest layer names: block_1_expand"),
        ([{"freeze": {"regex": "stage_9.*"}}], "rules[0].freeze.regex", "matches no layer"),
        ([{"freeze": {"regex": "block_(1"}}], "rules[0].freeze.regex", "invalid regular expression"),
        ([{"freeze": {"glob": "head_*"}}], "rules[0]", "freezes the new head"),
        ([{"freeze": {"top": 10000}}], "rules[0].freeze.top", "the backbone has"),
        ([{"freeze": {"layer_class": "LSTM"}}], "rules[0].freeze.layer_class", "matches no layer"),
        (
            [{"freeze": {"base": True}}, {"freeze": {"names": ["head_classifier"]}}],
            "rules[1]",
            "freezes the new head",
        ),
    ],
)
def test_policies_that_do_not_fit_the_model_are_rejected(mobilenet, rules, key, message):
    with pytest.raises(PolicyError) as raised:
        plan(mobilenet, rules)
    assert raised.value.key == key
    assert message in str(raised.value)


def test_plan_does_not_touch_the_model(mobilenet):
    apply_plan(mobilenet, plan(mobilenet, [{"freeze": {"base": True}}]))
    before = [layer.trainable for layer in mobilenet.layers]
    plan(mobilenet, [{"unfreeze": {"base": True}}])
    assert [layer.trainable for layer in mobilenet.layers] == before


def test_batchnorm_runs_in_inference_mode_inside_a_frozen_base(mobilenet):
    apply_plan(mobilenet, plan(mobilenet, [{"freeze": {"base": True}}]))
    images = tf.random.uniform((4, 32, 32, 3))
    bn = backbone_of(mobilenet).get_layer("bn_Conv1")
    before = bn.moving_mean.numpy().copy()
    mobilenet(images, training=True)
    assert (bn.moving_mean.numpy() == before).all()

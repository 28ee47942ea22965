"""Resolving policies against real keras.applications backbones (random weights)."""

import json

import pytest
import tensorflow as tf

from freeze_trainer.keras.models.classifier_model import HEAD_LAYER_NAMES, backbone_of
from freeze_trainer.keras.planning.freeze_plan import apply_plan, plan_policy, policy_layers
from freeze_trainer.policy.freeze_policy import FROZEN_BASE_POLICY, PolicyError, parse_policy
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


def test_index_range_with_negative_indices(mobilenet):
    step = plan(mobilenet, [{"freeze": {"base": True}}, {"unfreeze": {"indices": "-4:-1"}}])
    backbone = policy_layers(mobilenet)[0]
    opened = {state.name for state in step.layers if state.trainable and not state.in_head}
    assert opened == {layer.name for layer in backbone[-4:-1] if not isinstance(layer, tf.keras.layers.BatchNormalization)}


@pytest.mark.parametrize(
    "name, group, member, outsider",
    [
        ("MobileNetV2", "block_16", "block_16_project", "block_15_project"),
        ("ResNet50", "conv5", "conv5_block3_3_conv", "conv4_block6_3_conv"),
        ("EfficientNetB0", "block7", "block7a_project_conv", "block6d_project_conv"),
        ("VGG16", "block5", "block5_conv3", "block4_conv3"),
    ],
)
def test_block_groups_of_keras_applications_backbones(name, group, member, outsider):
    model = classifier(name)
    step = plan(model, [{"freeze": {"base": True}}, {"unfreeze": {"group": group}}])
    assert step.is_trainable(member) and not step.is_trainable(outsider)
    assert step.state(member).group == group


def test_top_fraction_and_auto_groups_split_the_backbone(mobilenet):
    policy = parse_policy(json.dumps({"version": 1, "auto_groups": 3,
                                      "rules": [{"freeze": {"base": True}}, {"unfreeze": {"group": "auto_2"}}]}))
    step = plan_policy(policy, mobilenet)[0]
    backbone = [state for state in step.layers if not state.in_head]
    assert [state.auto_group for state in backbone] == sorted(state.auto_group for state in backbone)
    top_third = [state.name for state in backbone if state.auto_group == 2]
    assert abs(len(top_third) - len(backbone) / 3) < 1
    by_fraction = plan(mobilenet, [{"freeze": {"base": True}}, {"unfreeze": {"top_fraction": 1 / 3}}])
    assert {s.name for s in by_fraction.layers if s.trainable} == {s.name for s in step.layers if s.trainable}


def test_unknown_group_lists_the_backbones_groups(mobilenet):
    with pytest.raises(PolicyError) as raised:
        plan(mobilenet, [{"freeze": {"group": "conv5"}}])
    assert raised.value.key == "rules[0].freeze.group"
    assert "block_16" in str(raised.value) and "auto_3" in str(raised.value)


def test_freezing_everything_is_rejected(mobilenet):
    with pytest.raises(PolicyError, match="freezes every variable: nothing would train"):
        plan(mobilenet, [{"freeze": {"regex": ".*"}}])


def test_layerwise_decay_floor_freezes_the_deepest_layers(mobilenet):
    policy = parse_policy(json.dumps({"version": 1, "phases": [{
        "name": "decay", "learning_rate": 1e-3, "rules": [{"unfreeze": {"base": True}}],
        "lr_decay": {"factor": 2.0, "per": "layer", "floor": 1e-5},
    }]}))
    step = plan_policy(policy, mobilenet)[0]
    trained = [state for state in step.layers if state.learning_rate is not None and not state.in_head]
    assert [state.learning_rate for state in trained] == sorted(state.learning_rate for state in trained)
    assert min(state.learning_rate for state in trained) >= 1e-5
    assert not step.is_trainable("Conv1")  # far below the floor
    assert step.is_trainable("Conv_1")

"""The frozen-prefix cut: where each phase cuts and why some do not, and training the live part on
cached cut tensors ends with the weights training the whole model gives, through both loops."""

import numpy as np
import pytest
import tensorflow as tf

from freeze_trainer.keras.models.classifier_model import backbone_of, declare_head, feature_extractor
from freeze_trainer.keras.data.example_feed import ExampleFeed
from freeze_trainer.keras.data.feature_cache import FeatureCache
from freeze_trainer.keras.training.fit_training import train_with_fit
from freeze_trainer.keras.training.freeze_proof import FreezeViolation
from freeze_trainer.keras.planning.freeze_plan import apply_plan, plan_policy
from freeze_trainer.keras.training.gradient_tape_loop import train_with_gradient_tape
from freeze_trainer.keras.planning.phase_schedule import build_schedule
from freeze_trainer.keras.planning.plan_report import format_plan_groups
from freeze_trainer.keras.planning.prefix_cut import find_cut, live_model, prefix_model
from freeze_trainer.policy.freeze_policy import policy_from_dict
from tests.model_builders import SHAPE, classifier, random_images

FREEZE_BASE = {"freeze": {"base": True}}
HEAD_THEN_TOP = {
    "version": 1,
    "phases": [
        {"name": "head", "epochs": 1, "rules": [FREEZE_BASE]},
        {"name": "top", "epochs": 2,
         "rules": [FREEZE_BASE, {"unfreeze": {"group": "block_16"}}, {"unfreeze": {"group": "top"}}]},
    ],
}
IMAGES, LABELS = random_images(48)


def _policy(phases, batchnorm="frozen"):
    return policy_from_dict({"version": 1, "batchnorm": batchnorm, "phases": phases})


def _residual_model(augment: bool = False) -> tf.keras.Model:
    """A flat ResNet-style model with a declared head: block 1 (`conv_b1` + skip), then block 2 whose
    second conv `conv_c2` adds to block 1's output, a skip that crosses a cut made at `conv_c2`."""
    inputs = tf.keras.Input(SHAPE, name="image")
    x = tf.keras.layers.RandomFlip("horizontal", name="augment")(inputs) if augment else inputs
    stem = tf.keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv_a")(x)
    y = tf.keras.layers.Conv2D(4, 3, padding="same", name="conv_b1")(stem)
    y = tf.keras.layers.BatchNormalization(name="bn_b1")(y)
    block_1 = tf.keras.layers.Add(name="add_1")([stem, y])
    z = tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_c1")(block_1)
    z = tf.keras.layers.Conv2D(4, 3, padding="same", name="conv_c2")(z)
    block_2 = tf.keras.layers.Add(name="add_2")([block_1, z])
    pooled = tf.keras.layers.GlobalAveragePooling2D(name="head_pool")(block_2)
    dropped = tf.keras.layers.Dropout(0.0, name="head_dropout")(pooled)
    outputs = tf.keras.layers.Dense(3, activation="softmax", name="head_classifier")(dropped)
    model = tf.keras.Model(inputs, outputs, name="residual")
    return declare_head(model, ["head_pool", "head_dropout", "head_classifier"])


RESIDUAL_PHASES = [
    {"name": "head", "epochs": 1, "rules": [FREEZE_BASE]},
    {"name": "last_conv", "epochs": 2, "rules": [FREEZE_BASE, {"unfreeze": {"names": ["conv_c2"]}}]},
]


def _cuts(model, policy):
    cuts = []
    for plan in plan_policy(policy, model):
        apply_plan(model, plan)
        cuts.append(find_cut(model, plan))
    return cuts


def test_each_phase_cuts_where_its_live_part_starts():
    tf.keras.utils.set_random_seed(0)
    model = classifier("MobileNetV2", dropout=0.0)
    phases = [*HEAD_THEN_TOP["phases"], {"name": "all", "rules": [{"unfreeze": {"base": True}}]}]
    head, top, everything = _cuts(model, _policy(phases))
    # Only the head trains: the cut is the pooled features, today's feature cache.
    assert head.names == ("head_pool",) and head.caches
    assert head.tensors[0].shape[1:] == feature_extractor(model).output.shape[1:]
    assert top.names == ("block_15_add",) and top.bytes_per_example == 1 * 1 * 56 * 4
    assert top.describe() == "cuts at block_15_add (224 bytes per example)"
    assert everything.describe() == "not cached: Conv1 trains and no base layer before it is frozen"


def test_prefix_then_live_part_computes_the_model():
    tf.keras.utils.set_random_seed(0)
    model = classifier("MobileNetV2", dropout=0.0)
    _, top, _ = _cuts(model, _policy([*HEAD_THEN_TOP["phases"], {"name": "head_again", "rules": [FREEZE_BASE]}]))
    live = live_model(model, top)
    assert {v.ref() for v in live.trainable_variables} <= {v.ref() for v in model.variables}
    expected = model(IMAGES[:8], training=False)
    np.testing.assert_array_equal(live(prefix_model(model, top)(IMAGES[:8])), expected)


def test_a_skip_connection_across_the_cut_gives_two_cut_tensors():
    head, last_conv = _cuts(_residual_model(), _policy(RESIDUAL_PHASES))
    assert head.names == ("head_pool",)
    assert last_conv.names == ("conv_c1", "add_1") and last_conv.caches
    assert last_conv.bytes_per_example == 2 * 16 * 16 * 4 * 4


def _plan_lines(model, policy) -> list[str]:
    """What `freeze-policy plan` prints of each phase's cache use: the schedule's words, with the model."""
    schedule = build_schedule(plan_policy(policy, model), model=model)
    return [line.strip() for line in format_plan_groups(schedule) if "cache" in line]


def test_randomness_or_batchnorm_statistics_below_the_trainable_block_are_not_cached():
    augmented = _residual_model(augment=True)
    head, last_conv = _cuts(augmented, _policy(RESIDUAL_PHASES))
    assert head.describe() == last_conv.describe() == "not cached: augment draws random numbers"
    assert _plan_lines(augmented, _policy(RESIDUAL_PHASES)) == ["no feature cache: augment draws random numbers"] * 2
    tf.keras.utils.set_random_seed(0)
    model = classifier("MobileNetV2", bn_inference_mode=False)
    top_with_every_bn = [FREEZE_BASE, {"unfreeze": {"group": "block_16"}},
                         {"unfreeze": {"layer_class": "BatchNormalization"}}]
    policy = _policy([HEAD_THEN_TOP["phases"][1], {"name": "bn", "rules": top_with_every_bn}], batchnorm="train")
    top_only, every_bn = _cuts(model, policy)
    # BatchNorm statistics updating inside the trainable block do not move the cut.
    assert top_only.names == ("block_15_add",) and top_only.caches
    assert every_bn.describe() == "not cached: bn_Conv1 updates its BatchNorm statistics (batchnorm: train)"
    assert _plan_lines(model, policy) == [
        "trains on a cached frozen prefix: cuts at block_15_add (224 bytes per example)",
        "no feature cache: bn_Conv1 updates its BatchNorm statistics (batchnorm: train)"]


def _train(loop, build, phases, tmp_path=None, budget_bytes=1 << 30, batchnorm="frozen", **options):
    """Trains a freshly seeded model on the same batches; with `tmp_path`, with a FeatureCache: the loop's
    schedule then trains each phase that caches on its cut. `options` go to the loop."""
    tf.keras.utils.set_random_seed(0)
    model = build()
    plans = plan_policy(_policy(phases, batchnorm), model, 1e-2, 1)
    examples = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS))
    feed_args = (examples, examples.take(16), 16, 7)
    cache = FeatureCache("test-source", str(tmp_path / "spill"), budget_bytes) if tmp_path else None
    feed = ExampleFeed(*feed_args, cache)
    checks, _ = loop(model, plans, feed, verbose=0, **options)
    assert all(check.passed for check in checks)  # the proof: every frozen variable bit-identical
    return model, [v.numpy() for v in model.variables], cache


def _assert_same_weights(expected, actual):
    for want, got in zip(expected, actual, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def _mobilenet():
    return classifier("MobileNetV2", dropout=0.0)


@pytest.fixture(scope="module")
def uncached_fit():
    return _train(train_with_fit, _mobilenet, HEAD_THEN_TOP["phases"])[1]


@pytest.mark.parametrize("budget_bytes", [1 << 30, 0], ids=["in memory", "spilled"])
def test_fit_on_the_cut_matches_fit_on_images(uncached_fit, tmp_path, budget_bytes):
    model, weights, cache = _train(train_with_fit, _mobilenet, HEAD_THEN_TOP["phases"], tmp_path, budget_bytes)
    assert cache.cached_examples == {"train": 48, "eval": 16}  # the top phase's cut tensors
    _assert_same_weights(uncached_fit, weights)


def test_tape_loop_on_the_cut_matches_it_on_images(tmp_path):
    expected = _train(train_with_gradient_tape, _mobilenet, HEAD_THEN_TOP["phases"])[1]
    for budget_bytes in (1 << 30, 0):  # in memory, then spilled to disk
        _, weights, _ = _train(train_with_gradient_tape, _mobilenet, HEAD_THEN_TOP["phases"],
                               tmp_path / str(budget_bytes), budget_bytes)
        _assert_same_weights(expected, weights)


@pytest.mark.parametrize("loop", [train_with_fit, train_with_gradient_tape], ids=["fit", "tape"])
def test_two_cut_tensors_across_a_skip_train_as_the_whole_model(loop, tmp_path):
    expected = _train(loop, _residual_model, RESIDUAL_PHASES)[1]
    model, weights, _ = _train(loop, _residual_model, RESIDUAL_PHASES, tmp_path, budget_bytes=0)
    _assert_same_weights(expected, weights)


def test_batchnorm_statistics_updating_in_the_live_part_match(tmp_path):
    def build():
        return classifier("MobileNetV2", bn_inference_mode=False, dropout=0.0)

    phases = [HEAD_THEN_TOP["phases"][1]]
    expected = _train(train_with_fit, build, phases, batchnorm="train")[1]
    model, weights, cache = _train(train_with_fit, build, phases, tmp_path, batchnorm="train")
    assert cache.cached_examples["train"] == 48
    _assert_same_weights(expected, weights)


def test_the_frozen_prefix_is_bit_identical_after_training_the_live_part(tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = _mobilenet()
    plan = plan_policy(_policy(HEAD_THEN_TOP["phases"]), model, 1e-2)[1]
    apply_plan(model, plan)
    cut = find_cut(model, plan)
    prefix, live = prefix_model(model, cut), live_model(model, cut)
    before = [v.numpy() for v in prefix.weights]
    features = prefix(IMAGES)
    live.compile(tf.keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    head_before = model.get_layer("head_classifier").kernel.numpy()
    live.fit(features, LABELS, batch_size=16, epochs=1, verbose=0)
    for want, got in zip(before, prefix.weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), want)
    assert not np.array_equal(model.get_layer("head_classifier").kernel.numpy(), head_before)


def test_a_later_phase_with_the_same_cut_and_prefix_reuses_the_cached_tensors(tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = _mobilenet()
    top = HEAD_THEN_TOP["phases"][1]
    plans = plan_policy(_policy([top, {**top, "name": "top_again"}, {"name": "b15", "rules": [
        FREEZE_BASE, {"unfreeze": {"group": "block_15"}}]}]), model)
    examples = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS))
    cache = FeatureCache("test-source", str(tmp_path / "spill"))
    feed = ExampleFeed(examples, examples.take(16), 16, 7, cache)
    stores = []
    for phase in build_schedule(plans, model=model):
        apply_plan(model, phase.plan)
        feed.phase_data(model, phase)
        stores.append(cache._stores["train"])
    assert stores[1] is stores[0]  # same cut, same prefix weights: not computed again
    assert stores[2] is not stores[1]  # another cut


class _MovePrefixKernel(tf.keras.callbacks.Callback):
    """Changes a frozen prefix kernel after the first batch: what the cached cut tensors no longer reflect."""

    def __init__(self, kernel):
        super().__init__()
        self.kernel = kernel

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.kernel.assign_add(tf.ones_like(self.kernel))


@pytest.mark.parametrize("loop", [train_with_fit, train_with_gradient_tape], ids=["fit", "tape"])
def test_the_proof_fails_when_the_prefix_moves_behind_the_plans_back(loop, tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = _mobilenet()
    plans = plan_policy(_policy([HEAD_THEN_TOP["phases"][1]]), model, 1e-2, 1)
    kernel = backbone_of(model).get_layer("block_1_project").kernel  # far below the cut at block_15_add
    examples = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS))
    cache = FeatureCache("test-source", str(tmp_path / "spill"))
    feed = ExampleFeed(examples, examples.take(16), 16, 7, cache)
    with pytest.raises(FreezeViolation, match=r"phase 'top': 1 frozen variable\(s\) changed during training: "
                                              r".*block_1_project/kernel"):
        loop(model, plans, feed, callbacks=[_MovePrefixKernel(kernel)], verbose=0)
    assert cache.cached_examples == {"train": 48, "eval": 16}  # the phase did train on the cut

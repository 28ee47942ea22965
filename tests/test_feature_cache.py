"""The frozen-feature cache: same weights as training on images, a key that never serves stale
features, spilling to disk, and the plans that decide where it applies."""

import json

import numpy as np
import pytest
import tensorflow as tf

from freeze_trainer.keras.models.classifier_model import backbone_of, feature_extractor
from freeze_trainer.keras.data.example_feed import ExampleFeed
from freeze_trainer.keras.data.feature_cache import FeatureCache, cache_key, files_fingerprint
from freeze_trainer.keras.training.fit_training import train_with_fit
from freeze_trainer.keras.planning.freeze_plan import plan_policy
from freeze_trainer.policy.freeze_policy import FROZEN_BASE_POLICY, policy_from_dict
from freeze_trainer.keras.training.gradient_tape_loop import train_with_gradient_tape
from tests.model_builders import classifier, random_images

# The cache serves `head` and `head_again`; `top` trains a backbone block, so `head_again` needs features
# of the changed base: serving `head`'s features there would change the result.
HEAD_TOP_HEAD = {
    "version": 1,
    "phases": [
        {"name": "head", "epochs": 2, "rules": [{"freeze": {"base": True}}]},
        {"name": "top", "epochs": 1, "rules": [{"freeze": {"base": True}}, {"unfreeze": {"group": "block_16"}}]},
        {"name": "head_again", "epochs": 1, "rules": [{"freeze": {"base": True}}]},
    ],
}
IMAGES, LABELS = random_images(80)


def _train(loop, tmp_path, budget_bytes=None):
    """Trains a fresh, identically seeded classifier (no dropout: its masks are drawn per graph)."""
    tf.keras.utils.set_random_seed(0)
    model = classifier("MobileNetV2", dropout=0.0)
    plans = plan_policy(policy_from_dict(HEAD_TOP_HEAD), model, 1e-2, 1)
    examples = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS))
    cache = None if budget_bytes is None else FeatureCache("test-source", str(tmp_path / "spill"), budget_bytes)
    checks, metrics = loop(model, plans, ExampleFeed(examples, examples.take(32), 16, 7, cache), verbose=0)
    return [v.numpy() for v in model.variables], checks, metrics, plans


@pytest.fixture(scope="module")
def fit_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    return {mode: _train(train_with_fit, tmp / mode, budget) for mode, budget in
            (("images", None), ("memory", 1 << 30), ("disk", 0))}


def _assert_same_weights(expected, actual):
    # Bit-identical on CPU in our runs; the tolerance leaves room for other kernels' rounding.
    for want, got in zip(expected, actual):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_plans_say_which_phases_use_the_cache(fit_runs):
    plans = fit_runs["images"][3]
    assert [plan.caches_features for plan in plans] == [True, False, True]
    assert plans[1].feature_cache_blocker.endswith("backbone layer(s) train")


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_training_matches_training_on_images_across_phases(fit_runs, mode):
    weights, checks, metrics, _ = fit_runs[mode]
    expected_weights, _, expected_metrics, _ = fit_runs["images"]
    assert all(check.passed for check in checks)
    _assert_same_weights(expected_weights, weights)
    for name, value in expected_metrics.items():
        assert metrics[name] == pytest.approx(value, rel=1e-5), name


def test_tape_loop_on_cached_features_matches_it_on_images(tmp_path):
    expected, _, _, _ = _train(train_with_gradient_tape, tmp_path / "images")
    cached, checks, _, _ = _train(train_with_gradient_tape, tmp_path / "cached", 1 << 30)
    assert [check.phase for check in checks if check.passed] == ["head", "top", "head_again"]
    _assert_same_weights(expected, cached)


def test_the_key_follows_base_weights_and_source_but_not_the_head():
    tf.keras.utils.set_random_seed(0)
    model = classifier("MobileNetV2")
    extractor = feature_extractor(model)
    key = cache_key(extractor, "source-a", (1, 0))
    assert cache_key(extractor, "source-a", (1, 0)) == key
    assert cache_key(extractor, "source-b", (1, 0)) != key
    assert cache_key(extractor, "source-a", (2, 1)) != key
    head = model.get_layer("head_classifier").kernel
    head.assign(head + 1.0)
    assert cache_key(extractor, "source-a", (1, 0)) == key
    moving_mean = backbone_of(model).get_layer("bn_Conv1").moving_mean
    moving_mean.assign(moving_mean + 1e-3)  # statistics count as much as weights
    assert cache_key(extractor, "source-a", (1, 0)) != key


def test_features_beyond_the_budget_are_spilled_and_removed_on_close(tmp_path):
    model = classifier("MobileNetV2")
    examples = tf.data.Dataset.from_tensor_slices((IMAGES[:40], LABELS[:40]))
    spill = tmp_path / "spill"
    with FeatureCache("source", str(spill), memory_budget_bytes=0) as cache:
        features = cache.features(model, {"train": examples}, batch_size=16)["train"]
        assert len(list(spill.rglob("piece-*.features"))) == 1
        stored = np.stack([f.numpy() for f, _ in features])
        labels = np.stack([label.numpy() for _, label in features])
    expected = feature_extractor(model)(IMAGES[:40], training=False).numpy()
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, LABELS[:40].numpy())
    assert not spill.exists()


def test_keep_stale_serves_an_earlier_key_again_without_rebuilding_within_one_budget(tmp_path):
    """A policy search's cache: features of every key built stay, and all of them share the one budget,
    so a second key's features go to disk when the first's fill it."""
    examples = {"train": tf.data.Dataset.from_tensor_slices((IMAGES[:40], LABELS[:40]))}
    tf.keras.utils.set_random_seed(0)
    first, second = classifier("MobileNetV2"), classifier("MobileNetV2")  # other weights: another key
    with FeatureCache("source", str(tmp_path / "measure")) as measure:
        measure.features(first, examples, batch_size=16)
        one_key_bytes = measure._stores["train"].memory_bytes
    with FeatureCache("source", str(tmp_path / "spill"), one_key_bytes, keep_stale=True) as cache:
        cache.features(first, examples, batch_size=16)
        first_store = cache._stores["train"]
        cache.features(second, examples, batch_size=16)
        second_store = cache._stores["train"]
        assert (first_store.memory_bytes, first_store.disk_bytes) == (one_key_bytes, 0)
        assert (second_store.memory_bytes, second_store.disk_bytes) == (0, one_key_bytes)
        cache.features(first, examples, batch_size=16)
        assert cache._stores["train"] is first_store  # served again, not rebuilt


def test_source_fingerprint_changes_when_a_file_is_rewritten(tmp_path):
    data = tmp_path / "Split-train"
    data.mkdir()
    (data / "part-0.gz").write_bytes(b"a" * 10)
    before = files_fingerprint([str(data)])
    assert files_fingerprint([str(data)]) == before
    (data / "part-0.gz").write_bytes(b"b" * 11)
    assert files_fingerprint([str(data)]) != before
    assert files_fingerprint([str(data / "*")]) != before  # a glob of the same files names them differently


def test_random_layers_before_the_features_block_the_cache():
    policy = FROZEN_BASE_POLICY
    # EfficientNet's blocks hold Dropout layers: inert while the backbone runs in inference mode only.
    in_inference = plan_policy(policy, classifier("EfficientNetB0", bn_inference_mode=True))
    assert in_inference[0].caches_features
    following_training = plan_policy(policy, classifier("EfficientNetB0", bn_inference_mode=False))
    assert following_training[0].feature_cache_blocker == "random layer 'block2b_drop' precedes the features"


def test_policy_json_round_trip_keeps_the_cacheable_phases():
    # The policy the trainer receives as a JSON string plans the same as the dict.
    model = classifier("MobileNetV2")
    from_text = plan_policy(policy_from_dict(json.loads(json.dumps(HEAD_TOP_HEAD))), model)
    assert [plan.caches_features for plan in from_text] == [True, False, True]

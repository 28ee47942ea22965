"""One real local pipeline run (see conftest.demo_run), checked from every side a user sees."""

import glob
import json
import os

import numpy as np
import tensorflow as tf
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from freeze_trainer.policy.freeze_policy import FROZEN_BASE_POLICY
from freeze_trainer.tfx.serving_export import FREEZE_POLICY_ASSET, FREEZE_REPORT_ASSET
from freeze_trainer.tfx.serving_export import read_extra_asset
from pipelines.digits_data import TARGET_DIGITS, load_digit_pngs, to_example
from tests.conftest import run_local_runner


def _store(output_dir):
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = os.path.join(output_dir, "metadata.sqlite")
    return metadata_store.MetadataStore(config)


def _pushed_model_dir(output_dir):
    versions = glob.glob(os.path.join(output_dir, "serving", "*"))
    assert len(versions) == 1, versions
    return versions[0]


def test_a_model_was_pushed_and_the_run_reported_per_component_times(demo_run):
    output_dir, result = demo_run
    assert os.path.basename(_pushed_model_dir(output_dir)).isdigit()
    for component in ("ImportExampleGen", "StatisticsGen", "SchemaGen", "Transform", "FreezeTrainer", "Evaluator",
                      "Pusher"):
        assert component in result.stdout
    assert "blessed: True" in result.stdout
    assert "with a random frozen base" in result.stdout


def test_pushed_model_classifies_raw_serialized_examples(demo_run):
    output_dir, _ = demo_run
    model = tf.saved_model.load(_pushed_model_dir(output_dir))
    pngs, labels = load_digit_pngs(TARGET_DIGITS)
    pngs, labels = pngs[-200:], labels[-200:]  # mostly examples the sampled run never saw
    serialized = tf.constant([to_example(png, 0).SerializeToString() for png in pngs])
    outputs = model.signatures["serving_default"](examples=serialized)
    assert outputs["probabilities"].shape == (200, 5)
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    predicted = outputs["classes"].numpy().astype(int)
    assert set(predicted) <= set(TARGET_DIGITS)
    assert (predicted == labels).mean() > 0.35  # chance is 0.2


def test_mlmd_records_policy_counts_and_a_passed_freeze_check(demo_run):
    output_dir, _ = demo_run
    store = _store(output_dir)
    models = store.get_artifacts_by_type("Model")
    assert len(models) == 1
    properties = models[0].custom_properties
    assert properties["freeze_check"].string_value == "passed"
    policy = json.loads(properties["freeze_policy"].string_value)
    assert policy["rules"] == [{"freeze": {"base": True}}]
    assert len(properties["freeze_policy_sha256"].string_value) == 64
    assert properties["trainable_variables"].int_value == 2  # the new head's kernel and bias
    assert properties["frozen_variables"].int_value > 100
    assert properties["trainable_params"].int_value == 1280 * 5 + 5
    assert properties["frozen_params"].int_value > 300_000


def test_exported_model_says_how_it_was_trained(demo_run):
    output_dir, _ = demo_run
    pushed = _pushed_model_dir(output_dir)
    policy = read_extra_asset(pushed, FREEZE_POLICY_ASSET)
    assert policy == FROZEN_BASE_POLICY.model_dump(mode="json", exclude_none=True)
    assert policy["rules"] == [{"freeze": {"base": True}}] and policy["batchnorm"] == "frozen"
    report = read_extra_asset(pushed, FREEZE_REPORT_ASSET)
    assert report["freeze_check_passed"] is True
    assert report["phases"][0]["changed_frozen"] == []
    assert report["phases"][0]["feature_cache"] is True  # the whole base is frozen: the head trained on cached features


def test_feature_cache_left_nothing_behind(demo_run):
    output_dir, _ = demo_run
    [model_run] = _store(output_dir).get_artifacts_by_type("ModelRun")
    assert os.listdir(model_run.uri)  # TensorBoard logs and checkpoints stay
    assert not os.path.exists(os.path.join(model_run.uri, "feature_cache"))


def test_evaluator_blessed_the_model(demo_run):
    output_dir, _ = demo_run
    store = _store(output_dir)
    blessings = store.get_artifacts_by_type("ModelBlessing")
    assert [b.custom_properties["blessed"].int_value for b in blessings] == [1]


def test_bad_policy_fails_before_any_data_is_read(tmp_path):
    bad = {"version": 1, "rules": [{"freeze": {"names": ["block_1_expnd"]}}]}
    result = run_local_runner("--output-dir", str(tmp_path), "--freeze-policy", json.dumps(bad))
    assert result.returncode == 2
    assert "rules[0].freeze.names" in result.stderr
    assert "closest layer names: block_1_expand" in result.stderr
    assert os.listdir(tmp_path) == []  # no data written, no pipeline started


def test_malformed_policy_file_names_the_problem(tmp_path):
    policy_file = tmp_path / "policy.json"
    policy_file.write_text('{"version": 1, "rules": [{"freeze": {"regex": "stage_9.*"}}]}')
    result = run_local_runner("--output-dir", str(tmp_path / "out"), "--freeze-policy", str(policy_file))
    assert result.returncode == 2
    assert "rules[0].freeze.regex" in result.stderr and "matches no layer" in result.stderr
    assert not (tmp_path / "out").exists()

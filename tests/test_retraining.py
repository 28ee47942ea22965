"""Production retraining with the local runner: two real runs into one output directory.

Run 1 trains the top block and head from the pretrained backbone and is pushed. Run 2 retrains in
retraining mode with a diverging learning rate: it warm-starts from run 1's blessed model, is evaluated
against it, is not blessed, and the serving directory keeps run 1's model.
"""

import glob
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2

from freeze_trainer.tfx.warm_start import WarmStartError, copy_matching_variables
from pipelines.pretrain_backbone import DEFAULT_BACKBONE_PATH
from tests.conftest import REPO_ROOT, run_local_runner
from tests.kfp_task_launch import mlmd_store

SAMPLE, EPOCHS = "150", "2"
TOP_BLOCK_POLICY = os.path.join(REPO_ROOT, "kubeflow", "policies", "retrain_top_block.json")
TOP_BLOCK_KERNEL = "Conv_1/kernel:0"  # trained in run 1, frozen in run 2


def _tree_digest(directory: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(directory, "**"), recursive=True)):
        if os.path.isfile(path):
            digest.update(path.encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def _trainer_inputs(store, execution_id: int) -> dict[str, int]:
    events = store.get_events_by_execution_ids([execution_id])
    return {e.path.steps[0].key: e.artifact_id for e in events if e.type == metadata_store_pb2.Event.INPUT}


def _model_variables(model_uri: str) -> dict[str, np.ndarray]:
    loaded = tf.saved_model.load(os.path.join(model_uri, "Format-Serving"))
    return {v.name: v.numpy() for v in loaded.model_variables}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("retraining"))
    common = ["--output-dir", output_dir, "--sample", SAMPLE, "--epochs", EPOCHS, "--retrain"]
    first = run_local_runner(*common, "--freeze-policy", TOP_BLOCK_POLICY, "--accuracy-floor", "0.3")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert "blessed: True" in first.stdout
    serving = glob.glob(os.path.join(output_dir, "serving", "*"))
    assert len(serving) == 1
    before = _tree_digest(serving[0])
    # The largest rate the trainer accepts: the head overshoots and the candidate scores worse.
    second = run_local_runner(*common, "--learning-rate", "10", "--accuracy-floor", "0.3")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    return output_dir, serving[0], before, second


def test_the_worse_candidate_is_not_pushed_and_serving_keeps_the_previous_model(two_runs):
    output_dir, pushed, before, second = two_runs
    assert "blessed: False" in second.stdout
    assert "retraining: the candidate was not blessed and was not pushed" in second.stdout
    assert glob.glob(os.path.join(output_dir, "serving", "*")) == [pushed]
    assert _tree_digest(pushed) == before
    store = mlmd_store(os.path.join(output_dir, "metadata.sqlite"))
    pushes = sorted(store.get_artifacts_by_type("PushedModel"), key=lambda a: a.id)
    assert [p.custom_properties["pushed"].int_value for p in pushes] == [1, 0]
    # The rejected candidate's run report, completed with its evaluation, sits in its PushedModel folder.
    with open(os.path.join(pushes[1].uri, "report.html")) as f:
        report = f.read()
    assert "Not blessed" in report
    assert "compared with no baseline" not in report  # it was evaluated against the pushed model


def test_the_candidate_warm_started_from_and_was_evaluated_against_the_blessed_model(two_runs):
    output_dir, *_ = two_runs
    store = mlmd_store(os.path.join(output_dir, "metadata.sqlite"))
    first_model, second_model = sorted(store.get_artifacts_by_type("Model"), key=lambda a: a.id)
    trainings = sorted((e for e in store.get_executions()
                        if store.get_execution_types_by_id([e.type_id])[0].name.endswith("FreezeTrainer")),
                       key=lambda e: e.id)
    assert len(trainings) == 2
    assert "base_model" not in _trainer_inputs(store, trainings[0].id)  # nothing blessed yet
    assert _trainer_inputs(store, trainings[1].id)["base_model"] == first_model.id
    blessings = sorted(store.get_artifacts_by_type("ModelBlessing"), key=lambda a: a.id)
    assert blessings[0].custom_properties["blessed"].int_value == 1
    second_blessing = blessings[1].custom_properties
    assert second_blessing["blessed"].int_value == 0
    assert second_blessing["baseline_model_id"].int_value == first_model.id
    assert second_blessing["current_model_id"].int_value == second_model.id
    assert second_model.custom_properties["freeze_check"].string_value == "passed"


def test_weights_the_retraining_policy_froze_are_those_of_the_blessed_model(two_runs):
    """Conv_1 trained in run 1 and is frozen in run 2: run 2 holds run 1's values, not the pretrained
    backbone's. That is only possible if run 2 started from run 1's model."""
    output_dir, *_ = two_runs
    store = mlmd_store(os.path.join(output_dir, "metadata.sqlite"))
    first_model, second_model = sorted(store.get_artifacts_by_type("Model"), key=lambda a: a.id)
    first, second = _model_variables(first_model.uri), _model_variables(second_model.uri)
    pretrained = tf.keras.models.load_model(DEFAULT_BACKBONE_PATH, compile=False, safe_mode=True)
    pretrained_kernel = pretrained.get_layer("Conv_1").kernel.numpy()
    assert not np.array_equal(first[TOP_BLOCK_KERNEL], pretrained_kernel)
    np.testing.assert_array_equal(second[TOP_BLOCK_KERNEL], first[TOP_BLOCK_KERNEL])
    assert not np.array_equal(second["head_classifier/kernel:0"], first["head_classifier/kernel:0"])


def test_copy_matching_variables_pairs_by_name_and_shape():
    source = [tf.Variable(np.full((2, 3), 1.0), name="dense/kernel"), tf.Variable(np.full((3,), 2.0), name="dense/bias"),
              tf.Variable(np.full((4,), 3.0), name="dup"), tf.Variable(np.full((4,), 4.0), name="dup")]
    target = [tf.Variable(np.zeros((4,)), name="dup"), tf.Variable(np.zeros((4,)), name="dup"),
              tf.Variable(np.zeros((3, 3)), name="dense/kernel"), tf.Variable(np.zeros((5,)), name="new/bias"),
              tf.Variable(np.zeros((3,)), name="dense/bias")]
    report = copy_matching_variables(target, source, "test")
    assert (report.loaded, report.shape_mismatch, report.missing) == (3, ("dense/kernel:0",), ("new/bias:0",))
    assert [float(v.numpy().ravel()[0]) for v in target] == [3.0, 4.0, 0.0, 0.0, 2.0]
    with pytest.raises(WarmStartError, match="shares no variable"):
        copy_matching_variables([tf.Variable(np.zeros(1), name="other")], source, "test")

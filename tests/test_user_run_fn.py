"""A user `run_fn` (TFX's module_file convention) under FreezeTrainer's executor, on the demo run's real
Transform output: with `train_and_export` it gets planning, the proof and the freeze report; without it,
the executor says so in one line."""

import glob
import hashlib
import json
import os

import pytest
from tfx.types import artifact_utils, standard_artifacts

from freeze_trainer.tfx.executor import Executor
from tests.conftest import REPO_ROOT

MODULE = os.path.join(REPO_ROOT, "tests", "user_modules", "own_run_fn.py")


def _artifact(kind, uri: str, splits: bool = False):
    artifact = kind()
    artifact.uri = uri
    if splits:
        artifact.split_names = artifact_utils.encode_split_names(["train", "eval"])
    return artifact


def _run(demo_run, tmp_path, run_fn_name: str):
    output_dir, _ = demo_run
    root = os.path.join(output_dir, "pipeline_root", "Transform")
    inputs = {
        "examples": [_artifact(standard_artifacts.Examples, glob.glob(f"{root}/transformed_examples/*")[0], True)],
        "transform_graph": [_artifact(standard_artifacts.TransformGraph, glob.glob(f"{root}/transform_graph/*")[0])],
    }
    outputs = {"model": [_artifact(standard_artifacts.Model, str(tmp_path / "model"))],
               "model_run": [_artifact(standard_artifacts.ModelRun, str(tmp_path / "model_run"))]}
    properties = {"module_file": MODULE, "run_fn": run_fn_name, "freeze_policy": '{"version": 1, "rules": '
                  '[{"freeze": {"base": true}}]}', "epochs": 1, "train_args": "{}", "eval_args": "{}",
                  "custom_config": "null"}
    Executor().Do(inputs, outputs, properties)
    return outputs["model"][0]


def test_a_user_run_fn_with_the_helper_gets_the_proof_and_the_report(demo_run, tmp_path):
    model = _run(demo_run, tmp_path, "run_fn")
    assert model.get_string_custom_property("freeze_check") == "passed"
    with open(tmp_path / "model" / "Format-Serving" / "assets.extra" / "freeze_report.json") as f:
        report = json.load(f)
    assert report["phases"][0]["trainable_variables"] == 2  # the head; own_conv stays frozen
    assert report["phases"][0]["frozen_variables"] == 2
    # The model came from the user's module: the report and the Model artifact name it, and its base.
    assert (report["model_source"], report["module_file"], report["base_name"]) == (
        "module_file", "own_run_fn.py", "own_base")
    assert "backbone" not in report and "backbone_weights" not in report
    assert model.get_string_custom_property("module_file_sha256") == report["module_file_sha256"] == hashlib.sha256(
        open(MODULE, "rb").read()).hexdigest()


def test_a_user_run_fn_without_the_helper_fails_in_one_line(demo_run, tmp_path):
    with pytest.raises(RuntimeError, match=r"^run_fn: the model has no assets.extra/freeze_report.json.*"
                                           r"train_and_export\(fn_args, model\)$"):
        _run(demo_run, tmp_path, "run_fn_without_helper")


def test_raw_examples_without_a_transform_graph(tmp_path):
    """No Transform: the trainer reads raw examples by the schema, the model takes the raw feature, and the
    export serves raw examples as they are."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_breast_cancer
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx.utils import io_utils

    data = load_breast_cancer()
    rows = ((data.data - data.data.mean(axis=0)) / data.data.std(axis=0)).astype("float32")

    def example(row, label) -> bytes:
        return tf.train.Example(features=tf.train.Features(feature={
            "features": tf.train.Feature(float_list=tf.train.FloatList(value=row)),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        })).SerializeToString()

    examples_dir = tmp_path / "examples"
    for split, part in (("train", slice(0, 400)), ("eval", slice(400, None))):
        (examples_dir / f"Split-{split}").mkdir(parents=True)
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        with tf.io.TFRecordWriter(str(examples_dir / f"Split-{split}" / "data.gz"), options) as writer:
            for row, label in zip(rows[part], data.target[part]):
                writer.write(example(row, label))
    schema = schema_pb2.Schema()
    for name, kind, size in (("features", schema_pb2.FLOAT, rows.shape[1]), ("label", schema_pb2.INT, 1)):
        feature = schema.feature.add(name=name, type=kind)  # as SchemaGen writes it with infer_feature_shape
        feature.shape.dim.add(size=size)
        feature.presence.min_fraction = 1.0
    (tmp_path / "schema").mkdir()
    io_utils.write_pbtxt_file(str(tmp_path / "schema" / "schema.pbtxt"), schema)
    base = tf.keras.Sequential([tf.keras.Input((rows.shape[1],), name="features"),
                                tf.keras.layers.Dense(8, activation="relu", name="enc_1")], name="mlp")
    base.save(str(tmp_path / "base.keras"))

    inputs = {"examples": [_artifact(standard_artifacts.Examples, str(examples_dir), True)],
              "schema": [_artifact(standard_artifacts.Schema, str(tmp_path / "schema"))]}
    outputs = {"model": [_artifact(standard_artifacts.Model, str(tmp_path / "model"))],
               "model_run": [_artifact(standard_artifacts.ModelRun, str(tmp_path / "model_run"))]}
    properties = {"freeze_policy": '{"version": 1, "rules": [{"freeze": {"base": true}}]}', "epochs": 3,
                  "backbone": "custom", "backbone_weights": str(tmp_path / "base.keras"), "feature_key": "features",
                  "dropout": 0.0, "train_args": "{}", "eval_args": "{}", "custom_config": "null"}
    Executor().Do(inputs, outputs, properties)
    assert outputs["model"][0].get_string_custom_property("freeze_check") == "passed"
    serving = tf.saved_model.load(str(tmp_path / "model" / "Format-Serving")).signatures["serving_default"]
    served = serving(examples=tf.constant([example(row, label) for row, label in zip(rows[400:], data.target[400:])]))
    assert served["probabilities"].shape == (len(rows) - 400, 1)  # two integer classes: a binary head
    accuracy = np.mean(served["class_ids"].numpy() == data.target[400:])
    assert accuracy > 0.8

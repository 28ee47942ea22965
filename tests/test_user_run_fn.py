"""A user `run_fn` (TFX's module_file convention) under FreezeTrainer's executor, on the demo run's real
Transform output: with `train_and_export` it gets planning, the proof and the freeze report; without it,
the executor says so in one line."""

import glob
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


def test_a_user_run_fn_without_the_helper_fails_in_one_line(demo_run, tmp_path):
    with pytest.raises(RuntimeError, match=r"^run_fn: the model has no assets.extra/freeze_report.json.*"
                                           r"train_and_export\(fn_args, model\)$"):
        _run(demo_run, tmp_path, "run_fn_without_helper")

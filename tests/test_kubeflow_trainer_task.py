"""The compiled FreezeTrainer task, run the way a KFP v2 / Vertex pod runs it.

Container command and arguments come from the compiled spec; the executor input is what the KFP launcher
would build (upstream artifacts from the local demo run, output URIs in a temp dir, pipeline parameters
with `freeze_policy` overridden); the plugin is installed as kubeflow/Dockerfile installs it, and the
process starts outside the repository, so only that install can satisfy the spec's executor class path.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format

from freeze_trainer.policy.freeze_policy import parse_policy
from freeze_trainer.tfx.serving_export import FREEZE_POLICY_ASSET, FREEZE_REPORT_ASSET
from freeze_trainer.tfx.serving_export import read_extra_asset
from kubeflow.pipeline_definition import CompileOptions, compile_pipeline
from pipelines.pretrain_backbone import DEFAULT_BACKBONE_PATH
from tests.conftest import REPO_ROOT
from tests.kfp_task_launch import (
    build_task_launch,
    install_like_image,
    load_pipeline_spec,
    mlmd_store,
    read_executor_output,
    run_task,
)

TOP_BLOCK = re.compile(r"block_16_.*|Conv_1|Conv_1_bn|out_relu")
POLICY = {"version": 1, "rules": [{"freeze": {"base": True}}, {"unfreeze": {"regex": TOP_BLOCK.pattern}}]}


@pytest.fixture(scope="module")
def trainer_task(demo_run, tmp_path_factory):
    output_dir, _ = demo_run
    scratch = tmp_path_factory.mktemp("pod")
    site_packages = install_like_image(os.path.join(REPO_ROOT, "kubeflow", "Dockerfile"), REPO_ROOT, str(scratch))
    options = CompileOptions(image="freeze-trainer:test", pipeline_root=str(scratch / "root"),
                             serving_dir=str(scratch / "serving"), data_root=str(scratch / "data"))
    compile_pipeline(options, str(scratch / "pipeline.yaml"))
    spec = load_pipeline_spec(str(scratch / "pipeline.yaml"))
    overrides = {"freeze_policy": json.dumps(POLICY), "training_loop": "gradient_tape", "epochs": 2,
                 "backbone_weights": DEFAULT_BACKBONE_PATH}
    launch = build_task_launch(spec, "FreezeTrainer", mlmd_store(os.path.join(output_dir, "metadata.sqlite")),
                               str(scratch / "outputs"), overrides)
    workdir = scratch / "workdir"  # not the repository: `components` must come from the install
    workdir.mkdir()
    # The image's ENV (kubeflow/Dockerfile) plus the install; nothing else from this process.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(scratch)), "PYTHONPATH": site_packages,
           "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = run_task(launch, str(workdir), env)
    assert result.returncode == 0, result.stderr[-6000:]
    return launch, result, site_packages, str(workdir), env, options


def test_the_spec_command_is_tfx_kfp_v2_entrypoint_running_this_executor(trainer_task):
    launch, result, site_packages, workdir, env, _ = trainer_task
    assert launch.command[1:3] == ["-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
    assert launch.executor_class_path == "freeze_trainer.tfx.executor.Executor"
    module, _, _ = launch.executor_class_path.rpartition(".")
    where = subprocess.run([sys.executable, "-c", f"import {module.rsplit('.', 1)[0]} as m; print(m.__file__)"],
                           cwd=workdir, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(site_packages)


def test_the_model_carries_the_overridden_policy_and_training_loop(trainer_task):
    launch, *_ = trainer_task
    output = read_executor_output(launch)
    model = output.artifacts["model"].artifacts[0]
    metadata = json_format.MessageToDict(model.metadata)  # what the launcher records in MLMD
    expected = parse_policy(json.dumps(POLICY))
    assert metadata["freeze_policy"] == expected.canonical_json()
    assert metadata["freeze_policy_sha256"] == expected.sha256()
    assert metadata["freeze_check"] == "passed"
    assert metadata["trainable_variables"] == 6  # 3 convolutions in block 16, Conv_1, the head's kernel and bias
    serving = os.path.join(model.uri, "Format-Serving")
    assert parse_policy(json.dumps(read_extra_asset(serving, FREEZE_POLICY_ASSET))) == expected
    report = read_extra_asset(serving, FREEZE_REPORT_ASSET)
    assert report["freeze_check_passed"] is True
    assert report["training_loop"] == "gradient_tape"  # the overridden parameter, not the compiled "fit"
    assert [phase["epochs"] for phase in report["phases"]] == [2]


def test_frozen_weights_are_bit_identical_to_the_pretrained_backbone(trainer_task):
    launch, *_ = trainer_task
    model_uri = read_executor_output(launch).artifacts["model"].artifacts[0].uri
    trained = {v.name: v.numpy() for v in tf.saved_model.load(os.path.join(model_uri, "Format-Serving")).model_variables}
    backbone = tf.keras.models.load_model(DEFAULT_BACKBONE_PATH, compile=False, safe_mode=True)
    changed, unchanged = [], []
    for layer in backbone.layers:
        for variable in layer.weights:
            same = np.array_equal(trained[variable.name], variable.numpy())
            (unchanged if same else changed).append((layer.name, variable.name))
    # Only the unfrozen top block's weights moved (its BatchNorm stays frozen under batchnorm=frozen) ...
    assert changed and all(TOP_BLOCK.fullmatch(layer) and "_bn" not in layer.lower() for layer, _ in changed)
    # ... and every variable below it is bit-identical to the pretrained backbone.
    assert {name for layer, name in unchanged if not TOP_BLOCK.fullmatch(layer)} == {
        v.name for layer in backbone.layers if not TOP_BLOCK.fullmatch(layer.name) for v in layer.weights
    }

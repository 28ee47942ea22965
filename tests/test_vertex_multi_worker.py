"""A multi-worker Vertex training job, run on loopback.

The FreezeTrainer task of a spec compiled with `worker_replicas=1` gets its executor input as the KFP
launcher would build it (upstream artifacts from the local demo run), which is parsed as TFX's KFP v2
entry point parses it for `VertexExecutor`. TFX's Vertex client then builds the CustomJob (no request is
sent), and each worker pool's container command runs as a process with the TF_CONFIG Vertex gives its
replica: one chief, one worker, training together under MultiWorkerMirroredStrategy.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.auth.credentials import AnonymousCredentials
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from freeze_trainer.tfx.serving_export import FREEZE_REPORT_ASSET
from freeze_trainer.tfx.serving_export import MODEL_VARIABLES, read_extra_asset
from kubeflow.pipeline_definition import CompileOptions, compile_pipeline
from tests.conftest import REPO_ROOT
from tests.kfp_task_launch import build_task_launch, load_pipeline_spec, mlmd_store
from tests.loopback import free_ports

ROLES = ("chief", "worker")  # Vertex's TF_CONFIG task types of worker pools 0 and 1
# A backbone with few variables keeps the collectives few: on two cores the job takes about 80 s with
# VGG16 and about 190 s with MobileNetV2 (the demo backbone, 262 variables).
BACKBONE = "VGG16"
# The head phase trains on cached features (each worker caches its shard); the second phase trains a
# backbone block on images, which the workers shard batch by batch.
POLICY = {
    "version": 1,
    "phases": [
        {"name": "head", "epochs": 1, "rules": [{"freeze": {"base": True}}]},
        {"name": "top", "epochs": 1, "rules": [{"freeze": {"base": True}}, {"unfreeze": {"group": "block5"}}]},
    ],
}


def _vertex_executor_arguments(launch):
    """What TFX's KFP v2 entry point passes to `VertexExecutor.Do` for this executor input."""
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entrypoint

    inputs_spec = pipeline_spec_pb2.ComponentInputsSpec()
    json_format.Parse(launch.command[launch.command.index("--json_serialized_inputs_spec_args") + 1], inputs_spec)
    executor_input, name_from_id = launch.executor_input, {}
    return (
        entrypoint.parse_raw_artifact_dict(executor_input.inputs.artifacts, name_from_id),
        entrypoint.parse_raw_artifact_dict(executor_input.outputs.artifacts, name_from_id),
        entrypoint.parse_execution_properties(
            executor_input.inputs.parameter_values, executor_input.inputs.parameters, inputs_spec
        ),
    )


def _vertex_custom_job(inputs, outputs, exec_properties):
    """The CustomJob `VertexExecutor.Do` submits, built by TFX's Vertex client offline."""
    from google.cloud.aiplatform import gapic
    from tfx.extensions.google_cloud_ai_platform import training_clients
    from tfx.extensions.google_cloud_ai_platform.constants import VERTEX_REGION_KEY
    from tfx.extensions.google_cloud_ai_platform.trainer.executor import TRAINING_ARGS_KEY
    from tfx.utils import name_utils

    from freeze_trainer.tfx.vertex_trainer import VertexExecutor

    class OfflineVertexJobClient(training_clients.VertexJobClient):
        def create_client(self):
            self._client = gapic.JobServiceClient(credentials=AnonymousCredentials())

    custom_config = json.loads(exec_properties["custom_config"])
    job_args = dict(custom_config[TRAINING_ARGS_KEY])
    job_args.pop("project")  # as runner.start_cloud_training does
    executor_class_path = name_utils.get_full_name(VertexExecutor(VertexExecutor.Context())._GetExecutorClass())
    return OfflineVertexJobClient(custom_config[VERTEX_REGION_KEY]).create_training_job(
        inputs, outputs, exec_properties, executor_class_path, job_args, None, None
    )


@pytest.fixture(scope="module")
def vertex_job(demo_run, tmp_path_factory):
    output_dir, _ = demo_run
    scratch = tmp_path_factory.mktemp("vertex_multi_worker")
    options = CompileOptions(
        image="freeze-trainer:test", pipeline_root=str(scratch / "root"), serving_dir=str(scratch / "serving"),
        data_root=str(scratch / "data"), backbone=BACKBONE,
        vertex_training={"project": "example-project", "region": "europe-west4", "worker_replicas": 1},
    )
    compile_pipeline(options, str(scratch / "pipeline.yaml"))
    spec = load_pipeline_spec(str(scratch / "pipeline.yaml"))
    launch = build_task_launch(spec, "FreezeTrainer", mlmd_store(os.path.join(output_dir, "metadata.sqlite")),
                               str(scratch / "outputs"), {"freeze_policy": json.dumps(POLICY), "backbone_weights": "none"})
    inputs, outputs, exec_properties = _vertex_executor_arguments(launch)
    job = _vertex_custom_job(inputs, outputs, exec_properties)
    pools = job["job_spec"]["worker_pool_specs"]

    addresses = [f"127.0.0.1:{port}" for port in free_ports(len(pools))]
    cluster = {role: [address] for role, address in zip(ROLES, addresses)}
    processes = {}
    for role, pool in zip(ROLES, pools):
        command = list(pool["container_spec"]["command"])
        assert command[0] == "python"  # the image's interpreter; here, this virtualenv's
        tmp = scratch / f"{role}-tmp"  # the process's own temp folder (TMPDIR), to see what it wrote there
        tmp.mkdir()
        env = {**os.environ, "TMPDIR": str(tmp), "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": role, "index": 0},
                                        "environment": "cloud"})}
        # `--write-outputs-stdout` (run_executor's own flag) prints the output artifacts as the executor
        # left them, with the custom properties it would have recorded.
        # Files, not pipes: a replica blocked on a full pipe would stall the other in a collective.
        with open(scratch / f"{role}.out", "w") as stdout, open(scratch / f"{role}.err", "w") as stderr:
            processes[role] = subprocess.Popen([sys.executable, *command[1:], "--write-outputs-stdout"],
                                               cwd=REPO_ROOT, env=env, stdout=stdout, stderr=stderr)
    try:
        for process in processes.values():
            process.wait(timeout=600)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    results = {role: (process, (scratch / f"{role}.out").read_text(), (scratch / f"{role}.err").read_text())
               for role, process in processes.items()}
    model_artifact = outputs["model"][0]
    return {"pools": pools, "results": results, "model_uri": model_artifact.uri,
            "model_run_uri": outputs["model_run"][0].uri, "scratch": scratch}


def test_the_custom_job_has_a_chief_pool_and_a_worker_pool(vertex_job):
    chief, workers = vertex_job["pools"]
    assert chief["replica_count"] == 1 and workers["replica_count"] == 1
    assert chief["machine_spec"] == workers["machine_spec"] == {"machine_type": "n1-standard-8"}
    assert chief["container_spec"] == workers["container_spec"]
    command = chief["container_spec"]["command"]
    assert command[command.index("--executor_class_path") + 1] == "freeze_trainer.tfx.executor.Executor"


def test_both_replicas_train_and_exit_cleanly(vertex_job):
    for role, (process, _, stderr) in vertex_job["results"].items():
        assert process.returncode == 0, f"{role}:\n{stderr[-6000:]}"
        # Both ran run_fn under the same two-replica MultiWorkerMirroredStrategy.
        assert "MultiWorkerMirroredStrategy with cluster_spec" in stderr, role


def _recorded_model(stdout):
    outputs = json.loads(stdout.strip().splitlines()[-1])
    return outputs["model"][0]["artifact"].get("custom_properties", {})


def test_only_the_chief_records_the_freeze_properties(vertex_job):
    chief = _recorded_model(vertex_job["results"]["chief"][1])
    assert chief["freeze_check"] == {"string_value": "passed"}
    assert [phase["name"] for phase in json.loads(chief["freeze_policy"]["string_value"])["phases"]] == ["head", "top"]
    assert chief["backbone"] == {"string_value": BACKBONE}
    assert _recorded_model(vertex_job["results"]["worker"][1]) == {}


def _worker_export(vertex_job) -> str:
    """run_fn's export on a non-chief replica: saving is a collective, so the worker saves too."""
    worker_tmp = vertex_job["scratch"] / "worker-tmp"
    [export] = os.listdir(worker_tmp)  # the executor's own scratch folder is gone
    assert export.startswith("worker-export-")
    return str(worker_tmp / export)


def test_only_the_chief_writes_the_model_and_model_run(vertex_job):
    serving = os.path.join(vertex_job["model_uri"], "Format-Serving")
    report = read_extra_asset(serving, FREEZE_REPORT_ASSET)
    assert report["freeze_check_passed"] is True
    assert report["backbone"] == BACKBONE
    assert os.listdir(vertex_job["model_uri"]) == ["Format-Serving"]
    # TensorBoard names its event files after the writing process: all are the chief's.
    chief_pid, worker_pid = (vertex_job["results"][role][0].pid for role in ROLES)
    written = [name for _, _, files in os.walk(vertex_job["model_run_uri"]) for name in files]
    events = [name for name in written if "tfevents" in name]
    assert events and all(f".{chief_pid}." in name for name in events), events
    assert not any(f".{worker_pid}." in name or "workertemp" in name for name in written), written
    assert read_extra_asset(_worker_export(vertex_job), FREEZE_REPORT_ASSET) == report


def test_the_replicas_end_with_the_same_weights(vertex_job):
    def weights(path):
        return {v.name: v.numpy() for v in getattr(tf.saved_model.load(path), MODEL_VARIABLES)}

    chief = weights(os.path.join(vertex_job["model_uri"], "Format-Serving"))
    worker = weights(_worker_export(vertex_job))
    assert chief.keys() == worker.keys() and chief
    assert all(np.array_equal(chief[name], worker[name]) for name in chief)

"""Multi-process runs: a two-worker MultiWorkerMirroredStrategy job killed mid-phase resumes from the
chief's checkpoint to the weights of an uninterrupted job, and the local pipeline passes with Beam's
DirectRunner running its bundles in separate worker processes (the user code pickles and imports there)."""

import json
import os
import signal
import subprocess
import sys
import time

import tensorflow as tf

from tests.conftest import run_local_runner
from tests.loopback import free_ports

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multi_worker_preemptible_worker.py")
EPOCH_STEPS, PHASE_STEPS = 8, 16  # the worker's 128 examples in global batches of 16, 2 epochs a phase
STEP_SECONDS = 0.4  # slows the run to be killed, so the kill lands inside a phase


def _start_job(directory, name, checkpoints=None, step_seconds=0.0):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        command = [sys.executable, WORKER, "--output", str(directory / f"{name}{index}.json"),
                   "--step-seconds", str(step_seconds)]
        if checkpoints:
            command += ["--checkpoints", str(checkpoints)]
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        processes.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return processes


def _finish(processes, directory, name):
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-4000:]
    return [json.loads((directory / f"{name}{index}.json").read_text()) for index in range(2)]


def _latest_progress(directory) -> dict | None:
    latest = tf.train.latest_checkpoint(str(directory))
    if latest is None:
        return None
    return json.loads(tf.train.load_checkpoint(latest).get_tensor("progress/.ATTRIBUTES/py_state"))


def test_killed_multi_worker_job_resumes_from_the_chiefs_checkpoint(tmp_path):
    whole = _finish(_start_job(tmp_path, "whole"), tmp_path, "whole")
    assert [result["chief"] for result in whole] == [True, False]
    assert [result["steps"] for result in whole] == [2 * PHASE_STEPS] * 2

    checkpoints = tmp_path / "checkpoints"  # the ModelRun's: shared by both workers
    processes = _start_job(tmp_path, "preempted", checkpoints, STEP_SECONDS)
    deadline = time.monotonic() + 300
    while all(p.poll() is None for p in processes) and time.monotonic() < deadline:
        progress = _latest_progress(checkpoints)
        if progress and progress["position"]:  # the chief's first checkpoint inside a phase
            break
        time.sleep(0.05)
    for process in processes:
        process.send_signal(signal.SIGKILL)  # preemption of the whole job: no chance to clean up
    for process in processes:
        process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    killed_at = _latest_progress(checkpoints)
    assert killed_at["position"] % EPOCH_STEPS != 0  # mid-epoch, mid-phase
    assert sorted(os.listdir(checkpoints)) == sorted(  # only the chief's checkpoints are there
        [name for name in os.listdir(checkpoints) if name == "checkpoint" or name.startswith("ckpt-")])

    resumed = _finish(_start_job(tmp_path, "preempted", checkpoints), tmp_path, "preempted")
    left = (2 - killed_at["phase"]) * PHASE_STEPS - killed_at["position"]
    assert [result["steps"] for result in resumed] == [left, left]  # both resumed at the chief's checkpoint
    assert resumed[0]["digest"] == resumed[1]["digest"]  # the workers agree
    assert resumed[0]["digest"] == whole[0]["digest"]  # bit-identical to the uninterrupted job
    for result in resumed:
        assert [check["phase"] for check in result["checks"]] == ["head", "all"]
        assert all(check["passed"] for check in result["checks"])
        assert result["checks"] == whole[0]["checks"]


def test_local_pipeline_with_beam_multi_processing_workers(tmp_path):
    result = run_local_runner(
        "--output-dir", str(tmp_path / "run"), "--sample", "120", "--epochs", "1", "--accuracy-floor", "0",
        "--beam-arg=--direct_running_mode=multi_processing", "--beam-arg=--direct_num_workers=2",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "freeze check: passed" in result.stdout, result.stdout[-3000:]

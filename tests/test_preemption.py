"""A trainer killed mid-run resumes from its checkpoint and ends with the weights of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preemptible_worker.py")


def _start(loop, directory, name):
    export = directory / f"{name}_export"
    export.mkdir(exist_ok=True)
    command = [sys.executable, WORKER, "--loop", loop, "--checkpoints", str(directory / f"{name}_checkpoints"),
               "--export", str(export), "--output", str(directory / f"{name}.json")]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process):
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]


@pytest.mark.parametrize("loop", ["fit", "gradient_tape"])
def test_killed_trainer_resumes_to_the_same_weights(tmp_path, loop):
    _finish(_start(loop, tmp_path, "whole"))
    whole = json.loads((tmp_path / "whole.json").read_text())

    process = _start(loop, tmp_path, "preempted")
    index = tmp_path / "preempted_checkpoints" / "checkpoint"
    deadline = time.monotonic() + 500
    while not index.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # preemption: no chance to clean up
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert index.exists()
    assert not os.listdir(tmp_path / "preempted_export")  # nothing exported by the killed run

    _finish(_start(loop, tmp_path, "preempted"))
    resumed = json.loads((tmp_path / "preempted.json").read_text())
    assert resumed["digest"] == whole["digest"]
    assert [check["phase"] for check in resumed["checks"]] == ["head", "top"]
    assert all(check["passed"] for check in resumed["checks"])

"""Both loops under real strategies on CPU: MirroredStrategy over two logical devices, and
MultiWorkerMirroredStrategy across two processes talking over loopback."""

import json
import os
import subprocess
import sys

import pytest

from tests.loopback import free_ports

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_worker.py")


def _worker(loop, strategy, output, env=None):
    return subprocess.Popen(
        [sys.executable, WORKER, "--loop", loop, "--strategy", strategy, "--output", str(output)],
        env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _finish(process, timeout=600):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]


@pytest.mark.parametrize("loop", ["fit", "gradient_tape"])
def test_mirrored_strategy_over_two_logical_cpus(tmp_path, loop):
    process = _worker(loop, "mirrored", tmp_path / "result.json")
    _finish(process)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["replicas"] == 2
    assert result["replicas_agree"]
    assert [check["passed"] for check in result["checks"]] == [True, True]
    assert result["cached_train_examples"] == 64  # one worker: every example


@pytest.mark.parametrize("loop", ["fit", "gradient_tape"])
def test_multi_worker_mirrored_strategy_across_two_processes(tmp_path, loop):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = [
        _worker(loop, "multi_worker", tmp_path / f"worker{index}.json",
                {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})})
        for index in range(2)
    ]
    for process in processes:
        _finish(process)
    results = [json.loads((tmp_path / f"worker{index}.json").read_text()) for index in range(2)]
    assert [result["replicas"] for result in results] == [2, 2]
    assert [result["chief"] for result in results] == [True, False]
    assert results[0]["digest"] == results[1]["digest"]  # the workers end with the same weights
    # Each worker caches its own shard: last the top phase's cut tensors (block_15_add), before them the pooled features.
    assert [result["cached_train_examples"] for result in results] == [32, 32]
    assert all(check["passed"] for result in results for check in result["checks"])

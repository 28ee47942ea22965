"""A local run killed mid-training, rerun with the same command, continues the killed trainer's training
from its checkpoints instead of starting over, and the killed execution is no longer RUNNING in MLMD."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from tests.conftest import REPO_ROOT

# 120 digits: about 3 training steps an epoch, so 40 epochs with a checkpoint every step.
ARGS = ("--sample", "120", "--epochs", "40", "--checkpoint-every-steps", "1", "--accuracy-floor", "0")


def _command(output_dir):
    return [sys.executable, "local_runner.py", "--output-dir", str(output_dir), *ARGS]


def _trainer_executions(output_dir):
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = os.path.join(output_dir, "metadata.sqlite")
    store = metadata_store.MetadataStore(config)
    return {e.id: e for e in store.get_executions() if e.type.endswith("FreezeTrainer")}


def test_a_killed_trainer_resumes_in_the_next_run(tmp_path):
    output_dir = tmp_path / "out"
    model_runs = str(output_dir / "pipeline_root" / "FreezeTrainer" / "model_run")
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(_command(output_dir), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            if glob.glob(os.path.join(model_runs, "*", "checkpoints", "checkpoint")):
                break  # the trainer saved its first checkpoint
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # no chance to clean up
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    [killed_dir] = glob.glob(os.path.join(model_runs, "*"))
    killed_id = int(os.path.basename(killed_dir))
    assert _trainer_executions(output_dir)[killed_id].last_known_state == metadata_store_pb2.Execution.RUNNING

    started = time.monotonic()
    rerun = subprocess.run(_command(output_dir), cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-5000:]
    print(f"rerun: {time.monotonic() - started:.0f} s")

    executions = _trainer_executions(output_dir)
    [new_id] = set(executions) - {killed_id}
    new_dir = os.path.join(model_runs, str(new_id))
    # The rerun's log (at INFO), which its summary names, says where its training continued.
    [log_path] = re.findall(r"^  log: (.+)$", rerun.stdout, re.M)
    with open(log_path) as f:
        log = f.read()
    assert "Continuing an interrupted execution's training" in log
    resumed = re.search(r"Resuming from (\S+) at phase (\d+), batch (\d+)", log)
    assert resumed, log[-5000:]
    print(resumed.group(0))
    assert resumed.group(1) == os.path.join(new_dir, "checkpoints")  # moved into the new execution's ModelRun
    assert f"resumed at step {resumed.group(3)}" in rerun.stdout  # the phase's line above its progress bar
    # The killed execution is no longer RUNNING; the new one completed; no checkpoints are left anywhere.
    assert executions[killed_id].last_known_state == metadata_store_pb2.Execution.CANCELED
    assert "killed" in executions[killed_id].custom_properties["canceled_because"].string_value
    assert executions[new_id].last_known_state == metadata_store_pb2.Execution.COMPLETE
    assert not glob.glob(os.path.join(model_runs, "*", "checkpoints"))
    assert "blessed: True" in rerun.stdout

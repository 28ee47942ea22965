"""Issue #20: a local run that fails ends with one line, not a traceback, and leaves nothing the next run
trips on. Real runs of the local runner: a disk that fills while Transform or the trainer runs (a tmpfs
filled to the last byte), then the same command again once space is freed; a read-only output folder,
refused before any component runs; a rate within the bounds that makes the loss rise, failed as diverged
before export.

The disk tests mount a tmpfs, which needs root with CAP_SYS_ADMIN; where mounting is not permitted they
are skipped, saying so (a read-only folder is then a folder without write permission, unless root).
"""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from ml_metadata.proto import metadata_store_pb2

from tests.conftest import REPO_ROOT, run_local_runner
from tests.kfp_task_launch import mlmd_store

COMPLETE = metadata_store_pb2.Execution.COMPLETE
RUN_ARGS = ("--sample", "60", "--epochs", "1", "--accuracy-floor", "0")


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a tmpfs at `tmp_path/<name>` with mount `options`; skips the test where that is not permitted.
    Every mount is undone at the end (lazily: a process of a failed test may still hold a file there)."""
    mounted = []

    def mount(name: str, options: str):
        folder = tmp_path / name
        folder.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command here: a tmpfs cannot be mounted")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here (it needs root with CAP_SYS_ADMIN): "
                        f"{(result.stderr.strip() or 'mount failed').splitlines()[0]}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-5000:]
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def _fill(disk) -> None:
    """Writes a file on `disk` until the disk is full (another process filling it, as a user's disk fills)."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * (1 << 16))
    except OSError as err:
        assert err.errno == 28, err  # ENOSPC
    finally:
        os.close(fd)


def _states(output_dir, component: str) -> list[int]:
    store = mlmd_store(str(output_dir / "metadata.sqlite"))
    return [e.last_known_state for e in store.get_executions() if e.type.endswith(component)]


@pytest.mark.parametrize("component", ["Transform", "FreezeTrainer"])
def test_a_disk_that_fills_during_a_component_ends_the_run_in_one_line_and_the_same_command_then_runs(
        tmpfs, tmp_path, component):
    disk = tmpfs("disk", "size=64m")
    output_dir = disk / "out"
    command = [sys.executable, "local_runner.py", "--output-dir", str(output_dir), *RUN_ARGS]
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=stdout, stderr=stderr)
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            if (output_dir / "pipeline_root" / component).exists():  # its execution has started
                break
            time.sleep(0.05)
        _fill(disk)
        process.wait(timeout=600)
    out, err = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert f"  {component} ..." in out and f"{component} done" not in out, out  # the disk filled while it ran
    assert process.returncode == 1, out[-3000:] + err[-5000:]
    assert _error_lines(err) == [f"Error: {output_dir}: no space left on device; free some space there and run "
                                 "the same command again"]
    assert err.strip().count("\n") == 0  # that line, and nothing else

    os.remove(disk / "filler")
    rerun = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-5000:]
    assert "blessed: True" in rerun.stdout and "pushed to: " in rerun.stdout
    # The failed execution is FAILED, or CANCELED by the rerun where ML Metadata's disk was full too.
    failed, completed = sorted(_states(output_dir, component), key=lambda state: state == COMPLETE)
    assert failed in (metadata_store_pb2.Execution.FAILED, metadata_store_pb2.Execution.CANCELED)
    assert completed == COMPLETE


@pytest.fixture
def read_only_folder(tmp_path, tmpfs):
    """A folder nothing can be written to: a read-only tmpfs for root (which write permissions do not
    stop), a folder without write permission otherwise."""
    if os.geteuid() == 0:
        yield tmpfs("read-only", "size=1m,ro")
        return
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("inside", [False, True], ids=["the folder", "a folder to create in it"])
def test_a_read_only_output_folder_is_refused_in_one_line_before_any_component_runs(read_only_folder, inside):
    output_dir = read_only_folder / "out" if inside else read_only_folder
    result = run_local_runner("--output-dir", str(output_dir), *RUN_ARGS, timeout=300)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-5000:]
    [line] = _error_lines(result.stderr)
    assert re.fullmatch(rf"Error: output_dir: {re.escape(str(output_dir))}: (Read-only file system|Permission denied)",
                        line), line
    assert "ImportExampleGen" not in result.stdout and os.listdir(read_only_folder) == []


def test_a_rate_within_the_bounds_that_makes_the_loss_rise_fails_the_run_as_diverged_before_export(tmp_path):
    """10, the table's largest rate, with one step an epoch: the second epoch's loss is ~1,000 × the first's."""
    output_dir = tmp_path / "out"
    result = run_local_runner("--output-dir", str(output_dir), "--sample", "60", "--epochs", "4",
                              "--learning-rate", "10", "--batch-size", "64", "--accuracy-floor", "0")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-5000:]
    [line] = _error_lines(result.stderr)
    rise = re.fullmatch(r"Error: phase 'train': training diverged: the loss rose from (\S+) \(first epoch\) to (\S+), "
                        r"more than 100× \(lower the learning rate\)", line)
    assert rise and float(rise.group(2)) > 100 * float(rise.group(1)), line
    assert "Evaluator" not in result.stdout and "freeze check: passed" not in result.stdout
    # Nothing exported, nothing pushed: the trainer failed, and its Model folder holds no model.
    assert _states(output_dir, "FreezeTrainer") == [metadata_store_pb2.Execution.FAILED]
    assert not os.listdir(output_dir / "pipeline_root" / "FreezeTrainer" / "model")
    assert not (output_dir / "serving").exists()
    assert not mlmd_store(str(output_dir / "metadata.sqlite")).get_artifacts_by_type("Model")

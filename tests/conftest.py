import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before any test module imports TensorFlow

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_SAMPLE = 450
DEMO_EPOCHS = 5
DEMO_ACCURACY_FLOOR = 0.3


def run_local_runner(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "local_runner.py"), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One real local pipeline run (ExampleGen to Pusher, SQLite MLMD, Beam DirectRunner) shared by
    every end-to-end assertion."""
    output_dir = str(tmp_path_factory.mktemp("demo_run"))
    # 450 examples and 5 epochs land near 0.4 accuracy (chance 0.2): the gate's floor sits below that, so the
    # run tests blessing and pushing rather than which side of 0.4 a small run falls on.
    result = run_local_runner("--output-dir", output_dir, "--sample", str(DEMO_SAMPLE), "--epochs", str(DEMO_EPOCHS),
                              "--accuracy-floor", str(DEMO_ACCURACY_FLOOR))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return output_dir, result

"""Issue #12, items 2 and 3: a push records only a model that is there, and a version never appears
half-written.

- Two local runs on one output folder at once: the second is refused with one line naming the first.
- Two pushes in the same second (a real Importer -> Pusher pipeline with SQLite MLMD, the push clock
  frozen): two distinct, complete versions, and MLMD's destinations are those.
- A push SIGKILLed mid-copy: no incomplete version is ever visible, and the next push removes the
  leftover temporary folder and pushes a complete version.
"""

import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest
import tensorflow as tf

from freeze_trainer.tfx import pusher
from tests.conftest import REPO_ROOT, run_local_runner
from tests.kfp_task_launch import mlmd_store

BIG_ASSET_MB, BIG_ASSET_FILES = 32, 12  # a copy slow enough to be caught mid-way


def _tiny_model(directory, big_assets: int = 0) -> str:
    """A SavedModel with a serving signature and a variable; `big_assets` dummy 32 MB asset files."""

    class Doubler(tf.Module):
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def serve(self, x):
            return {"y": x * self.scale}

    module = Doubler()
    path = str(directory)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    os.makedirs(os.path.join(path, "assets"), exist_ok=True)
    for index in range(big_assets):
        with open(os.path.join(path, "assets", f"dummy-{index:02d}.bin"), "wb") as f:
            f.write(os.urandom(BIG_ASSET_MB << 20))
    return path


def _files(directory) -> dict[str, int]:
    return {os.path.relpath(os.path.join(root, name), directory): os.path.getsize(os.path.join(root, name))
            for root, _, names in os.walk(directory) for name in names}


def _versions(serving_dir) -> list[str]:
    return sorted(name for name in os.listdir(serving_dir) if name.isdigit()) if os.path.isdir(serving_dir) else []


def _complete(version_dir) -> bool:
    return (os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
            and os.path.isdir(os.path.join(version_dir, "variables"))
            and bool(os.listdir(os.path.join(version_dir, "variables"))))


def test_a_second_run_on_the_same_output_folder_is_refused_naming_the_first(tmp_path):
    output_dir = tmp_path / "shared"
    args = ["--output-dir", str(output_dir), "--sample", "120", "--epochs", "1", "--accuracy-floor", "0"]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "local_runner.py"), *args],
                             cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        lock_file = output_dir / ".run.lock"
        deadline = time.monotonic() + 300
        note = None
        while first.poll() is None and time.monotonic() < deadline:
            try:
                note = json.loads(lock_file.read_text())
                break
            except (OSError, ValueError):
                time.sleep(0.1)
        assert note and note["pid"] == first.pid, (tmp_path / "first.log").read_text()[-3000:]

        second = run_local_runner(*args, timeout=300)
        assert first.poll() is None, "the first run ended before the second one started; nothing was tested"
        assert second.returncode == 75, second.stdout[-2000:] + second.stderr[-3000:]
        refusals = [line for line in second.stderr.splitlines() if "in use by another run" in line]
        assert len(refusals) == 1, second.stderr[-3000:]
        assert f"pid {first.pid} on {note['host']}, started {note['started']}" in refusals[0]
        assert second.stdout == ""  # no summary: nothing ran
        assert json.loads(lock_file.read_text()) == note  # the holder's note was not touched

        assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        log.close()
    serving = output_dir / "serving"
    [version] = _versions(serving)
    assert _complete(serving / version)
    assert not [name for name in os.listdir(serving) if name.startswith(pusher.TEMP_PREFIX)]
    [pushed] = mlmd_store(str(output_dir / "metadata.sqlite")).get_artifacts_by_type("PushedModel")
    assert pushed.custom_properties["pushed_destination"].string_value == str(serving / version)
    # Released at exit: the next run can take the lock, and the note is cleared.
    assert lock_file.read_text() == ""
    import fcntl

    with open(lock_file) as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_two_pushes_in_the_same_second_get_two_complete_versions_and_mlmd_says_so(tmp_path, monkeypatch):
    from tfx.dsl.components.common.importer import Importer
    from tfx.orchestration import pipeline as tfx_pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.metadata import sqlite_metadata_connection_config
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts

    model_uri = tmp_path / "model"
    source = _tiny_model(model_uri / "Format-Serving")
    serving_dir = tmp_path / "serving"
    second = int(time.time())
    monkeypatch.setattr(pusher, "time", types.SimpleNamespace(time=lambda: second + 0.5))  # the push clock stops

    metadata_path = str(tmp_path / "metadata.sqlite")
    for _ in range(2):
        importer = Importer(source_uri=str(model_uri), artifact_type=standard_artifacts.Model,
                            custom_properties={"tfx_version": "1.16.0"}).with_id("model_importer")
        push = pusher.Pusher(
            model=importer.outputs["result"],
            push_destination=pusher_pb2.PushDestination(
                filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(serving_dir))),
        )
        LocalDagRunner().run(tfx_pipeline.Pipeline(
            pipeline_name="push-twice", pipeline_root=str(tmp_path / "root"), components=[importer, push],
            metadata_connection_config=sqlite_metadata_connection_config(metadata_path)))

    assert _versions(serving_dir) == [str(second), str(second + 1)]
    pushes = sorted(mlmd_store(metadata_path).get_artifacts_by_type("PushedModel"), key=lambda a: a.id)
    assert [p.custom_properties["pushed"].int_value for p in pushes] == [1, 1]
    destinations = [p.custom_properties["pushed_destination"].string_value for p in pushes]
    assert destinations == [str(serving_dir / str(second)), str(serving_dir / str(second + 1))]
    assert [p.custom_properties["pushed_version"].string_value for p in pushes] == [str(second), str(second + 1)]
    for destination in destinations:
        assert _complete(destination)
        assert _files(destination) == _files(source)
        assert float(tf.saved_model.load(destination).signatures["serving_default"](x=tf.constant([3.0]))["y"]) == 6.0


def test_a_push_killed_mid_copy_never_shows_an_incomplete_version_and_the_next_push_cleans_up(tmp_path):
    serving_dir = str(tmp_path / "serving")
    earlier, _ = pusher.push_to_filesystem(_tiny_model(tmp_path / "earlier"), serving_dir)
    source = _tiny_model(tmp_path / "big", big_assets=BIG_ASSET_FILES)
    script = ("import freeze_trainer, sys\nfrom freeze_trainer.tfx.pusher import push_to_filesystem\n"
              "push_to_filesystem(sys.argv[1], sys.argv[2])\nprint('pushed')\n")
    process = subprocess.Popen([sys.executable, "-c", script, source, serving_dir], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    temporaries = []
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None and time.monotonic() < deadline:
            names = os.listdir(serving_dir)
            # What a model server would load, checked at every look: only complete versions.
            assert all(_complete(os.path.join(serving_dir, v)) for v in names if v.isdigit()), names
            temporaries = [name for name in names if name.startswith(pusher.TEMP_PREFIX)]
            if temporaries and os.path.isdir(os.path.join(serving_dir, temporaries[0], "assets")):
                break
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)  # no chance to clean up
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, f"the push finished before it could be killed:\n{output[-3000:]}"
    assert len(temporaries) == 1
    leftover = os.path.join(serving_dir, temporaries[0])
    assert os.path.isdir(leftover) and not os.path.exists(os.path.join(leftover, "saved_model.pb"))  # killed mid-copy
    assert _versions(serving_dir) == [os.path.basename(earlier)]  # the newest version is still the complete one
    assert _complete(earlier)

    serving_path, version = pusher.push_to_filesystem(source, serving_dir)
    assert not os.path.exists(leftover)
    assert [name for name in os.listdir(serving_dir) if not name.isdigit()] == []
    assert _versions(serving_dir) == sorted([os.path.basename(earlier), version])
    assert int(version) > int(os.path.basename(earlier))
    assert _files(serving_path) == _files(source)


def test_a_live_push_keeps_its_temporary_folder(tmp_path):
    """Only the leftovers of dead processes are removed: a push in progress elsewhere is left alone."""
    serving_dir = tmp_path / "serving"
    live = serving_dir / f"{pusher.TEMP_PREFIX}123-{os.getpid()}-{pusher._host()}"
    other_host = serving_dir / f"{pusher.TEMP_PREFIX}123-999999999-some-other-host"
    live.mkdir(parents=True)
    other_host.mkdir()
    assert pusher.remove_abandoned_temporaries(str(serving_dir)) == []
    assert live.exists() and other_host.exists()


@pytest.mark.parametrize("taken", [[], ["9999999999"], [".tmp-9999999999-1-h"]])
def test_a_new_version_is_above_every_version_there_or_being_written(tmp_path, taken):
    for name in taken:
        (tmp_path / name).mkdir()
    expected = 10_000_000_000 if taken else None
    version = pusher._next_version(str(tmp_path))
    assert version == expected if expected else abs(version - time.time()) < 5

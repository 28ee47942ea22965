"""Issue #20, item 1: nothing lost. A user's input is never deleted or overwritten; a resumed trainer attempt
that fails leaves the checkpoints it took over for the next run; a report never costs a model (names drawn
as written, a failed picture or page a warning); a damaged run_report.json or checkpoint is named and
skipped.

Fast tests use real files, checkpoints and figures; two real local pipeline runs cover what a user sees:
a hyperparameters file inside the output folder with a mathtext phase name, and a kill, a failed resumed
attempt and a rerun that still resumes.
"""

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2

from freeze_trainer.keras.planning.freeze_plan import plan_policy
from freeze_trainer.keras.planning.plan_picture import draw_plan, plan_figure
from freeze_trainer.keras.training.training_checkpoints import Progress, TrainingCheckpoints
from freeze_trainer.keras.training.training_curves import curves_figure
from freeze_trainer.policy import policy_from_dict
from freeze_trainer.tfx import pusher
from freeze_trainer.tfx.resume import CHECKPOINTS, RESUME_KEY, adopted_checkpoints
from freeze_trainer.tfx.run_report import REPORT_ASSET, REPORT_DATA_ASSET, report_data, write_run_report
from freeze_trainer.tfx.serving_export import EXTRA_ASSETS_DIR
from freeze_trainer.tfx.trainer_config import TrainerConfig
from tests.conftest import REPO_ROOT, run_local_runner
from tests.kfp_task_launch import mlmd_store
from tests.model_builders import tiny_classifier
from tests.test_push_safety import _complete, _tiny_model, _versions

MATHTEXT_NAME = "a$\\frac{$b"  # matplotlib's mathtext raises on it: an unclosed \frac
MATHTEXT_POLICY = {"version": 1, "phases": [
    {"name": MATHTEXT_NAME, "epochs": 1, "rules": [{"freeze": {"base": True}}]},
    {"name": "head again", "epochs": 1, "learning_rate": 1e-4, "rules": [{"freeze": {"base": True}}]},
]}


def _sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --- inputs are never deleted or overwritten -------------------------------------------------------------

def test_a_hyperparameters_file_inside_the_output_folder_is_copied_not_deleted(tmp_path):
    import local_runner

    user_file = tmp_path / "hyperparameters" / "best.json"
    user_file.parent.mkdir()
    user_file.write_text('{"values": {"learning_rate": 0.01}}')
    before = _sha256(user_file)

    folder = local_runner.imported_file_folder(str(user_file), str(tmp_path), "hyperparameters")
    assert _sha256(user_file) == before
    assert os.listdir(folder) == ["best.json"] and _sha256(os.path.join(folder, "best.json")) == before
    # A rerun imports the same folder; the user's file, or the copy itself given as the input, stays.
    assert local_runner.imported_file_folder(str(user_file), str(tmp_path), "hyperparameters") == folder
    copy = os.path.join(folder, "best.json")
    assert local_runner.imported_file_folder(copy, str(tmp_path), "hyperparameters") == folder
    assert _sha256(user_file) == _sha256(copy) == before
    # Changed values get a folder of their own; the earlier one is left as it was.
    user_file.write_text('{"values": {"learning_rate": 0.02}}')
    changed = local_runner.imported_file_folder(str(user_file), str(tmp_path), "hyperparameters")
    assert changed != folder and _sha256(copy) == before
    assert sorted(os.listdir(tmp_path / "hyperparameters")) == sorted(
        ["best.json", os.path.basename(folder), os.path.basename(changed)])


def _texts(figure) -> list:
    from matplotlib.text import Text

    return [text for text in figure.findobj(Text) if MATHTEXT_NAME in text.get_text()]


@pytest.fixture(scope="module")
def mathtext_plans():
    return plan_policy(policy_from_dict(MATHTEXT_POLICY), tiny_classifier(), 1e-3, 1)


def test_names_in_pictures_are_drawn_as_written_never_as_mathtext(tmp_path, mathtext_plans):
    plan, curves = plan_figure(mathtext_plans), curves_figure([{"epoch": 0, "loss": 1.0}], mathtext_plans)
    for figure in (plan, curves):
        texts = _texts(figure)
        assert texts and all(not text.get_parse_math() and not text.get_usetex() for text in texts)
        figure.savefig(tmp_path / "picture.png")  # raised ValueError (mathtext) before
    draw_plan(mathtext_plans, str(tmp_path / "plan.svg"))
    assert f"1  {MATHTEXT_NAME}" in (tmp_path / "plan.svg").read_text()  # SVG text stays text: drawn literally


def test_the_run_report_draws_the_name_and_a_report_that_cannot_be_written_is_a_warning(tmp_path, mathtext_plans,
                                                                                       caplog):
    config = TrainerConfig.from_parameters(freeze_policy=json.dumps(MATHTEXT_POLICY))
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss\n0,1.0\n1,0.5\n")
    freeze_report = {"model_source": "keras.applications", "backbone": "tiny", "base_name": "tiny",
                     "task": "multiclass", "backbone_weights": "none",
                     "training_loop": "fit", "policy_sha256": "0" * 64, "freeze_check_passed": True, "phases": [],
                     "final_metrics": {}}
    data = report_data(config, mathtext_plans, freeze_report, [{"epoch": 0, "loss": 1.0}], str(tmp_path))
    assert data["plan_png"] and data["curves_png"]  # both pictures drawn

    model_run = tmp_path / "model_run"
    model_run.mkdir()
    assets = write_run_report(config, mathtext_plans, freeze_report, str(history), str(model_run))
    assert set(assets) == {REPORT_ASSET, REPORT_DATA_ASSET} and (model_run / REPORT_ASSET).is_file()

    not_a_folder = tmp_path / "a file"
    not_a_folder.write_text("")
    with caplog.at_level(logging.WARNING):
        assert write_run_report(config, mathtext_plans, freeze_report, str(history), str(not_a_folder)) == {}
    assert "The run report is not written" in caplog.text


def test_a_user_file_in_the_output_folder_and_a_mathtext_phase_name_cost_nothing(tmp_path):
    """The user's view: the run ends 0 with a pushed model, the hyperparameters file as it was and applied,
    and the report names the phase as written."""
    output_dir = tmp_path / "out"
    user_file = output_dir / "hyperparameters" / "best.json"
    user_file.parent.mkdir(parents=True)
    user_file.write_text('{"values": {"learning_rate": 0.005}}')
    before = _sha256(user_file)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(MATHTEXT_POLICY))
    result = run_local_runner("--output-dir", str(output_dir), "--hyperparameters", str(user_file),
                              "--freeze-policy", str(policy), "--sample", "100", "--accuracy-floor", "0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert _sha256(user_file) == before
    [pushed] = glob.glob(str(output_dir / "serving" / "*" / EXTRA_ASSETS_DIR / REPORT_DATA_ASSET))
    with open(pushed) as f:
        data = json.load(f)
    assert data["plan_png"] and data["curves_png"]
    assert data["policy"]["phases"][0]["name"] == MATHTEXT_NAME
    assert data["freeze_report"]["phases"][0]["learning_rate"] == 0.005  # the file's value was applied


# --- a damaged run report never stops a blessed model's push --------------------------------------------

def test_a_damaged_run_report_is_named_and_skipped_and_the_blessed_model_is_pushed(tmp_path, caplog):
    from tfx.dsl.components.common.importer import Importer
    from tfx.orchestration import pipeline as tfx_pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.metadata import sqlite_metadata_connection_config
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts

    model_uri = tmp_path / "model"
    source = _tiny_model(model_uri / "Format-Serving")
    damaged = os.path.join(source, EXTRA_ASSETS_DIR, REPORT_DATA_ASSET)
    os.makedirs(os.path.dirname(damaged))
    with open(damaged, "w") as f:
        f.write('{"freeze_report": {"phases": [')  # half-written
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "blessing").mkdir()
    model = Importer(source_uri=str(model_uri), artifact_type=standard_artifacts.Model,
                     custom_properties={"tfx_version": "1.16.0"}).with_id("model_importer")
    blessing = Importer(source_uri=str(tmp_path / "blessing"), artifact_type=standard_artifacts.ModelBlessing,
                        custom_properties={"blessed": 1}).with_id("blessing_importer")
    evaluation = Importer(source_uri=str(tmp_path / "evaluation"),
                          artifact_type=standard_artifacts.ModelEvaluation).with_id("evaluation_importer")
    serving_dir = tmp_path / "serving"
    push = pusher.Pusher(
        model=model.outputs["result"], model_blessing=blessing.outputs["result"],
        model_evaluation=evaluation.outputs["result"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(serving_dir))),
    )
    metadata_path = str(tmp_path / "metadata.sqlite")
    with caplog.at_level(logging.WARNING):
        LocalDagRunner().run(tfx_pipeline.Pipeline(
            pipeline_name="push-damaged-report", pipeline_root=str(tmp_path / "root"),
            components=[model, blessing, evaluation, push],
            metadata_connection_config=sqlite_metadata_connection_config(metadata_path)))

    [version] = _versions(serving_dir)
    assert _complete(serving_dir / version)
    [pushed] = mlmd_store(metadata_path).get_artifacts_by_type("PushedModel")
    assert pushed.custom_properties["pushed"].int_value == 1
    [warning] = [record.getMessage() for record in caplog.records if damaged in record.getMessage()]
    assert "run report is skipped" in warning and "the push goes on" in warning


# --- damaged checkpoints are skipped ---------------------------------------------------------------------

def _saved_checkpoints(directory, positions) -> list[str]:
    checkpoints = TrainingCheckpoints(str(directory), tiny_classifier(), tf.keras.optimizers.Adam())
    for position in positions:
        checkpoints.save(Progress(0, position))
    return list(checkpoints.manager.checkpoints)


def _truncate(path) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damaged_file", ["data-00000-of-00001", "index"])
def test_a_truncated_checkpoint_is_named_and_the_one_before_it_restored(tmp_path, damaged_file, caplog):
    _, latest = _saved_checkpoints(tmp_path, [1, 2])
    _truncate(f"{latest}.{damaged_file}")
    model = tiny_classifier()
    with caplog.at_level(logging.WARNING):
        progress = TrainingCheckpoints(str(tmp_path), model, tf.keras.optimizers.Adam()).restore()
    assert progress.position == 1  # the one before it
    assert f"Checkpoint {latest} is damaged" in caplog.text


def test_with_every_checkpoint_truncated_training_starts_over_with_the_model_untouched(tmp_path):
    for path in _saved_checkpoints(tmp_path, [1, 2]):
        _truncate(f"{path}.data-00000-of-00001")
    model = tiny_classifier()
    weights = [w.copy() for w in model.get_weights()]
    assert TrainingCheckpoints(str(tmp_path), model, tf.keras.optimizers.Adam()).restore() is None
    assert all((a == b).all() for a, b in zip(weights, model.get_weights()))


# --- a resumed attempt keeps what it took over until it has exported ------------------------------------

def test_adopted_checkpoints_stay_with_the_interrupted_execution_until_the_attempt_completes(tmp_path):
    source = tmp_path / "killed" / CHECKPOINTS
    _saved_checkpoints(source, [1, 2])
    files = sorted(os.listdir(source))
    custom_config = {RESUME_KEY: {"key": "same run", "checkpoints": str(source)}}

    failed_run = tmp_path / "failed"
    with pytest.raises(OSError):
        with adopted_checkpoints(str(failed_run), custom_config) as adopted:
            assert adopted == str(source)
            assert sorted(os.listdir(failed_run / CHECKPOINTS)) == files
            raise OSError(28, "No space left on device")
    shutil.rmtree(failed_run)  # what TFX does with a failed execution's outputs
    assert sorted(os.listdir(source)) == files

    completed_run = tmp_path / "completed"
    with adopted_checkpoints(str(completed_run), custom_config):
        latest = tf.train.latest_checkpoint(str(completed_run / CHECKPOINTS))
        assert latest == str(completed_run / CHECKPOINTS / "ckpt-2")  # named where the copy is
    assert not source.exists()


TRAINER_RUNS = os.path.join("pipeline_root", "FreezeTrainer")
RESUME_ARGS = ("--sample", "120", "--epochs", "8", "--checkpoint-every-steps", "1", "--accuracy-floor", "0")


def _runner(output_dir):
    return [sys.executable, "local_runner.py", "--output-dir", str(output_dir), *RESUME_ARGS]


def _kill_at_first_checkpoint(output_dir, log_path) -> None:
    with open(log_path, "w") as log:
        process = subprocess.Popen(_runner(output_dir), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            if glob.glob(os.path.join(output_dir, TRAINER_RUNS, "model_run", "*", CHECKPOINTS, "checkpoint")):
                break
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, log_path.read_text()[-3000:]


def _fail_the_export(output_dir, known_runs: set[str], log_path) -> subprocess.CompletedProcess:
    """A rerun whose trainer resumes, trains, then cannot write its model (a file stands where the model's
    folder goes, as a full disk would stop it)."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(_runner(output_dir), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        blocked = None
        while process.poll() is None and time.monotonic() < deadline and not blocked:
            for run in glob.glob(os.path.join(output_dir, TRAINER_RUNS, "model_run", "*")):
                if os.path.basename(run) not in known_runs:
                    blocked = os.path.join(output_dir, TRAINER_RUNS, "model", os.path.basename(run), "Format-Serving")
                    os.makedirs(os.path.dirname(blocked), exist_ok=True)
                    with open(blocked, "w") as f:
                        f.write("not a model folder")
            time.sleep(0.02)
        process.wait(timeout=900)
    assert blocked and process.returncode != 0, log_path.read_text()[-3000:]
    return process


def test_a_failed_resumed_attempt_leaves_the_next_run_resuming(tmp_path):
    output_dir = tmp_path / "out"
    model_runs = str(output_dir / TRAINER_RUNS / "model_run")
    _kill_at_first_checkpoint(output_dir, tmp_path / "killed.log")
    [killed] = os.listdir(model_runs)
    killed_checkpoints = os.path.join(model_runs, killed, CHECKPOINTS)
    saved = sorted(os.listdir(killed_checkpoints))

    _fail_the_export(output_dir, {killed}, tmp_path / "failed.log")
    assert "resumed at step" in (tmp_path / "failed.log").read_text()  # it took the checkpoints over
    # TFX removed the failed attempt's outputs; the checkpoints it took over are still where they were.
    assert os.listdir(model_runs) == [killed]
    assert sorted(os.listdir(killed_checkpoints)) == saved

    rerun = subprocess.run(_runner(output_dir), cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-5000:]
    [log_path] = re.findall(r"^  log: (.+)$", rerun.stdout, re.M)
    with open(log_path) as f:
        log = f.read()
    assert f"its checkpoints {killed_checkpoints} copied to" in log
    resumed = re.search(r"Resuming from (\S+) at phase (\d+), batch (\d+)", log)
    assert resumed, log[-5000:]
    assert int(resumed.group(2)) > 0 or int(resumed.group(3)) > 0  # not from zero
    assert "blessed: True" in rerun.stdout
    assert not glob.glob(os.path.join(model_runs, "*", CHECKPOINTS))  # exported: none left anywhere
    states = {e.id: e.last_known_state for e in mlmd_store(str(output_dir / "metadata.sqlite")).get_executions()
              if e.type.endswith("FreezeTrainer")}
    assert sorted(states.values()) == sorted([metadata_store_pb2.Execution.CANCELED,
                                              metadata_store_pb2.Execution.FAILED,
                                              metadata_store_pb2.Execution.COMPLETE])


def test_older_interrupted_checkpoints_go_once_a_later_attempt_continued_from_them(tmp_path):
    """Two interrupted attempts of one run (the second continued from a copy of the first's checkpoints):
    the next run resumes from the second's, and the first's copy, now stale, is removed."""
    from ml_metadata import metadata_store

    from pipelines.crash_resume import MODEL_RUN, resume_interrupted_training

    metadata_path, pipeline_root = str(tmp_path / "metadata.sqlite"), str(tmp_path / "root")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(config)
    node_type = store.put_context_type(metadata_store_pb2.ContextType(name="node"))
    [node] = store.put_contexts([metadata_store_pb2.Context(type_id=node_type, name="pipe.FreezeTrainer")])
    trainer_type = store.put_execution_type(metadata_store_pb2.ExecutionType(name="FreezeTrainer"))
    attempts = []
    for _ in range(2):
        execution = metadata_store_pb2.Execution(type_id=trainer_type,
                                                 last_known_state=metadata_store_pb2.Execution.RUNNING)
        execution.custom_properties["custom_config"].string_value = json.dumps({RESUME_KEY: {"key": "same run"}})
        execution_id, _, _ = store.put_execution(execution, [], [store.get_contexts_by_id([node])[0]])
        checkpoints = os.path.join(pipeline_root, "FreezeTrainer", MODEL_RUN, str(execution_id), CHECKPOINTS)
        _saved_checkpoints(checkpoints, [len(attempts) + 1])
        attempts.append(checkpoints)
    del store

    resume = resume_interrupted_training(metadata_path, "pipe", pipeline_root, "same run")
    assert resume[RESUME_KEY] == {"key": "same run", "checkpoints": attempts[1]}
    assert not os.path.exists(attempts[0]) and os.path.isdir(attempts[1])

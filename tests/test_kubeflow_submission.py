"""Checked submissions (`kubeflow.run`, `kubeflow.schedule`) of a compiled spec, and the pipeline image's
pins, offline: nothing is sent, no socket is opened, the Vertex job is built with anonymous credentials."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import tomli
from click.testing import CliRunner
from google.auth.credentials import AnonymousCredentials

from freeze_trainer.policy.freeze_policy import parse_policy
from kubeflow import run, schedule, submission
from kubeflow.pipeline_definition import CompileOptions, compile_pipeline
from tests.conftest import REPO_ROOT

IMAGE = "us-docker.pkg.dev/example/pipelines/freeze-trainer:test"
DOCKERFILE = os.path.join(REPO_ROOT, "kubeflow", "Dockerfile")
IMAGE_REQUIREMENTS = os.path.join(REPO_ROOT, "kubeflow", "image-requirements.txt")
UV_EXPORT = ["export", "--frozen", "--no-hashes", "--no-emit-project", "--extra", "kubeflow"]
# Compiled with a narrow MobileNetV2 at 96 px (planning builds it: small is quick), a saved backbone that
# is not on this machine (planned as its architecture), and a policy of the top block.
OPTIONS = CompileOptions(
    image=IMAGE, pipeline_root="gs://example-bucket/root", serving_dir="gs://example-bucket/serving",
    data_root="gs://example-bucket/data", image_size=96, backbone_alpha=0.35,
    backbone_weights="gs://example-bucket/backbones/mobilenetv2.keras",
    freeze_policy=open(os.path.join(REPO_ROOT, "kubeflow", "policies", "retrain_top_block.json")).read(),
)
WRONG_TYPE = ["--param", "epochs=three"]
TYPO_POLICY = '{"version": 1, "rules": [{"freeze": {"base": true}}, {"unfreze": {"group": "block_16"}}]}'
NOTHING_MATCHES = '{"version": 1, "rules": [{"freeze": {"base": true}}, {"unfreeze": {"group": "block_99"}}]}'
GOOD_POLICY = '{"version": 1, "rules": [{"freeze": {"base": true}}, {"unfreeze": {"group": "block_16"}}]}'


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    compile_pipeline(OPTIONS, str(out / "pipeline.json"))
    compile_pipeline(OPTIONS, str(out / "pipeline.yaml"))
    return {"json": str(out / "pipeline.json"), "yaml": str(out / "pipeline.yaml")}


@pytest.fixture
def offline(monkeypatch):
    """No connection can be opened; every submission call is recorded instead of made."""
    from google.cloud import aiplatform

    def no_network(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    submitted = []

    class RecordingKfpClient:
        def __init__(self, **kwargs):
            submitted.append(("kfp.Client", kwargs))

        def create_run_from_pipeline_package(self, **kwargs):
            submitted.append(("create_run_from_pipeline_package", kwargs))
            return type("Result", (), {"run_id": "run-1"})()

        def create_experiment(self, name, namespace=None):
            return type("Experiment", (), {"experiment_id": "experiment-1"})()

        def create_recurring_run(self, **kwargs):
            submitted.append(("create_recurring_run", kwargs))
            return type("RecurringRun", (), {"recurring_run_id": "recurring-1"})()

    def submit(job, service_account=None, **kwargs):
        submitted.append(("PipelineJob.submit", job, service_account))
        job._gca_resource.name = f"{job._parent}/pipelineJobs/{job.job_id}"  # what the service would name it

    def create_schedule(job, **kwargs):
        submitted.append(("PipelineJob.create_schedule", job, kwargs))
        return type("Schedule", (), {"resource_name": "schedules/1"})()

    import kfp

    monkeypatch.setattr(kfp, "Client", RecordingKfpClient)
    monkeypatch.setattr(aiplatform.PipelineJob, "submit", submit)
    monkeypatch.setattr(aiplatform.PipelineJob, "create_schedule", create_schedule)
    # A real submission looks up application-default credentials; here they are anonymous.
    monkeypatch.setattr("google.auth.default", lambda *args, **kwargs: (AnonymousCredentials(), "example-project"))
    return submitted


def _commands(compiled) -> dict[str, tuple]:
    """Each submitting command with its required flags."""
    return {
        "run vertex": (run.main, ["vertex", "--template", compiled["json"], "--project", "example-project"]),
        "run kfp": (run.main, ["kfp", "--package", compiled["yaml"], "--host", "https://kfp.example"]),
        "schedule vertex": (schedule.main, ["vertex", "--template", compiled["json"], "--project", "example-project",
                                            "--cron", "0 3 * * *"]),
        "schedule kfp": (schedule.main, ["kfp", "--package", compiled["yaml"], "--host", "https://kfp.example",
                                         "--cron", "0 3 * * *"]),
    }


def _refused(compiled, offline, extra: list[str], naming: str) -> None:
    for name, (command, args) in _commands(compiled).items():
        result = CliRunner().invoke(command, [*args, *extra])
        assert result.exit_code == 2, (name, result.output, result.exception)
        [line] = result.stderr.strip().splitlines()  # one line ...
        assert line.startswith("Error: ") and naming in line, (name, line)  # ... naming the bad value
        assert offline == [], name  # and nothing submitted


def test_a_value_of_the_wrong_type_is_refused_by_run_and_schedule(compiled, offline):
    _refused(compiled, offline, WRONG_TYPE, "epochs: 'three' is not an int")


def test_a_typo_in_a_policy_key_is_refused_by_run_and_schedule(compiled, offline):
    _refused(compiled, offline, ["--freeze-policy", TYPO_POLICY], "rules[1].unfreze")


def test_a_selector_that_matches_no_layer_of_the_compiled_model_is_refused_by_run_and_schedule(
        compiled, offline, monkeypatch):
    from freeze_trainer.tfx import trainer_model

    planned = []
    plan_for_config = trainer_model.plan_for_config

    def recording_plan(config, input_shape, *args, **kwargs):
        planned.append((config, input_shape))
        return plan_for_config(config, input_shape, *args, **kwargs)

    monkeypatch.setattr(trainer_model, "plan_for_config", recording_plan)
    _refused(compiled, offline, ["--freeze-policy", NOTHING_MATCHES], "rules[1].unfreeze.group: group 'block_99'")
    # Planned on the compiled model: its backbone and alpha, at the Transform's image size.
    assert len(planned) == 4
    for config, input_shape in planned:
        assert (config.backbone, config.backbone_alpha, input_shape) == ("MobileNetV2", 0.35, (96, 96, 3))
        assert config.backbone_weights == "none"  # the gs:// saved backbone, planned as its architecture


def test_dry_run_prints_the_checked_request_and_submits_nothing(compiled, offline):
    args = ["--freeze-policy", GOOD_POLICY, "--param", "epochs=3", "--param", "learning_rate=0.001", "--dry-run"]
    expected_policy = parse_policy(GOOD_POLICY).canonical_json()
    commands = _commands(compiled)

    command, base = commands["run vertex"]
    result = CliRunner().invoke(command, [*base, "--service-account", "trainer@example.iam", *args])
    assert result.exit_code == 0, result.output
    request = json.loads(result.stdout)
    assert request["parent"] == "projects/example-project/locations/us-central1"
    job = request["pipelineJob"]
    assert job["serviceAccount"] == "trainer@example.iam"
    values = job["runtimeConfig"]["parameterValues"]
    assert values["freeze_policy"] == expected_policy
    assert values["epochs"] == 3 and values["learning_rate"] == pytest.approx(0.001)
    assert values["batch_size"] == OPTIONS.trainer.batch_size  # a compiled default stays
    assert "FreezeTrainer" in job["pipelineSpec"]["tasks"]
    assert "nothing submitted" in result.stderr

    command, base = commands["run kfp"]
    result = CliRunner().invoke(command, [*base, *args])
    assert result.exit_code == 0, result.output
    arguments = json.loads(result.stdout)["create_run_from_pipeline_package"]
    assert arguments["pipeline_file"] == compiled["yaml"] and arguments["enable_caching"] is False
    assert arguments["arguments"] == {"freeze_policy": expected_policy, "epochs": 3, "learning_rate": 0.001}

    command, base = commands["schedule vertex"]
    result = CliRunner().invoke(command, [*base, *args])
    assert result.exit_code == 0, result.output
    scheduled = json.loads(result.stdout)["schedule"]
    assert scheduled["cron"] == "0 3 * * *" and scheduled["maxConcurrentRunCount"] == 1
    assert scheduled["createPipelineJobRequest"]["pipelineJob"]["runtimeConfig"]["parameterValues"]["epochs"] == 3

    command, base = commands["schedule kfp"]
    result = CliRunner().invoke(command, [*base, *args])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["create_recurring_run"]["cron_expression"] == "0 0 3 * * *"
    assert offline == []


def test_a_checked_submission_is_sent(compiled, offline):
    """The refusals above are refusals of the values: the same commands with good ones submit."""
    commands = _commands(compiled)
    command, base = commands["run vertex"]
    result = CliRunner().invoke(command, [*base, "--param", "epochs=3"])
    assert result.exit_code == 0, result.output
    [(what, job, _)] = offline
    assert what == "PipelineJob.submit" and job._gca_resource.runtime_config.parameter_values["epochs"] == 3
    offline.clear()
    command, base = commands["run kfp"]
    result = CliRunner().invoke(command, [*base, "--param", "epochs=3"])
    assert result.exit_code == 0, result.output
    assert offline[-1][0] == "create_run_from_pipeline_package" and offline[-1][1]["arguments"] == {"epochs": 3}


def test_the_check_reads_the_compiled_model_and_image_size(compiled):
    for path in (compiled["json"], compiled["yaml"]):
        spec = submission.read_pipeline_spec(path)
        values = submission.compiled_trainer_values(spec, {"epochs": 4}, path)
        assert values["backbone"] == "MobileNetV2" and values["backbone_alpha"] == 0.35
        assert values["epochs"] == 4  # a pipeline parameter: the value given
        assert submission.compiled_image_size(spec, path) == 96


# The pipeline image (kubeflow/Dockerfile)


def _dockerfile() -> str:
    with open(DOCKERFILE) as f:
        return f.read()


def _pyproject() -> dict:
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        return tomli.load(f)


def _uv() -> list[str]:
    for candidate in ([sys.executable, "-m", "uv"], ["python3.10", "-m", "uv"], ["uv"]):
        if shutil.which(candidate[0]) is None and not os.path.exists(candidate[0]):
            continue
        if subprocess.run([*candidate, "--version"], capture_output=True).returncode == 0:
            return candidate
    pytest.skip("uv is not installed (python3.10 -m pip install uv)")


def test_the_image_requirements_are_the_lock_exported_now():
    result = subprocess.run([*_uv(), *UV_EXPORT], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    with open(IMAGE_REQUIREMENTS) as f:
        committed = f.read()
    assert committed == result.stdout, (
        "kubeflow/image-requirements.txt differs from uv.lock; regenerate it: "
        f"python3.10 -m uv {' '.join(UV_EXPORT)} > kubeflow/image-requirements.txt"
    )


def test_the_dockerfile_installs_exactly_the_lock_and_the_project_without_resolving():
    dockerfile = _dockerfile()
    assert re.search(r"^COPY kubeflow/image-requirements.txt (\S+)$", dockerfile, re.M)
    installs = re.findall(r"pip install ([^\n\\&]*)", dockerfile)
    assert installs and all("--no-deps" in install for install in installs), installs
    assert any("-r /tmp/image-requirements.txt" in install for install in installs)
    assert "pip check" in dockerfile
    # What tests/kfp_task_launch.py:install_like_image copies: the project, not the requirements file.
    copies = [line.split()[1:] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    project = [paths for *paths, destination in copies if destination.startswith("/tmp/freeze-trainer")]
    assert sorted(path for paths in project for path in paths) == ["README.md", "components", "pyproject.toml"]


def test_the_base_image_tfx_and_python_agree_with_the_project_pins():
    dockerfile = _dockerfile()
    [tfx_tag] = re.findall(r"^FROM gcr\.io/tfx-oss-public/tfx:(\S+)$", dockerfile, re.M)
    [python_version] = re.findall(r"^ARG PYTHON_VERSION=(\S+)$", dockerfile, re.M)
    dependencies = _pyproject()["project"]["dependencies"]
    assert f"tfx=={tfx_tag}" in dependencies
    with open(IMAGE_REQUIREMENTS) as f:
        assert re.search(rf"^tfx=={re.escape(tfx_tag)}$", f.read(), re.M)
    with open(os.path.join(REPO_ROOT, ".python-version")) as f:
        assert f.read().strip() == python_version
    from packaging.specifiers import SpecifierSet

    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert f"{python_version}.0" in requires
    # The image checks its interpreter against PYTHON_VERSION before installing anything.
    assert "sys.version_info[:2]" in dockerfile and "${PYTHON_VERSION}" in dockerfile


@pytest.mark.parametrize("param, naming", [
    ("seed=-1", "seed: Input should be greater than or equal to 0"),
    ("batch_size=100000000000000000000000", "batch_size: Input should be less than or equal to 65536"),
    ("data_root=", "data_root: String should have at least 1 character"),
])
def test_values_out_of_the_tables_bounds_are_refused_by_run_and_schedule(compiled, offline, param, naming):
    """The table's bounds, and the compile options', hold for a run's values too (the dry run said "checked")."""
    _refused(compiled, offline, ["--param", param], naming)

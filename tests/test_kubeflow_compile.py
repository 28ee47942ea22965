"""The pipeline compiled for Vertex AI (PipelineJob .json) and Kubeflow Pipelines 2 (PipelineSpec .yaml),
read back with the KFP and Vertex client libraries, offline."""

import json

import pytest
import yaml
from click.testing import CliRunner
from google.auth.credentials import AnonymousCredentials
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from freeze_trainer.policy.freeze_policy import parse_policy
from kubeflow import compile_pipeline as compile_cli
from kubeflow import schedule
from kubeflow.pipeline_definition import (
    BEAM_PRESETS,
    PARAMETER_NAMES,
    PARAMETER_TYPES,
    CompileOptions,
    compile_pipeline,
    parameter_defaults,
)
from kubeflow.submission import Refused, parameter_values
from tests.conftest import REPO_ROOT
from tests.kfp_task_launch import load_pipeline_spec

IMAGE = "us-docker.pkg.dev/example/pipelines/freeze-trainer:test"
TOP_BLOCK_POLICY_FILE = f"{REPO_ROOT}/kubeflow/policies/retrain_top_block.json"
OPTIONS = CompileOptions(
    image=IMAGE,
    pipeline_root="gs://example-bucket/root",
    serving_dir="gs://example-bucket/serving",
    data_root="gs://example-bucket/data",
    epochs=7,
    learning_rate=0.003,
    backbone_weights="gs://example-bucket/backbones/mobilenetv2.keras",
    retrain=True,
    trainer_resources={"cpu": 8, "memory_gb": 30, "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 1},
    trainer_retry={"retries": 3, "backoff_seconds": 30},
)
# The tasks whose executors run Beam pipelines.
BEAM_TASKS = ("ImportExampleGen", "StatisticsGen", "Transform", "Evaluator")
RESOLVER_MODEL_TASK = "latest_blessed_model_resolver-model-resolver"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    job = compile_pipeline(OPTIONS, str(out / "pipeline.json"))
    compile_pipeline(OPTIONS, str(out / "pipeline.yaml"))
    return {"json": str(out / "pipeline.json"), "yaml": str(out / "pipeline.yaml"), "job": job}


@pytest.fixture(scope="module")
def vertex_compiled(tmp_path_factory):
    options = OPTIONS.model_copy(update={
        "retrain": False,
        "trainer_resources": CompileOptions.model_fields["trainer_resources"].default,
        "trainer_retry": {"retries": 0},  # no retries: no policy
        "vertex_training": {"project": "example-project", "region": "europe-west4", "machine_type": "n1-standard-8",
                            "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 2},
    })
    options = CompileOptions.model_validate(options.model_dump())
    path = str(tmp_path_factory.mktemp("vertex") / "pipeline.yaml")
    compile_pipeline(options, path)
    return path


def test_both_formats_parse_strictly_into_the_kfp_pipeline_spec(compiled):
    from kfp.client import client as kfp_client

    from_yaml = load_pipeline_spec(compiled["yaml"])
    from_json = load_pipeline_spec(compiled["json"])
    assert from_yaml == from_json
    assert from_yaml.schema_version == "2.1.0"
    assert set(from_yaml.root.dag.tasks) >= {"ImportExampleGen", "Transform", "FreezeTrainer", "Evaluator", "Pusher"}
    # The KFP client's own loader, which `create_recurring_run(pipeline_package_path=...)` uses.
    assert kfp_client._extract_pipeline_yaml(compiled["yaml"]).pipeline_spec == from_yaml
    with open(compiled["json"]) as f:
        assert set(json.load(f)) >= {"pipelineSpec", "runtimeConfig", "displayName"}


def test_every_pipeline_parameter_is_declared_with_its_default(compiled):
    spec = load_pipeline_spec(compiled["yaml"])
    declared = spec.root.input_definitions.parameters
    assert set(declared) == set(PARAMETER_NAMES)
    defaults = parameter_defaults(OPTIONS)
    spec_kinds = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE"}
    kinds = {name: spec_kinds[kind] for name, kind in PARAMETER_TYPES.items()}
    for name in PARAMETER_NAMES:
        parameter = declared[name]
        assert pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(parameter.parameter_type) == kinds[name]
        default = parameter.default_value
        assert (default.string_value if kinds[name] == "STRING" else default.number_value) == defaults[name]
    assert parse_policy(defaults["freeze_policy"]).rules[0].freeze.base is True
    # The Vertex PipelineJob also carries them as the runtime config's values.
    assert compiled["job"]["runtimeConfig"]["parameterValues"] == pytest.approx(defaults)
    assert compiled["job"]["runtimeConfig"]["gcsOutputDirectory"] == OPTIONS.pipeline_root


def test_trainer_and_example_gen_read_the_pipeline_parameters(compiled):
    spec = load_pipeline_spec(compiled["yaml"])
    trainer = spec.root.dag.tasks["FreezeTrainer"].inputs.parameters
    for name in PARAMETER_NAMES:
        if name != "data_root":
            assert trainer[name].component_input_parameter == name
    assert trainer["backbone"].runtime_value.constant.string_value == "MobileNetV2"
    example_gen = spec.root.dag.tasks["ImportExampleGen"].inputs.parameters
    assert example_gen["input_base"].component_input_parameter == "data_root"
    executor = _container(spec, "FreezeTrainer_executor")
    assert executor["image"] == IMAGE
    assert executor["args"][:2] == ["--executor_class_path", "freeze_trainer.tfx.executor.Executor"]


def _container(spec, executor: str) -> dict:
    return json_format.MessageToDict(spec.deployment_spec)["executors"][executor]["container"]


def _topological_order(tasks) -> list[str]:
    remaining = {name: set(task.dependent_tasks) for name, task in tasks.items()}
    order = []
    while remaining:
        ready = sorted(name for name, deps in remaining.items() if not deps - set(order))
        assert ready, f"cycle among {sorted(remaining)}"
        order += ready
        for name in ready:
            del remaining[name]
    return order


def test_retraining_warm_starts_from_and_gates_against_the_latest_blessed_model(compiled, vertex_compiled):
    spec = load_pipeline_spec(compiled["yaml"])
    tasks = spec.root.dag.tasks
    base_model = tasks["FreezeTrainer"].inputs.artifacts["base_model"].task_output_artifact
    baseline = tasks["Evaluator"].inputs.artifacts["baseline_model"].task_output_artifact
    assert (base_model.producer_task, base_model.output_artifact_key) == (RESOLVER_MODEL_TASK, "model")
    assert (baseline.producer_task, baseline.output_artifact_key) == (RESOLVER_MODEL_TASK, "model")
    pusher = tasks["Pusher"].inputs.artifacts
    assert pusher["model_blessing"].task_output_artifact.producer_task == "Evaluator"
    order = _topological_order(tasks)
    assert order.index(RESOLVER_MODEL_TASK) < order.index("FreezeTrainer") < order.index("Evaluator")
    # Without retraining the trainer starts from the backbone alone.
    assert "base_model" not in load_pipeline_spec(vertex_compiled).root.dag.tasks["FreezeTrainer"].inputs.artifacts


def test_trainer_node_resources(compiled):
    spec = load_pipeline_spec(compiled["yaml"])
    resources = _container(spec, "FreezeTrainer_executor")["resources"]
    assert resources["cpuLimit"] == 8 and resources["memoryLimit"] == 30
    # Requests alongside the limits, so the pod is scheduled where what it may use is free.
    assert resources["cpuRequest"] == 8 and resources["memoryRequest"] == 30
    assert resources["accelerator"] == {"type": "NVIDIA_TESLA_T4", "count": "1"}
    assert "resources" not in _container(spec, "Transform_executor")


def test_the_trainer_task_alone_is_retried_with_backoff_in_both_formats(compiled, vertex_compiled):
    from kfp.dsl import structures

    for path in (compiled["yaml"], compiled["json"]):
        tasks = load_pipeline_spec(path).root.dag.tasks  # strict: an unknown field would fail
        policy = tasks["FreezeTrainer"].retry_policy
        assert policy.max_retry_count == 3
        assert policy.backoff_duration.seconds == 30 and policy.backoff_factor == 2.0
        assert policy.backoff_max_duration.seconds == 3600
        # What the KFP SDK's own `PipelineTask.set_retry` compiles.
        assert policy == structures.RetryPolicy(max_retry_count=3, backoff_duration="30s", backoff_factor=2.0,
                                                backoff_max_duration="3600s").to_proto()
        assert [name for name, task in tasks.items() if task.HasField("retry_policy")] == ["FreezeTrainer"]
    assert not load_pipeline_spec(vertex_compiled).root.dag.tasks["FreezeTrainer"].HasField("retry_policy")
    # The Vertex request keeps it.
    job = schedule.vertex_pipeline_job(compiled["json"], "retries", "example-project", "europe-west4", {},
                                       credentials=AnonymousCredentials())
    assert job._gca_resource.pipeline_spec["root"]["dag"]["tasks"]["FreezeTrainer"]["retryPolicy"][
        "maxRetryCount"] == 3


def test_the_default_beam_preset_is_multi_processing_on_every_beam_task(compiled):
    spec = load_pipeline_spec(compiled["yaml"])
    for task in BEAM_TASKS:
        args = _container(spec, f"{task}_executor")["args"]
        assert args[-len(BEAM_PRESETS["multi_processing"]):] == list(BEAM_PRESETS["multi_processing"]), task
        assert "--direct_num_workers=1" not in args


def test_vertex_pipeline_job_from_the_compiled_file_carries_overrides_offline(compiled):
    policy_text = open(TOP_BLOCK_POLICY_FILE).read()
    # plan=False: planning against the compiled model is tests/test_kubeflow_submission.py's subject.
    values = parameter_values(compiled["json"], {"freeze_policy": policy_text, "epochs": "3"}, plan=False)
    job = schedule.vertex_pipeline_job(
        compiled["json"], "retraining", "example-project", "europe-west4", values,
        pipeline_root="gs://other-bucket/root", credentials=AnonymousCredentials(),
    )
    runtime = job._gca_resource.runtime_config  # the PipelineJob resource create()/create_schedule() send
    assert runtime.parameter_values["freeze_policy"] == parse_policy(policy_text).canonical_json()
    assert runtime.parameter_values["epochs"] == 3
    assert runtime.parameter_values["learning_rate"] == pytest.approx(OPTIONS.trainer.learning_rate)  # the default stays
    assert runtime.gcs_output_directory == "gs://other-bucket/root"
    tasks = job._gca_resource.pipeline_spec["root"]["dag"]["tasks"]
    assert all(task["cachingOptions"]["enableCache"] is False for task in tasks.values() if "cachingOptions" in task)
    assert tasks["FreezeTrainer"]["cachingOptions"]["enableCache"] is False


def test_schedule_arguments_are_checked_against_the_compiled_spec(compiled):
    import click

    with pytest.raises(Refused, match="not a parameter"):
        parameter_values(compiled["yaml"], {"steps": "100"})
    with pytest.raises(Refused, match="epochs: 'three' is not an int"):
        parameter_values(compiled["yaml"], {"epochs": "three"})
    with pytest.raises(Refused, match=r"rules\[0\]"):
        parameter_values(compiled["yaml"], {"freeze_policy": '{"version": 1, "rules": [{"frezee": {}}]}'})
    with pytest.raises(Refused, match="training_loop"):
        parameter_values(compiled["yaml"], {"training_loop": "keras_3"})
    arguments = schedule.kfp_recurring_run_arguments(
        compiled["yaml"], "nightly", "experiment-id", "0 3 * * *", {"epochs": 3}
    )
    assert arguments["cron_expression"] == "0 0 3 * * *"  # KFP's six fields, seconds first
    assert arguments["enable_caching"] is False and arguments["params"] == {"epochs": 3}
    assert schedule.kfp_cron("0 0 3 * * 1-5") == "0 0 3 * * 1-5"
    assert schedule.vertex_cron("TZ=Europe/Berlin 0 3 * * *") == "TZ=Europe/Berlin 0 3 * * *"
    with pytest.raises(click.BadParameter):
        schedule.vertex_cron("0 0 3 * * *")


def test_vertex_custom_job_runs_this_projects_executor(vertex_compiled):
    from google.cloud.aiplatform import gapic
    from tfx.extensions.google_cloud_ai_platform import training_clients

    from freeze_trainer.tfx.executor import Executor
    from freeze_trainer.tfx.vertex_trainer import VertexExecutor
    from tfx.types import standard_artifacts

    spec = load_pipeline_spec(vertex_compiled)
    container = _container(spec, "FreezeTrainer_executor")
    assert container["args"][1] == "freeze_trainer.tfx.vertex_trainer.VertexExecutor"
    custom_config = json.loads(
        spec.root.dag.tasks["FreezeTrainer"].inputs.parameters["custom_config"].runtime_value.constant.string_value
    )
    assert custom_config["ai_platform_enable_vertex"] is True
    assert custom_config["ai_platform_vertex_region"] == "europe-west4"
    training_args = custom_config["ai_platform_training_args"]
    assert training_args["project"] == "example-project"
    [pool] = training_args["job_spec"]["worker_pool_specs"]
    assert pool["container_spec"]["image_uri"] == IMAGE
    assert pool["machine_spec"] == {"machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_TESLA_T4",
                                    "accelerator_count": 2}
    assert VertexExecutor(VertexExecutor.Context())._GetExecutorClass() is Executor

    # The CustomJob TFX's Vertex client builds from these arguments (no request is sent).
    class OfflineVertexJobClient(training_clients.VertexJobClient):
        def create_client(self):
            self._client = gapic.JobServiceClient(credentials=AnonymousCredentials())

    def artifact(artifact_class, uri):
        instance = artifact_class()
        instance.uri = uri
        return instance

    inputs = {"examples": [artifact(standard_artifacts.Examples, "gs://b/root/Transform/transformed_examples/5")],
              "transform_graph": [artifact(standard_artifacts.TransformGraph, "gs://b/root/Transform/transform_graph/5")]}
    outputs = {"model": [artifact(standard_artifacts.Model, "gs://b/root/FreezeTrainer/model/6")]}
    exec_properties = {"freeze_policy": '{"version": 1, "rules": [{"freeze": {"base": true}}]}',
                       "custom_config": json.dumps(custom_config)}
    job = OfflineVertexJobClient("europe-west4").create_training_job(
        inputs, outputs, exec_properties, "freeze_trainer.tfx.executor.Executor",
        json.loads(json.dumps(training_args)), None, None,
    )
    command = job["job_spec"]["worker_pool_specs"][0]["container_spec"]["command"]
    assert command[:3] == ["python", "-m", "tfx.scripts.run_executor"]
    assert command[command.index("--executor_class_path") + 1] == "freeze_trainer.tfx.executor.Executor"
    assert json.loads(command[command.index("--exec-properties") + 1])["freeze_policy"] == exec_properties["freeze_policy"]


def test_multi_worker_vertex_training_gets_a_chief_pool_and_a_worker_pool():
    vertex = {"project": "p", "region": "r", "accelerator_type": "NVIDIA_L4", "accelerator_count": 1,
              "worker_replicas": 2}
    options = CompileOptions.model_validate({**OPTIONS.model_dump(), "vertex_training": vertex})
    chief, workers = options.vertex_training.worker_pool_specs(IMAGE)
    assert chief["replica_count"] == 1 and workers["replica_count"] == 2
    assert chief["machine_spec"] == workers["machine_spec"] == {
        "machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_L4", "accelerator_count": 1}
    assert chief["container_spec"] == workers["container_spec"] == {"image_uri": IMAGE}
    assert chief["machine_spec"] is not workers["machine_spec"]  # TFX's Vertex client edits pools in place
    # Single-machine strategies would leave every replica training a model of its own.
    with pytest.raises(ValueError, match="worker_replicas`=2 needs distribution"):
        CompileOptions.model_validate({**OPTIONS.model_dump(), "distribution": "mirrored", "vertex_training": vertex})


def test_compile_command_resource_worker_retry_and_dataflow_flags_land_in_the_spec(tmp_path):
    output = str(tmp_path / "pipeline.yaml")
    common = ["--image", IMAGE, "--pipeline-root", "gs://b/root", "--serving-dir", "gs://b/serving",
              "--data-root", "gs://b/data"]
    dataflow = ["--beam-preset", "dataflow", "--dataflow-project", "df-project", "--dataflow-region", "europe-west4",
                "--dataflow-temp-location", "gs://b/dataflow-tmp"]
    result = CliRunner().invoke(compile_cli.main, [
        "--output", output, *common, "--trainer-cpu", "4", "--trainer-memory-gb", "16",
        "--trainer-accelerator", "nvidia.com/gpu", "--trainer-accelerator-count", "2",
        "--vertex-training-project", "p", "--vertex-accelerator", "NVIDIA_L4", "--vertex-accelerator-count", "1",
        "--vertex-worker-replicas", "3", "--trainer-retries", "2", "--trainer-retry-backoff", "120",
        *dataflow, "--beam-arg=--max_num_workers=8",
    ])
    assert result.exit_code == 0, result.output
    spec = load_pipeline_spec(output)
    resources = _container(spec, "FreezeTrainer_executor")["resources"]
    assert resources == {"cpuLimit": 4.0, "cpuRequest": 4.0, "memoryLimit": 16.0, "memoryRequest": 16.0,
                         "accelerator": {"type": "nvidia.com/gpu", "count": "2"}}
    retry = spec.root.dag.tasks["FreezeTrainer"].retry_policy
    assert (retry.max_retry_count, retry.backoff_duration.seconds) == (2, 120)
    # Every Beam component runs on Dataflow, its workers on the pipeline image; --beam-arg comes after.
    expected = ["--runner=DataflowRunner", "--project=df-project", "--region=europe-west4",
                "--temp_location=gs://b/dataflow-tmp", f"--sdk_container_image={IMAGE}", "--sdk_location=container",
                "--experiments=use_runner_v2", "--max_num_workers=8"]
    for task in BEAM_TASKS:
        container = _container(spec, f"{task}_executor")
        assert container["args"][-len(expected):] == expected, task
        assert container["image"] == IMAGE
    # ImportExampleGen's driver (the KFP pre-cache check) reads the input with the same arguments.
    driver = _container(spec, "ImportExampleGen_executor")["lifecycle"]["preCacheCheck"]
    assert driver["args"][-len(expected):] == expected
    assert not any(arg.startswith("--direct_") for task in BEAM_TASKS for arg in _container(spec, f"{task}_executor")["args"])
    custom_config = json.loads(
        spec.root.dag.tasks["FreezeTrainer"].inputs.parameters["custom_config"].runtime_value.constant.string_value
    )
    pools = custom_config["ai_platform_training_args"]["job_spec"]["worker_pool_specs"]
    assert [pool["replica_count"] for pool in pools] == [1, 3]
    assert all(pool["machine_spec"]["accelerator_type"] == "NVIDIA_L4" for pool in pools)

    # The options model's checks, each one line naming the flag; nothing is written then.
    for flags, message in (
        (dataflow[:2], "--beam-preset dataflow needs --dataflow-project, --dataflow-region and "
                       "--dataflow-temp-location"),
        (dataflow[:4], "--dataflow-region: Field required"),
        (dataflow[2:], "the dataflow options need --beam-preset dataflow, not 'multi_processing'"),
        (["--vertex-region", "europe-west4"], "--vertex-training-project: Field required"),
        (["--trainer-accelerator", "nvidia.com/gpu"],
         "set --trainer-accelerator and --trainer-accelerator-count together"),
        (["--vertex-training-project", "p", "--vertex-worker-replicas", "1", "--distribution", "mirrored"],
         "--vertex-worker-replicas=1 needs distribution auto or multi_worker"),
        (["--image-size", "10000"], "'--image-size': 10000 is not in the range 8<=x<=1024"),
    ):
        refused = CliRunner().invoke(compile_cli.main, ["--output", str(tmp_path / "bad.yaml"), *common, *flags])
        assert refused.exit_code == 2 and message in " ".join(refused.output.split()), refused.output
    assert not (tmp_path / "bad.yaml").exists()


def test_compile_command_writes_both_formats(tmp_path):
    common = ["--image", IMAGE, "--pipeline-root", "gs://b/root", "--serving-dir", "gs://b/serving",
              "--data-root", "gs://b/data", "--freeze-policy", TOP_BLOCK_POLICY_FILE, "--retrain"]
    for name in ("pipeline.yaml", "pipeline.json"):
        result = CliRunner().invoke(compile_cli.main, ["--output", str(tmp_path / name), *common])
        assert result.exit_code == 0, result.output
    with open(tmp_path / "pipeline.yaml") as f:
        text = f.read()
    assert text.startswith("# PIPELINE DEFINITION")
    default = yaml.safe_load(text)["root"]["inputDefinitions"]["parameters"]["freeze_policy"]["defaultValue"]
    assert parse_policy(default) == parse_policy(open(TOP_BLOCK_POLICY_FILE).read())

    bad = CliRunner().invoke(compile_cli.main, ["--output", str(tmp_path / "bad.yaml"), *common[:-3],
                                                "--freeze-policy", '{"version": 1, "rules": []}'])
    assert bad.exit_code == 2 and "rules" in bad.output
    assert not (tmp_path / "bad.yaml").exists()


def test_train_and_eval_steps_reach_the_compiled_trainer(tmp_path):
    options = CompileOptions.model_validate({**OPTIONS.model_dump(), "train_steps": 120, "eval_steps": 4})
    path = str(tmp_path / "pipeline.yaml")
    compile_pipeline(options, path)
    trainer = load_pipeline_spec(path).root.dag.tasks["FreezeTrainer"].inputs.parameters
    assert json.loads(trainer["train_args"].runtime_value.constant.string_value) == {"num_steps": 120}
    assert json.loads(trainer["eval_args"].runtime_value.constant.string_value) == {"num_steps": 4}


@pytest.mark.parametrize("flags, retries", [([], 2), (["--trainer-retries", "0"], None)])
def test_compiled_pipelines_retry_the_trainer_twice_by_default(tmp_path, flags, retries):
    output = str(tmp_path / "pipeline.yaml")
    result = CliRunner().invoke(compile_cli.main, [
        "--output", output, "--image", IMAGE, "--pipeline-root", "gs://b/root", "--serving-dir", "gs://b/serving",
        "--data-root", "gs://b/data", *flags])
    assert result.exit_code == 0, result.output
    task = load_pipeline_spec(output).root.dag.tasks["FreezeTrainer"]
    assert (task.retry_policy.max_retry_count if task.HasField("retry_policy") else None) == retries


SEARCH_SPACE_FILE = f"{REPO_ROOT}/kubeflow/policies/search_top_block.yaml"
HEAD_THEN_TOP_POLICY_FILE = f"{REPO_ROOT}/kubeflow/policies/head_then_top.json"


def test_compile_with_a_search_adds_the_tuner_and_its_space_parameter(tmp_path):
    """`--search` compiles FreezeTuner in before the trainer (its best values and its trials feed the trainer),
    the space, checked, the default of the `search_space` pipeline parameter; the trainer's per-run parameters
    reach the Tuner as pipeline parameters too. A bad space is one line and exit 2, nothing written."""
    common = ["--image", IMAGE, "--pipeline-root", "gs://b/root", "--serving-dir", "gs://b/serving",
              "--data-root", "gs://b/data", "--freeze-policy", HEAD_THEN_TOP_POLICY_FILE]
    output = str(tmp_path / "pipeline.yaml")
    result = CliRunner().invoke(compile_cli.main, ["--output", output, *common, "--search", SEARCH_SPACE_FILE,
                                                   "--max-trials", "3"])
    assert result.exit_code == 0, result.output
    spec = load_pipeline_spec(output)
    tasks = spec.root.dag.tasks
    assert "FreezeTuner" in tasks and "FreezeTuner" in tasks["FreezeTrainer"].dependent_tasks
    trainer_inputs = tasks["FreezeTrainer"].inputs.artifacts
    assert {key: trainer_inputs[key].task_output_artifact.producer_task for key in ("hyperparameters", "tuner_results")} \
        == {"hyperparameters": "FreezeTuner", "tuner_results": "FreezeTuner"}
    tuner = tasks["FreezeTuner"].inputs.parameters
    assert tuner["search_space"].component_input_parameter == "search_space"
    assert all(tuner[name].component_input_parameter == name for name in PARAMETER_NAMES if name != "data_root")
    default = yaml.safe_load(open(output).read().split("\n", 1)[1])
    default = default["root"]["inputDefinitions"]["parameters"]["search_space"]["defaultValue"]
    compiled = json.loads(default)
    assert compiled["max_trials"] == 3  # --max-trials applied to the file's space
    assert compiled["hyperparameters"]["policy.batchnorm"] == ["frozen", "affine"]
    # A run's own space is checked at submission, against the compiled trainer's values.
    other = parameter_values(output, {"search_space": '{"version": 1, "hyperparameters": {"epochs": [2, 3]}}'},
                             plan=False)
    assert json.loads(other["search_space"])["hyperparameters"] == {"epochs": [2, 3]}
    with pytest.raises(Refused, match="hyperparameters.policy.batchnrom: unknown hyperparameter; closest: "
                                      "policy.batchnorm"):
        parameter_values(output, {"search_space": '{"version": 1, "hyperparameters": {"policy.batchnrom": ["affine"]}}'},
                         plan=False)

    bad_space = tmp_path / "bad.yaml"
    bad_space.write_text("version: 1\nhyperparameters:\n  policy.phases.1.rules.1.unfreeze: [{group: block_99}]\n")
    for flags, message in (
        (["--search", str(bad_space)], "search space: hyperparameters.policy.phases.1.rules.1.unfreeze: value "
                                       "{\"group\":\"block_99\"}: phases[1].rules[1].unfreeze.group: group 'block_99' "
                                       "does not exist for this backbone"),
        (["--max-trials", "2"], "--max-trials needs --search"),
    ):
        refused = CliRunner().invoke(compile_cli.main, ["--output", str(tmp_path / "refused.yaml"), *common, *flags])
        assert refused.exit_code == 2 and message in " ".join(refused.output.split()), refused.output
        assert "Traceback" not in refused.output
    assert not (tmp_path / "refused.yaml").exists()

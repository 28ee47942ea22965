"""The freeze-policy pipeline as Kubeflow Pipelines v2 and Vertex AI run it.

It is `pipelines.freeze_pipeline.create_pipeline`, the factory the local runner uses, called with TFX
`RuntimeParameter`s in place of the values a run may change: every trainer parameter the parameter table
marks `per_run` (`freeze_trainer.tfx.trainer_config`), and the data root. Each becomes a pipeline
parameter of the compiled spec with its default, so a Vertex or KFP run changes the policy, the epochs,
the loop, ... without recompiling.

`freeze_policy` is the whole policy as one JSON string because TFX substitutes RuntimeParameters only in
top-level execution parameters, never inside `custom_config`.

What a run cannot change is fixed here at compile time: the image, the pipeline root, the serving
directory, the image size (Transform's custom_config), the table's compile-time parameters (backbone,
backbone_alpha, distribution), the trainer's node resources, its retry policy, the Beam arguments of
every task (`BEAM_PRESETS`) and the Vertex job's worker pools. Resources cannot be pipeline parameters: in `kfp-pipeline-spec` 0.2.2 (kfp 2.5.0 pins it; TFX 1.16 asks for
>=0.2.2) the container `ResourceSpec` has `cpu_limit`, `memory_limit`, `cpu_request`, `memory_request` as
doubles and `accelerator.count` as int64, with no field for a parameter placeholder, and TFX 1.16's
compiler (`kubeflow/v2/step_builder.py`) copies the node's `ResourceSpec` into the spec as it is. Compile
one spec per resource profile instead.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

import freeze_trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
import pydantic
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from freeze_trainer.policy.validation import first_error
from freeze_trainer.tfx.trainer_config import TRAINER_PARAMETER_NAMES, TRAINER_PARAMETERS, TrainerConfig
from pipelines.pipeline_options import PipelineOptions

TRAINER_NODE_ID = "FreezeTrainer"

# The Beam arguments of every task of a compiled spec (TFX's KubeflowV2DagRunner puts the pipeline's
# beam_pipeline_args on every container; the Beam components, ImportExampleGen, StatisticsGen, Transform
# and Evaluator, run their Beam pipelines with them). `dataflow` adds DataflowOptions.beam_args.
BEAM_PRESETS: dict[str, tuple[str, ...]] = {
    # One in-process worker: small data, tests.
    "local": ("--direct_running_mode=in_memory", "--direct_num_workers=1"),
    # Beam's DirectRunner with one worker process per core of the task's machine (0: as many as cores).
    "multi_processing": ("--direct_running_mode=multi_processing", "--direct_num_workers=0"),
    "dataflow": (),
}
BeamPreset = Literal["local", "multi_processing", "dataflow"]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainerResources(_Options):
    """Container resources of the trainer task (a GKE pod on KFP, a Vertex pipeline step)."""

    cpu: PositiveFloat | None = Field(None, description="Trainer task CPU limit (and request).")
    memory_gb: PositiveFloat | None = Field(None, description="Trainer task memory limit (and request), GB.")
    accelerator_type: str | None = Field(
        None, description="Trainer task accelerator type, e.g. NVIDIA_TESLA_T4 (Vertex) or nvidia.com/gpu (KFP)."
    )
    accelerator_count: int = Field(0, ge=0, description="Trainer task accelerators.")

    @model_validator(mode="after")
    def _accelerator_pair(self) -> TrainerResources:
        if bool(self.accelerator_type) != (self.accelerator_count > 0):
            raise ValueError("set `accelerator_type` and `accelerator_count` together")
        return self

    def resource_spec(self):
        """The ResourceSpec proto TFX's KFP v2 compiler takes as a node's platform config, or None."""
        if self.cpu is None and self.memory_gb is None and not self.accelerator_type:
            return None
        from kfp.pipeline_spec import pipeline_spec_pb2

        spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec()
        # Requests equal to the limits: the scheduler places the pod on a node that has what it may use
        # (Kubernetes' Guaranteed class, so a busy node does not evict a long training first).
        if self.cpu is not None:
            spec.cpu_limit = spec.cpu_request = self.cpu
        if self.memory_gb is not None:
            spec.memory_limit = spec.memory_request = self.memory_gb
        if self.accelerator_type:
            spec.accelerator.type = self.accelerator_type
            spec.accelerator.count = self.accelerator_count
        return spec


class TrainerRetry(_Options):
    """The retry policy of the trainer task (KFP 2 and Vertex AI Pipelines retry a failed task, e.g. one
    whose node was preempted). A retried attempt gets the same executor input, so it writes into the same
    ModelRun and resumes from the last checkpoint there (`run_fn`'s `<ModelRun>/checkpoints`)."""

    # Two by default: a production run survives a preempted node or a transient failure, and a retry costs
    # only the steps since the last checkpoint. 0 turns retries off.
    retries: NonNegativeInt = Field(
        2, description="Retries of a failed trainer task (a preempted node, say); a retry resumes from the last "
                       "checkpoint of the same ModelRun. 0: none."
    )
    backoff_seconds: NonNegativeInt = Field(60, description="Seconds before the first retry.")
    backoff_factor: float = Field(2.0, ge=1.0, description="Each further wait is this many times longer.")
    max_backoff_seconds: PositiveInt = Field(3600, le=3600, description="Longest wait, seconds (KFP caps it at an hour).")

    def retry_policy(self) -> dict | None:
        """`PipelineTaskSpec.retryPolicy` as the compiled JSON carries it, or None without retries. Built
        by the KFP SDK's own `RetryPolicy`, so it is what `PipelineTask.set_retry` would compile."""
        if not self.retries:
            return None
        from google.protobuf import json_format
        from kfp.dsl import structures

        policy = structures.RetryPolicy(
            max_retry_count=self.retries,
            backoff_duration=f"{self.backoff_seconds}s",
            backoff_factor=self.backoff_factor,
            backoff_max_duration=f"{self.max_backoff_seconds}s",
        )
        return json_format.MessageToDict(policy.to_proto())


class DataflowOptions(_Options):
    """Runs the Beam components on Dataflow, with the pipeline image as the workers' SDK container, so the
    workers import the Transform function and the trainer code from the same install as the tasks."""

    project: str = Field(..., min_length=1, description="With --beam-preset dataflow: the Dataflow project.")
    region: str = Field(..., min_length=1, description="With --beam-preset dataflow: the Dataflow region.")
    temp_location: str = Field(
        ..., pattern=r"^gs://.+", description="With --beam-preset dataflow: a gs:// folder for Dataflow's temp files."
    )

    def beam_args(self, image: str) -> tuple[str, ...]:
        return (
            "--runner=DataflowRunner",
            f"--project={self.project}",
            f"--region={self.region}",
            f"--temp_location={self.temp_location}",
            f"--sdk_container_image={image}",
            # The image has Beam installed (the lock's version): the workers use it, nothing is staged.
            "--sdk_location=container",
            "--experiments=use_runner_v2",
        )


class VertexTraining(_Options):
    """Runs training as a Vertex AI custom job (TFX's Vertex Trainer extension) instead of in the task."""

    project: str = Field(
        ..., min_length=1,
        description="Run training as a Vertex custom job in this project (TFX Vertex Trainer extension).",
    )
    region: str = Field("us-central1", min_length=1, description="The custom job's region.")
    machine_type: str = Field("n1-standard-8", description="The custom job's machine type.")
    accelerator_type: str | None = Field(None, description="The custom job's accelerator, e.g. NVIDIA_TESLA_T4.")
    accelerator_count: int = Field(0, ge=0, description="Accelerators per machine.")
    # Vertex gives every replica its TF_CONFIG (chief and workers), so run_fn trains under
    # MultiWorkerMirroredStrategy.
    worker_replicas: int = Field(0, ge=0, description="Workers besides the chief, in a second pool of the same machines.")

    @model_validator(mode="after")
    def _check(self) -> VertexTraining:
        if bool(self.accelerator_type) != (self.accelerator_count > 0):
            raise ValueError("set `accelerator_type` and `accelerator_count` together")
        return self

    def worker_pool_specs(self, image: str) -> list[dict]:
        """Vertex makes pool 0 the TF_CONFIG `chief` (exactly one replica) and pool 1 the `worker`s. Every
        replica runs the whole executor; a non-chief one trains with its outputs in a scratch folder and
        leaves the Model and ModelRun to the chief (`Executor._train_as_non_chief`)."""

        def pool(replica_count: int) -> dict:
            machine_spec: dict[str, Any] = {"machine_type": self.machine_type}
            if self.accelerator_type:
                machine_spec.update(accelerator_type=self.accelerator_type, accelerator_count=self.accelerator_count)
            # The extension replaces each pool's container command with TFX's run_executor entry point.
            container_spec = {"image_uri": image}
            return {"machine_spec": machine_spec, "replica_count": replica_count, "container_spec": container_spec}

        return [pool(1)] + ([pool(self.worker_replicas)] if self.worker_replicas else [])

    def custom_config(self, image: str) -> dict:
        """The trainer `custom_config` keys TFX's Vertex Trainer executor reads."""
        from tfx.extensions.google_cloud_ai_platform.constants import ENABLE_VERTEX_KEY, VERTEX_REGION_KEY
        from tfx.extensions.google_cloud_ai_platform.trainer.executor import TRAINING_ARGS_KEY

        return {
            TRAINING_ARGS_KEY: {"project": self.project, "job_spec": {"worker_pool_specs": self.worker_pool_specs(image)}},
            ENABLE_VERTEX_KEY: True,
            VERTEX_REGION_KEY: self.region,
        }


def _per_run(default: Any = ..., **field: Any) -> Any:
    """A field that is also a pipeline parameter of the compiled spec (its value: the parameter's default)."""
    return Field(default, json_schema_extra={"per_run": True}, **field)


class CompileOptions(PipelineOptions):
    """Everything a compiled spec fixes: the pipeline's parameters (`PipelineOptions`), the trainer's (the
    table) and where and how it runs. `kubeflow.compile_pipeline`'s flags are generated from it."""

    image: str = Field(..., min_length=1, description="Pipeline image built from kubeflow/Dockerfile, e.g. "
                                                      "us-docker.pkg.dev/P/R/freeze-trainer:TAG.")
    pipeline_root: str = Field(..., min_length=1, description="Artifact root, e.g. gs://BUCKET/freeze-trainer/root.")
    serving_dir: str = Field(..., min_length=1, description="Where the Pusher writes blessed models.")
    pipeline_name: str = Field("freeze-trainer", min_length=1, description="The pipeline's name.")
    data_root: str = _per_run(min_length=1, description="Default of the data_root parameter: a folder of TFRecord "
                                                        "tf.Examples.")
    # The trainer's parameters: defaults of the per-run ones, values of the compile-time ones. Keyword
    # arguments named like the table's parameters (epochs=3, ...) are collected into it.
    trainer: TrainerConfig = TrainerConfig()
    enable_cache: bool = Field(False, description="Compile-time task caching (scheduled runs turn it off anyway).")
    beam_preset: BeamPreset = Field(
        "multi_processing",
        description="Beam arguments of every task: DirectRunner with a process per core, one in-process worker, or "
                    "Dataflow with the pipeline image as the workers' SDK container.",
    )
    dataflow: DataflowOptions | None = None  # with beam_preset dataflow
    beam_pipeline_args: tuple[str, ...] = Field(
        (), description="A Beam pipeline argument, after the preset's (a later one wins); repeatable."
    )
    trainer_resources: TrainerResources = TrainerResources()
    trainer_retry: TrainerRetry = TrainerRetry()
    vertex_training: VertexTraining | None = None
    search: str | None = Field(
        None, min_length=1,
        description="A policy search space (YAML/JSON file), checked and compiled in: FreezeTuner searches it before "
                    "the trainer, which trains with the best values; the search_space run parameter overrides it.",
    )
    max_trials: PositiveInt | None = Field(None, description="With --search: at most N trials.")

    @model_validator(mode="after")
    def _trials_of_a_search(self) -> CompileOptions:
        if self.max_trials is not None and self.search is None:
            raise ValueError("`max_trials` needs `search`")
        return self

    @model_validator(mode="before")
    @classmethod
    def _collect_trainer_parameters(cls, values: Any) -> Any:
        if not isinstance(values, dict) or not set(values) & set(TRAINER_PARAMETER_NAMES):
            return values
        rest = {key: value for key, value in values.items() if key not in TRAINER_PARAMETER_NAMES}
        # The executor's own validation: a bad default fails at compile time, naming the parameter.
        rest["trainer"] = TrainerConfig.from_parameters(**{
            **dict(values.get("trainer") or {}), **{key: values[key] for key in TRAINER_PARAMETER_NAMES if key in values}
        })
        return rest

    @model_validator(mode="after")
    def _dataflow_with_its_preset(self) -> CompileOptions:
        if self.beam_preset == "dataflow" and self.dataflow is None:
            raise ValueError("`beam_preset` dataflow needs `dataflow.project`, `dataflow.region` and "
                             "`dataflow.temp_location`")
        if self.beam_preset != "dataflow" and self.dataflow is not None:
            raise ValueError(f"the dataflow options need `beam_preset` dataflow, not {self.beam_preset!r}")
        return self

    def beam_args(self) -> tuple[str, ...]:
        """The Beam arguments of every task: the preset's, then `beam_pipeline_args`."""
        preset = self.dataflow.beam_args(self.image) if self.beam_preset == "dataflow" else BEAM_PRESETS[self.beam_preset]
        return (*preset, *(self.beam_pipeline_args or ()))

    @model_validator(mode="after")
    def _workers_need_multi_worker(self) -> CompileOptions:
        workers = self.vertex_training.worker_replicas if self.vertex_training else 0
        if workers and self.trainer.distribution not in ("auto", "multi_worker"):
            # Under a single-machine strategy each replica would train its own model and only the chief's
            # would be kept: the workers' machines would be paid for and wasted.
            raise ValueError(f"`vertex_training.worker_replicas`={workers} needs distribution auto or multi_worker, "
                             f"not {self.trainer.distribution!r}")
        return self


# The pipeline parameters of every compiled spec, with their types: the compile options marked per run (the
# data root) and the per-run trainer parameters of the table.
PER_RUN_OPTIONS = tuple(name for name, field in CompileOptions.model_fields.items()
                         if (field.json_schema_extra or {}).get("per_run"))
PARAMETER_TYPES = {
    **{name: CompileOptions.model_fields[name].annotation for name in PER_RUN_OPTIONS},
    **{p.name: p.pipeline_type for p in TRAINER_PARAMETERS if p.per_run},
}
PARAMETER_NAMES = tuple(PARAMETER_TYPES)


def option_refusal(name: str, value: Any) -> str | None:
    """Why `value` is not one the per-run compile option `name` (the data root) accepts, by its field's own
    bounds (an empty data root, say), or None: a run's value is checked as the compiled default was."""
    field = CompileOptions.model_fields[name]
    try:
        pydantic.TypeAdapter(Annotated[(field.annotation, *field.metadata)]).validate_python(value)
    except pydantic.ValidationError as err:
        return f"{name}: {first_error(err)[1]}"
    return None


def parameter_defaults(options: CompileOptions, search_space: str | None = None) -> dict[str, Any]:
    """Every pipeline parameter's default: PARAMETER_NAMES', and `search_space` where a search is compiled in."""
    values = {**{name: getattr(options, name) for name in PER_RUN_OPTIONS}, **options.trainer.parameter_values()}
    return {**{name: values[name] for name in PARAMETER_NAMES}, **search_parameter(search_space)}


def runtime_parameters(options: CompileOptions, search_space: str | None = None) -> dict:
    from tfx.orchestration import data_types

    return {
        name: data_types.RuntimeParameter(name=name, ptype=PARAMETER_TYPES.get(name, str), default=default)
        for name, default in parameter_defaults(options, search_space).items()
    }


def compiled_search_space(options: CompileOptions) -> str | None:
    """The search space compiled in (`options.search` with `max_trials` applied), checked as the local runner
    checks it: keys, values, and every combination planned against the base at the image size. The base's
    weights behind a URI are not read here: an architecture is planned with random weights (the same
    layers), a `custom` base not at all (its keys and values are still checked). Raises SearchSpaceError
    and the trainer's user errors."""
    from freeze_trainer.tfx.search_space import checked_search_text

    if options.search is None:
        return None
    base = options.trainer.parameter_values()
    remote = "://" in options.trainer.backbone_weights
    if remote:
        base["backbone_weights"] = "none"
    return checked_search_text(options.search, base, (options.image_size, options.image_size, 3), options.max_trials,
                               plan=not (remote and options.trainer.backbone == "custom"))


def search_parameter(search_space: str | None) -> dict:
    """The compiled space as the `search_space` pipeline parameter (a run may search another), or nothing."""
    if search_space is None:
        return {}
    from freeze_trainer.tfx.search_component import SEARCH_SPACE_PARAMETER

    return {SEARCH_SPACE_PARAMETER: search_space}


def build_pipeline(options: CompileOptions, search_space: str | None = None):
    """The TFX pipeline object KubeflowV2DagRunner compiles; `search_space`: `compiled_search_space`'s."""
    from freeze_trainer import FreezeTrainer
    from freeze_trainer.tfx.search_component import SEARCH_SPACE_PARAMETER
    from pipelines.freeze_pipeline import create_pipeline

    trainer_class, trainer_custom_config = FreezeTrainer, None
    parameters = runtime_parameters(options, search_space)
    if options.vertex_training is not None:
        from freeze_trainer.tfx.vertex_trainer import VertexFreezeTrainer

        trainer_class = VertexFreezeTrainer
        trainer_custom_config = options.vertex_training.custom_config(options.image)

    pipeline = create_pipeline(
        pipeline_name=options.pipeline_name,
        pipeline_root=options.pipeline_root,
        serving_dir=options.serving_dir,
        options=options,
        beam_pipeline_args=list(options.beam_args()),
        enable_cache=options.enable_cache,
        trainer_class=trainer_class,
        trainer_custom_config=trainer_custom_config,
        search_space=parameters.pop(SEARCH_SPACE_PARAMETER, None),
        # Compile-time parameters as values, per-run ones (data_root, the search space) as RuntimeParameters.
        **{**options.trainer.parameter_values(), **parameters},
    )
    resources = options.trainer_resources.resource_spec()
    if resources is not None:
        trainer_node(pipeline).with_platform_config(resources)
    return pipeline


def trainer_node(pipeline):
    (trainer,) = [node for node in pipeline.components if node.id == TRAINER_NODE_ID]
    return trainer


def compile_pipeline(options: CompileOptions, output_path: str) -> dict:
    """Writes `output_path`: a Vertex PipelineJob for `.json`, a KFP v2 PipelineSpec for `.yaml`.
    Returns the PipelineJob as a dict. A bad `options.search` raises SearchSpaceError (or the trainer's
    user errors) before anything is compiled."""
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    if not output_path.endswith((".json", ".yaml", ".yml")):
        raise ValueError(f"{output_path}: the output is .json (Vertex PipelineJob) or .yaml (KFP PipelineSpec)")
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        # Schema 2.1 passes parameters as typed values (`parameterValues`), which KFP 2 and Vertex expect.
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=options.image, use_pipeline_spec_2_1=True),
    )
    search_space = compiled_search_space(options)  # checked before anything is compiled
    defaults = parameter_defaults(options, search_space)
    # The Vertex PipelineJob carries the defaults in runtimeConfig.parameterValues ...
    job = runner.run(build_pipeline(options, search_space), parameter_values=defaults, write_out=False)
    # ... but TFX leaves them out of the PipelineSpec, so a KFP run (which has only the spec) would have
    # to set every parameter. Declaring them as the root's defaultValue makes every parameter optional.
    root_parameters = job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    for name, value in defaults.items():
        root_parameters[name]["defaultValue"] = value
    # TFX 1.16's compiler sets no retry policy; the spec (kfp-pipeline-spec 0.2.2) has one per task.
    retry_policy = options.trainer_retry.retry_policy()
    if retry_policy is not None:
        job["pipelineSpec"]["root"]["dag"]["tasks"][TRAINER_NODE_ID]["retryPolicy"] = retry_policy
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    # TFX's own writer: `.yaml` gets the PipelineSpec with KFP's comment header, `.json` the PipelineJob.
    kubeflow_v2_dag_runner._write_pipeline_spec_to_file(  # noqa: SLF001
        job, f"{options.pipeline_name}: FreezeTrainer pipeline (tfx-{_tfx_version()})", output_path
    )
    return job


def _tfx_version() -> str:
    from tfx import version

    return version.__version__

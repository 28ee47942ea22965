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
backbone_alpha, distribution), the trainer's node resources and the Vertex job's worker pools. Resources
cannot be pipeline parameters: in `kfp-pipeline-spec` 0.2.2 (kfp 2.5.0 pins it; TFX 1.16 asks for
>=0.2.2) the container `ResourceSpec` has `cpu_limit`, `memory_limit`, `cpu_request`, `memory_request` as
doubles and `accelerator.count` as int64, with no field for a parameter placeholder, and TFX 1.16's
compiler (`kubeflow/v2/step_builder.py`) copies the node's `ResourceSpec` into the spec as it is. Compile
one spec per resource profile instead.
"""

from __future__ import annotations

import os
from typing import Any

import freeze_trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from freeze_trainer.tfx.trainer_config import TRAINER_PARAMETER_NAMES, TRAINER_PARAMETERS, TrainerConfig

TRAINER_NODE_ID = "FreezeTrainer"
# The pipeline parameters of every compiled spec, with their types: the data root and the per-run trainer
# parameters of the table.
PARAMETER_TYPES = {"data_root": str, **{p.name: p.pipeline_type for p in TRAINER_PARAMETERS if p.per_run}}
PARAMETER_NAMES = tuple(PARAMETER_TYPES)


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainerResources(_Options):
    """Container resources of the trainer task (a GKE pod on KFP, a Vertex pipeline step)."""

    cpu: PositiveFloat | None = None
    memory_gb: PositiveFloat | None = None
    accelerator_type: str | None = Field(None, description="e.g. NVIDIA_TESLA_T4 (Vertex) or nvidia.com/gpu (KFP)")
    accelerator_count: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _accelerator_pair(self) -> TrainerResources:
        if bool(self.accelerator_type) != (self.accelerator_count > 0):
            raise ValueError("set accelerator_type and accelerator_count together")
        return self

    def resource_spec(self):
        """The ResourceSpec proto TFX's KFP v2 compiler takes as a node's platform config, or None."""
        if self.cpu is None and self.memory_gb is None and not self.accelerator_type:
            return None
        from kfp.pipeline_spec import pipeline_spec_pb2

        spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec()
        if self.cpu is not None:
            spec.cpu_limit = self.cpu
        if self.memory_gb is not None:
            spec.memory_limit = self.memory_gb
        if self.accelerator_type:
            spec.accelerator.type = self.accelerator_type
            spec.accelerator.count = self.accelerator_count
        return spec


class VertexTraining(_Options):
    """Runs training as a Vertex AI custom job (TFX's Vertex Trainer extension) instead of in the task."""

    project: str = Field(..., min_length=1)
    region: str = Field(..., min_length=1)
    machine_type: str = "n1-standard-8"
    accelerator_type: str | None = Field(None, description="e.g. NVIDIA_TESLA_T4, NVIDIA_L4")
    accelerator_count: int = Field(0, ge=0)
    worker_replicas: int = Field(
        0, ge=0,
        description="Workers besides the chief, in a second pool of the same machines. Vertex gives every replica "
                    "its TF_CONFIG (chief and workers), so run_fn trains under MultiWorkerMirroredStrategy.",
    )

    @model_validator(mode="after")
    def _check(self) -> VertexTraining:
        if bool(self.accelerator_type) != (self.accelerator_count > 0):
            raise ValueError("set accelerator_type and accelerator_count together")
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


class CompileOptions(_Options):
    image: str = Field(..., min_length=1, description="The pipeline image (kubeflow/Dockerfile)")
    pipeline_root: str = Field(..., min_length=1)
    serving_dir: str = Field(..., min_length=1, description="The Pusher's filesystem destination")
    pipeline_name: str = "freeze-trainer"
    data_root: str = Field(..., min_length=1, description="Default of the data_root pipeline parameter")
    # The trainer's parameters: defaults of the per-run ones, values of the compile-time ones. Keyword
    # arguments named like the table's parameters (epochs=3, ...) are collected into it.
    trainer: TrainerConfig = TrainerConfig()
    image_size: PositiveInt = 224
    accuracy_floor: float = Field(0.5, ge=0.0, le=1.0)
    max_accuracy_drop: float = Field(0.02, ge=0.0)
    retrain: bool = False
    enable_cache: bool = False
    beam_pipeline_args: tuple[str, ...] | None = None
    trainer_resources: TrainerResources = TrainerResources()
    vertex_training: VertexTraining | None = None

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
    def _workers_need_multi_worker(self) -> CompileOptions:
        workers = self.vertex_training.worker_replicas if self.vertex_training else 0
        if workers and self.trainer.distribution not in ("auto", "multi_worker"):
            # Under a single-machine strategy each replica would train its own model and only the chief's
            # would be kept: the workers' machines would be paid for and wasted.
            raise ValueError(f"vertex worker_replicas={workers} needs distribution auto or multi_worker, "
                             f"not {self.trainer.distribution!r}")
        return self


def parameter_defaults(options: CompileOptions) -> dict[str, Any]:
    values = {"data_root": options.data_root, **options.trainer.parameter_values()}
    return {name: values[name] for name in PARAMETER_NAMES}


def runtime_parameters(options: CompileOptions) -> dict:
    from tfx.orchestration import data_types

    return {
        name: data_types.RuntimeParameter(name=name, ptype=PARAMETER_TYPES[name], default=default)
        for name, default in parameter_defaults(options).items()
    }


def build_pipeline(options: CompileOptions):
    """The TFX pipeline object KubeflowV2DagRunner compiles."""
    from freeze_trainer import FreezeTrainer
    from pipelines.freeze_pipeline import create_pipeline

    trainer_class, trainer_custom_config = FreezeTrainer, None
    if options.vertex_training is not None:
        from freeze_trainer.tfx.vertex_trainer import VertexFreezeTrainer

        trainer_class = VertexFreezeTrainer
        trainer_custom_config = options.vertex_training.custom_config(options.image)

    pipeline = create_pipeline(
        pipeline_name=options.pipeline_name,
        pipeline_root=options.pipeline_root,
        serving_dir=options.serving_dir,
        image_size=options.image_size,
        accuracy_floor=options.accuracy_floor,
        max_accuracy_drop=options.max_accuracy_drop,
        beam_pipeline_args=list(options.beam_pipeline_args) if options.beam_pipeline_args else None,
        enable_cache=options.enable_cache,
        retrain=options.retrain,
        trainer_class=trainer_class,
        trainer_custom_config=trainer_custom_config,
        # Compile-time parameters as values, per-run ones (and data_root) as RuntimeParameters.
        **{**options.trainer.parameter_values(), **runtime_parameters(options)},
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
    Returns the PipelineJob as a dict."""
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    if not output_path.endswith((".json", ".yaml", ".yml")):
        raise ValueError(f"{output_path}: the output is .json (Vertex PipelineJob) or .yaml (KFP PipelineSpec)")
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        # Schema 2.1 passes parameters as typed values (`parameterValues`), which KFP 2 and Vertex expect.
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=options.image, use_pipeline_spec_2_1=True),
    )
    defaults = parameter_defaults(options)
    # The Vertex PipelineJob carries the defaults in runtimeConfig.parameterValues ...
    job = runner.run(build_pipeline(options), parameter_values=defaults, write_out=False)
    # ... but TFX leaves them out of the PipelineSpec, so a KFP run (which has only the spec) would have
    # to set every parameter. Declaring them as the root's defaultValue makes every parameter optional.
    root_parameters = job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    for name, value in defaults.items():
        root_parameters[name]["defaultValue"] = value
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    # TFX's own writer: `.yaml` gets the PipelineSpec with KFP's comment header, `.json` the PipelineJob.
    kubeflow_v2_dag_runner._write_pipeline_spec_to_file(  # noqa: SLF001
        job, f"{options.pipeline_name}: FreezeTrainer pipeline (tfx-{_tfx_version()})", output_path
    )
    return job


def _tfx_version() -> str:
    from tfx import version

    return version.__version__

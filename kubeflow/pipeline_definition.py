"""The freeze-policy pipeline as Kubeflow Pipelines v2 and Vertex AI run it.

It is `pipelines.freeze_pipeline.create_pipeline`, the factory the local runner uses, called with TFX
`RuntimeParameter`s in place of the values a run may change: the policy, the training loop and knobs,
the backbone weights and the data root. Each becomes a pipeline parameter of the compiled spec with its
default, so a Vertex or KFP run changes the policy without recompiling.

`freeze_policy` is the whole policy as one JSON string because TFX substitutes RuntimeParameters only in
top-level execution parameters, never inside `custom_config`.

What a run cannot change is fixed here at compile time: the image, the pipeline root, the serving
directory, the image size (Transform's custom_config), the trainer's node resources and the Vertex job's
worker pools. Resources cannot be pipeline parameters: in `kfp-pipeline-spec` 0.2.2 (kfp 2.5.0 pins it;
TFX 1.16 asks for >=0.2.2) the container `ResourceSpec` has `cpu_limit`, `memory_limit`, `cpu_request`,
`memory_request` as doubles and `accelerator.count` as int64, with no field for a parameter placeholder,
and TFX 1.16's compiler (`kubeflow/v2/step_builder.py`) copies the node's `ResourceSpec` into the spec
as it is. Compile one spec per resource profile instead.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is first imported

from typing import Any, Literal  # noqa: E402

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator, model_validator  # noqa: E402

from components.freeze_trainer.freeze_policy import FROZEN_BASE_POLICY, parse_policy  # noqa: E402
from components.freeze_trainer.trainer_config import TrainerConfig  # noqa: E402

TRAINER_NODE_ID = "FreezeTrainer"
# The pipeline parameters of every compiled spec, with their types.
PARAMETER_TYPES = {"freeze_policy": str, "training_loop": str, "epochs": int, "learning_rate": float,
                   "batch_size": int, "backbone_weights": str, "data_root": str}
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
    # Defaults of the pipeline parameters.
    data_root: str = Field(..., min_length=1)
    freeze_policy: str = FROZEN_BASE_POLICY.canonical_json()
    training_loop: Literal["fit", "gradient_tape"] = "fit"
    epochs: PositiveInt = 10
    learning_rate: PositiveFloat = 1e-2
    batch_size: PositiveInt = 32
    backbone_weights: str = "imagenet"
    # Fixed at compile time.
    backbone: str = "MobileNetV2"
    backbone_alpha: PositiveFloat | None = None
    distribution: str | None = Field(None, description="tf.distribute choice; None: the trainer's default (auto)")
    image_size: PositiveInt = 224
    accuracy_floor: float = Field(0.5, ge=0.0, le=1.0)
    max_accuracy_drop: float = Field(0.02, ge=0.0)
    retrain: bool = False
    enable_cache: bool = False
    beam_pipeline_args: tuple[str, ...] | None = None
    trainer_resources: TrainerResources = TrainerResources()
    vertex_training: VertexTraining | None = None

    @field_validator("freeze_policy")
    @classmethod
    def _canonical_policy(cls, text: str) -> str:
        # One line of canonical JSON: the compiled spec's default, and the YAML header comment TFX writes.
        return parse_policy(text).canonical_json()

    @model_validator(mode="after")
    def _defaults_are_valid(self) -> CompileOptions:
        # The same validation the executor applies at run time: a bad default fails at compile time.
        TrainerConfig.from_parameters(
            freeze_policy=self.freeze_policy, backbone=self.backbone, backbone_weights=self.backbone_weights,
            backbone_alpha=self.backbone_alpha, epochs=self.epochs, learning_rate=self.learning_rate,
            batch_size=self.batch_size, training_loop=self.training_loop, distribution=self.distribution,
        )
        workers = self.vertex_training.worker_replicas if self.vertex_training else 0
        if workers and self.distribution not in (None, "auto", "multi_worker"):
            # Under a single-machine strategy each replica would train its own model and only the chief's
            # would be kept: the workers' machines would be paid for and wasted.
            raise ValueError(f"vertex worker_replicas={workers} needs distribution auto or multi_worker, "
                             f"not {self.distribution!r}")
        return self


def runtime_parameters(options: CompileOptions) -> dict:
    from tfx.orchestration import data_types

    return {
        name: data_types.RuntimeParameter(name=name, ptype=ptype, default=getattr(options, name))
        for name, ptype in PARAMETER_TYPES.items()
    }


def build_pipeline(options: CompileOptions):
    """The TFX pipeline object KubeflowV2DagRunner compiles."""
    from components.freeze_trainer.component import FreezeTrainer
    from pipelines.freeze_pipeline import create_pipeline

    trainer_class, trainer_custom_config = FreezeTrainer, None
    if options.vertex_training is not None:
        from components.freeze_trainer.vertex_trainer import VertexFreezeTrainer

        trainer_class = VertexFreezeTrainer
        trainer_custom_config = options.vertex_training.custom_config(options.image)

    parameters = runtime_parameters(options)
    pipeline = create_pipeline(
        pipeline_name=options.pipeline_name,
        pipeline_root=options.pipeline_root,
        serving_dir=options.serving_dir,
        backbone=options.backbone,
        backbone_alpha=options.backbone_alpha,
        distribution=options.distribution,
        image_size=options.image_size,
        accuracy_floor=options.accuracy_floor,
        max_accuracy_drop=options.max_accuracy_drop,
        beam_pipeline_args=list(options.beam_pipeline_args) if options.beam_pipeline_args else None,
        enable_cache=options.enable_cache,
        retrain=options.retrain,
        trainer_class=trainer_class,
        trainer_custom_config=trainer_custom_config,
        **parameters,
    )
    resources = options.trainer_resources.resource_spec()
    if resources is not None:
        trainer_node(pipeline).with_platform_config(resources)
    return pipeline


def trainer_node(pipeline):
    (trainer,) = [node for node in pipeline.components if node.id == TRAINER_NODE_ID]
    return trainer


def parameter_defaults(options: CompileOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in PARAMETER_NAMES}


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

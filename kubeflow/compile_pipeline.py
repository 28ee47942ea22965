"""Compiles the freeze-policy pipeline with TFX's KubeflowV2DagRunner.

    # Vertex AI Pipelines: a PipelineJob (.json)
    python -m kubeflow.compile_pipeline --output pipeline.json --image IMAGE \\
        --pipeline-root gs://BUCKET/root --serving-dir gs://BUCKET/serving --data-root gs://BUCKET/data
    # Kubeflow Pipelines 2: a PipelineSpec (.yaml)
    python -m kubeflow.compile_pipeline --output pipeline.yaml --image IMAGE ... (same flags)

The output's extension picks the format. Pipeline parameters (changeable per run without recompiling):
freeze_policy, training_loop, epochs, learning_rate, batch_size, backbone_weights, data_root; the `--freeze-policy`,
`--epochs`, ... flags set their defaults. Everything else is fixed at compile time.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is first imported

import click  # noqa: E402
import pydantic  # noqa: E402

from components.freeze_trainer.freeze_policy import FROZEN_BASE_POLICY, PolicyError  # noqa: E402
from components.freeze_trainer.trainer_config import ConfigError  # noqa: E402
from kubeflow.pipeline_definition import CompileOptions, TrainerResources, VertexTraining, compile_pipeline  # noqa: E402


def _policy_text(value: str) -> str:
    return open(value).read() if os.path.isfile(value) else value


@click.command()
@click.option("--output", required=True, help="pipeline.json (Vertex PipelineJob) or pipeline.yaml (KFP PipelineSpec).")
@click.option("--image", required=True, help="Pipeline image built from kubeflow/Dockerfile, e.g. us-docker.pkg.dev/P/R/freeze-trainer:TAG.")
@click.option("--pipeline-root", required=True, help="Artifact root, e.g. gs://BUCKET/freeze-trainer/root.")
@click.option("--serving-dir", required=True, help="Where the Pusher writes blessed models.")
@click.option("--data-root", required=True, help="Default of the data_root parameter: a folder of TFRecord tf.Examples.")
@click.option("--pipeline-name", default="freeze-trainer", show_default=True)
@click.option("--freeze-policy", default=FROZEN_BASE_POLICY.canonical_json(), show_default=True,
              help="Default of the freeze_policy parameter: a JSON/YAML file or inline JSON.")
@click.option("--training-loop", type=click.Choice(["fit", "gradient_tape"]), default="fit", show_default=True)
@click.option("--distribution", default=None, help="tf.distribute strategy (compile time); default: the trainer's auto.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--learning-rate", type=float, default=1e-2, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--backbone-weights", default="imagenet", show_default=True,
              help="Default of the backbone_weights parameter: imagenet, none, or a gs:// weights/.keras URI.")
@click.option("--backbone", default="MobileNetV2", show_default=True)
@click.option("--backbone-alpha", type=float, default=None)
@click.option("--image-size", type=int, default=224, show_default=True)
@click.option("--accuracy-floor", type=float, default=0.5, show_default=True)
@click.option("--max-accuracy-drop", type=float, default=0.02, show_default=True)
@click.option("--retrain", is_flag=True, help="Warm-start from the latest blessed model and gate against it.")
@click.option("--enable-cache", is_flag=True, help="Compile-time task caching (scheduled runs turn it off anyway).")
@click.option("--beam-arg", "beam_args", multiple=True, help="A Beam pipeline argument; repeatable.")
@click.option("--trainer-cpu", type=float, default=None, help="Trainer task CPU limit.")
@click.option("--trainer-memory-gb", type=float, default=None, help="Trainer task memory limit (GB).")
@click.option("--trainer-accelerator", default=None, help="Trainer task accelerator type, e.g. NVIDIA_TESLA_T4.")
@click.option("--trainer-accelerator-count", type=int, default=0)
@click.option("--vertex-training-project", default=None,
              help="Run training as a Vertex custom job in this project (TFX Vertex Trainer extension).")
@click.option("--vertex-region", default="us-central1", show_default=True)
@click.option("--vertex-machine-type", default="n1-standard-8", show_default=True)
@click.option("--vertex-accelerator", default=None, help="e.g. NVIDIA_TESLA_T4")
@click.option("--vertex-accelerator-count", type=int, default=0)
@click.option("--vertex-worker-replicas", type=int, default=0, help="Workers besides the chief.")
def main(output, image, pipeline_root, serving_dir, data_root, pipeline_name, freeze_policy, training_loop,
         distribution, epochs, learning_rate,
         batch_size, backbone_weights, backbone, backbone_alpha, image_size, accuracy_floor, max_accuracy_drop,
         retrain, enable_cache, beam_args, trainer_cpu, trainer_memory_gb, trainer_accelerator,
         trainer_accelerator_count, vertex_training_project, vertex_region, vertex_machine_type, vertex_accelerator,
         vertex_accelerator_count, vertex_worker_replicas):
    try:
        options = CompileOptions(
            image=image, pipeline_root=pipeline_root, serving_dir=serving_dir, data_root=data_root,
            pipeline_name=pipeline_name, freeze_policy=_policy_text(freeze_policy), training_loop=training_loop,
            distribution=distribution, epochs=epochs,
            learning_rate=learning_rate, batch_size=batch_size, backbone_weights=backbone_weights, backbone=backbone,
            backbone_alpha=backbone_alpha, image_size=image_size, accuracy_floor=accuracy_floor,
            max_accuracy_drop=max_accuracy_drop, retrain=retrain, enable_cache=enable_cache,
            beam_pipeline_args=tuple(beam_args) or None,
            trainer_resources=TrainerResources(
                cpu=trainer_cpu, memory_gb=trainer_memory_gb, accelerator_type=trainer_accelerator,
                accelerator_count=trainer_accelerator_count,
            ),
            vertex_training=VertexTraining(
                project=vertex_training_project, region=vertex_region, machine_type=vertex_machine_type,
                accelerator_type=vertex_accelerator, accelerator_count=vertex_accelerator_count,
                worker_replicas=vertex_worker_replicas,
            ) if vertex_training_project else None,
        )
    except (PolicyError, ConfigError) as err:
        raise click.UsageError(str(err)) from None
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        raise click.UsageError(f"{where}: {message}" if where else message) from None
    compile_pipeline(options, output)
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()

"""Compiles the freeze-policy pipeline with TFX's KubeflowV2DagRunner.

    # Vertex AI Pipelines: a PipelineJob (.json)
    python -m kubeflow.compile_pipeline --output pipeline.json --image IMAGE \\
        --pipeline-root gs://BUCKET/root --serving-dir gs://BUCKET/serving --data-root gs://BUCKET/data
    # Kubeflow Pipelines 2: a PipelineSpec (.yaml)
    python -m kubeflow.compile_pipeline --output pipeline.yaml --image IMAGE ... (same flags)

The output's extension picks the format. Pipeline parameters (changeable per run without recompiling): the
data root and every trainer parameter the parameter table marks per-run; the `--freeze-policy`, `--epochs`,
... flags set their defaults. The table's compile-time parameters (`--backbone`, `--backbone-alpha`,
`--distribution`) and everything else are fixed at compile time.
"""

from __future__ import annotations

import click
import pydantic

import freeze_trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from freeze_trainer.cli.parameter_options import pop_trainer_parameters, trainer_parameter_options
from freeze_trainer.policy import PolicyError, read_policy_source
from freeze_trainer.policy.validation import first_error
from freeze_trainer.tfx.trainer_config import ConfigError
from kubeflow.pipeline_definition import CompileOptions, TrainerResources, VertexTraining, compile_pipeline


@click.command()
@click.option("--output", required=True, help="pipeline.json (Vertex PipelineJob) or pipeline.yaml (KFP PipelineSpec).")
@click.option("--image", required=True, help="Pipeline image built from kubeflow/Dockerfile, e.g. us-docker.pkg.dev/P/R/freeze-trainer:TAG.")
@click.option("--pipeline-root", required=True, help="Artifact root, e.g. gs://BUCKET/freeze-trainer/root.")
@click.option("--serving-dir", required=True, help="Where the Pusher writes blessed models.")
@click.option("--data-root", required=True, help="Default of the data_root parameter: a folder of TFRecord tf.Examples.")
@click.option("--pipeline-name", default="freeze-trainer", show_default=True)
@trainer_parameter_options()
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
def main(output, image, pipeline_root, serving_dir, data_root, pipeline_name, image_size, accuracy_floor,
         max_accuracy_drop, retrain, enable_cache, beam_args, trainer_cpu, trainer_memory_gb, trainer_accelerator,
         trainer_accelerator_count, vertex_training_project, vertex_region, vertex_machine_type, vertex_accelerator,
         vertex_accelerator_count, vertex_worker_replicas, **kwargs):
    trainer_parameters = pop_trainer_parameters(kwargs)
    trainer_parameters["freeze_policy"] = read_policy_source(trainer_parameters["freeze_policy"])
    try:
        options = CompileOptions(
            image=image, pipeline_root=pipeline_root, serving_dir=serving_dir, data_root=data_root,
            pipeline_name=pipeline_name, image_size=image_size, accuracy_floor=accuracy_floor,
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
            **trainer_parameters,
        )
    except (PolicyError, ConfigError) as err:
        raise click.UsageError(str(err)) from None
    except pydantic.ValidationError as err:
        where, message = first_error(err)
        raise click.UsageError(f"{where}: {message}" if where else message) from None
    compile_pipeline(options, output)
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()

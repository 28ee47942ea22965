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

Beam (ImportExampleGen, StatisticsGen, Transform, Evaluator): `--beam-preset multi_processing` (default:
one worker process per core of the task's machine), `local` (one in-process worker) or `dataflow`
(`--dataflow-project`, `--dataflow-region`, `--dataflow-temp-location`; the workers run the pipeline
image). `--beam-arg` adds arguments after the preset's. `--trainer-retries N` retries a failed trainer
task; a retry resumes from the last checkpoint of the same ModelRun.
"""

from __future__ import annotations

import click
import pydantic

import freeze_trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from freeze_trainer.cli.parameter_options import pop_trainer_parameters, trainer_parameter_options
from freeze_trainer.cli.terminal import QuietCommand
from freeze_trainer.policy import PolicyError, read_policy_source
from freeze_trainer.policy.validation import first_error
from freeze_trainer.tfx.trainer_config import ConfigError
from kubeflow.pipeline_definition import (
    BEAM_PRESETS,
    CompileOptions,
    DataflowOptions,
    TrainerResources,
    TrainerRetry,
    VertexTraining,
    compile_pipeline,
)


@click.command(cls=QuietCommand)
@click.option("--output", required=True, help="pipeline.json (Vertex PipelineJob) or pipeline.yaml (KFP PipelineSpec).")
@click.option("--image", required=True, help="Pipeline image built from kubeflow/Dockerfile, e.g. us-docker.pkg.dev/P/R/freeze-trainer:TAG.")
@click.option("--pipeline-root", required=True, help="Artifact root, e.g. gs://BUCKET/freeze-trainer/root.")
@click.option("--serving-dir", required=True, help="Where the Pusher writes blessed models.")
@click.option("--data-root", required=True, help="Default of the data_root parameter: a folder of TFRecord tf.Examples.")
@click.option("--pipeline-name", default="freeze-trainer", show_default=True)
@trainer_parameter_options()
@click.option("--image-size", type=int, default=224, show_default=True)
@click.option("--train-steps", type=int, default=None, help="train_args.num_steps: training steps in all.")
@click.option("--eval-steps", type=int, default=None, help="eval_args.num_steps: evaluation batches.")
@click.option("--accuracy-floor", type=float, default=0.5, show_default=True)
@click.option("--max-accuracy-drop", type=float, default=0.02, show_default=True)
@click.option("--retrain", is_flag=True, help="Warm-start from the latest blessed model and gate against it.")
@click.option("--enable-cache", is_flag=True, help="Compile-time task caching (scheduled runs turn it off anyway).")
@click.option("--beam-preset", type=click.Choice(list(BEAM_PRESETS)), default="multi_processing", show_default=True,
              help="Beam arguments of every task: DirectRunner with a process per core, one in-process worker, "
                   "or Dataflow with the pipeline image as the workers' SDK container.")
@click.option("--dataflow-project", default=None, help="With --beam-preset dataflow: the Dataflow project.")
@click.option("--dataflow-region", default=None, help="With --beam-preset dataflow: the Dataflow region.")
@click.option("--dataflow-temp-location", default=None, help="With --beam-preset dataflow: a gs:// temp folder.")
@click.option("--beam-arg", "beam_args", multiple=True,
              help="A Beam pipeline argument, after the preset's (a later one wins); repeatable.")
@click.option("--trainer-cpu", type=float, default=None, help="Trainer task CPU limit.")
@click.option("--trainer-memory-gb", type=float, default=None, help="Trainer task memory limit (GB).")
@click.option("--trainer-accelerator", default=None, help="Trainer task accelerator type, e.g. NVIDIA_TESLA_T4.")
@click.option("--trainer-accelerator-count", type=int, default=0)
@click.option("--trainer-retries", type=click.IntRange(min=0), default=0, show_default=True,
              help="Retries of a failed trainer task (a preempted node, say); a retry resumes from the last "
                   "checkpoint of the same ModelRun.")
@click.option("--trainer-retry-backoff", type=click.IntRange(min=0), default=60, show_default=True,
              help="Seconds before the first retry; each further wait doubles, up to an hour.")
@click.option("--vertex-training-project", default=None,
              help="Run training as a Vertex custom job in this project (TFX Vertex Trainer extension).")
@click.option("--vertex-region", default="us-central1", show_default=True)
@click.option("--vertex-machine-type", default="n1-standard-8", show_default=True)
@click.option("--vertex-accelerator", default=None, help="e.g. NVIDIA_TESLA_T4")
@click.option("--vertex-accelerator-count", type=int, default=0)
@click.option("--vertex-worker-replicas", type=int, default=0, help="Workers besides the chief.")
def main(output, image, pipeline_root, serving_dir, data_root, pipeline_name, image_size, train_steps, eval_steps,
         accuracy_floor,
         max_accuracy_drop, retrain, enable_cache, beam_preset, dataflow_project, dataflow_region,
         dataflow_temp_location, beam_args, trainer_cpu, trainer_memory_gb, trainer_accelerator,
         trainer_accelerator_count, trainer_retries, trainer_retry_backoff, vertex_training_project, vertex_region,
         vertex_machine_type, vertex_accelerator, vertex_accelerator_count, vertex_worker_replicas, **kwargs):
    dataflow_flags = {"--dataflow-project": dataflow_project, "--dataflow-region": dataflow_region,
                      "--dataflow-temp-location": dataflow_temp_location}
    if beam_preset == "dataflow" and not all(dataflow_flags.values()):
        missing = ", ".join(flag for flag, value in dataflow_flags.items() if not value)
        raise click.UsageError(f"--beam-preset dataflow needs {missing}")
    if beam_preset != "dataflow" and any(dataflow_flags.values()):
        raise click.UsageError(f"the --dataflow-* flags need --beam-preset dataflow, not {beam_preset}")
    trainer_parameters = pop_trainer_parameters(kwargs)
    trainer_parameters["freeze_policy"] = read_policy_source(trainer_parameters["freeze_policy"])
    try:
        options = CompileOptions(
            image=image, pipeline_root=pipeline_root, serving_dir=serving_dir, data_root=data_root,
            pipeline_name=pipeline_name, image_size=image_size, train_steps=train_steps, eval_steps=eval_steps,
            accuracy_floor=accuracy_floor,
            max_accuracy_drop=max_accuracy_drop, retrain=retrain, enable_cache=enable_cache,
            beam_preset=beam_preset,
            dataflow=DataflowOptions(
                project=dataflow_project, region=dataflow_region, temp_location=dataflow_temp_location,
            ) if beam_preset == "dataflow" else None,
            beam_pipeline_args=tuple(beam_args) or None,
            trainer_resources=TrainerResources(
                cpu=trainer_cpu, memory_gb=trainer_memory_gb, accelerator_type=trainer_accelerator,
                accelerator_count=trainer_accelerator_count,
            ),
            trainer_retry=TrainerRetry(retries=trainer_retries, backoff_seconds=trainer_retry_backoff),
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

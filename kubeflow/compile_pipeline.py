"""Compiles the freeze-policy pipeline with TFX's KubeflowV2DagRunner.

    # Vertex AI Pipelines: a PipelineJob (.json)
    python -m kubeflow.compile_pipeline --output pipeline.json --image IMAGE \\
        --pipeline-root gs://BUCKET/root --serving-dir gs://BUCKET/serving --data-root gs://BUCKET/data
    # Kubeflow Pipelines 2: a PipelineSpec (.yaml)
    python -m kubeflow.compile_pipeline --output pipeline.yaml --image IMAGE ... (same flags)

The output's extension picks the format. Every flag but `--output` is generated: the trainer's from the
parameter table, the rest from `CompileOptions` (and the `PipelineOptions` it extends), which validates
them. Pipeline parameters (changeable per run without recompiling): the data root and every trainer
parameter the parameter table marks per-run; the `--data-root`, `--freeze-policy`, `--epochs`, ... flags
set their defaults. The table's compile-time parameters (`--backbone`, `--backbone-alpha`,
`--distribution`) and everything else are fixed at compile time.

Beam (ImportExampleGen, StatisticsGen, Transform, Evaluator): `--beam-preset multi_processing` (default:
one worker process per core of the task's machine), `local` (one in-process worker) or `dataflow`
(`--dataflow-project`, `--dataflow-region`, `--dataflow-temp-location`; the workers run the pipeline
image). `--beam-arg` adds arguments after the preset's. `--trainer-retries N` retries a failed trainer
task (default 2; 0: none); a retry resumes from the last checkpoint of the same ModelRun.

`--search SPACE [--max-trials N]` adds FreezeTuner, a policy search before the trainer, whose best values
the trainer applies. The space is checked at compile time as the local runner checks it (a bad one is one
line and exit 2) and compiled in as the default of the `search_space` pipeline parameter, which a run may
set to another space's text.
"""

from __future__ import annotations

import click

import freeze_trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from freeze_trainer.cli.parameter_options import pop_trainer_parameters, trainer_parameter_options
from freeze_trainer.cli.terminal import QuietCommand
from freeze_trainer.policy import PolicyError, read_policy_source
from kubeflow.pipeline_definition import CompileOptions, compile_pipeline
from pipelines.model_options import ModelOptions

# Every field of CompileOptions but the trainer's (their flags come from the table) is a flag. These keep
# the names they had before the flags were generated.
COMPILE_OPTIONS = ModelOptions(
    CompileOptions,
    exclude=("trainer",),
    prefixes={"trainer_resources": "trainer", "trainer_retry": "trainer-retry", "vertex_training": "vertex"},
    flags={
        "beam_pipeline_args": "--beam-arg",
        "trainer_resources.accelerator_type": "--trainer-accelerator",
        "trainer_retry.retries": "--trainer-retries",
        "trainer_retry.backoff_seconds": "--trainer-retry-backoff",
        "vertex_training.project": "--vertex-training-project",
        "vertex_training.accelerator_type": "--vertex-accelerator",
    },
)


def _spec_path(ctx: click.Context, param: click.Parameter, path: str) -> str:
    """Checked before anything is compiled: the extension picks the format."""
    if not path.endswith((".json", ".yaml", ".yml")):
        raise click.BadParameter(f"{path}: .json (Vertex PipelineJob) or .yaml (KFP PipelineSpec)")
    return path


@click.command(cls=QuietCommand)
@click.option("--output", required=True, callback=_spec_path,
              help="pipeline.json (Vertex PipelineJob) or pipeline.yaml (KFP PipelineSpec).")
@COMPILE_OPTIONS
@trainer_parameter_options()
def main(output, **arguments):
    trainer_parameters = pop_trainer_parameters(arguments)
    try:
        trainer_parameters["freeze_policy"] = read_policy_source(trainer_parameters["freeze_policy"])
    except PolicyError as err:
        raise click.UsageError(str(err)) from None
    options = COMPILE_OPTIONS.validate(arguments, **trainer_parameters)
    from freeze_trainer.tfx.search_space import SearchSpaceError
    from freeze_trainer.tfx.trainer_model import USER_ERRORS

    try:
        compile_pipeline(options, output)
    except (SearchSpaceError, *USER_ERRORS) as err:  # a bad search space, named before anything is written
        raise click.UsageError(str(err)) from None
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()

"""Runs the freeze-policy pipeline locally: TFX LocalDagRunner, Beam DirectRunner, SQLite ML Metadata.

    python local_runner.py                                  # the embedded demo (make run)
    python local_runner.py --freeze-policy policy.yaml --epochs 3 --output-dir /tmp/run
    python local_runner.py --retrain --freeze-policy kubeflow/policies/retrain_top_block.json   # cron-able
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

import freeze_trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from freeze_trainer.cli.parameter_options import pop_trainer_parameters, trainer_parameter_options
from freeze_trainer.keras.backbones import BackboneError
from freeze_trainer.policy import PolicyError, read_policy_source
from freeze_trainer.tfx.trainer_config import ConfigError, TrainerConfig
from freeze_trainer.tfx.trainer_model import plan_for_config
from pipelines.digits_data import write_digits_examples
from pipelines.pretrain_backbone import DEFAULT_BACKBONE_PATH, IMAGE_SIZE, transfer_report_path

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
PIPELINE_NAME = "freeze-trainer-demo"


def validated_config(image_size: int, **values) -> TrainerConfig:
    """The trainer configuration, checked against the backbone's layers before any data is read."""
    try:
        config = TrainerConfig.from_parameters(**values)
        plan_for_config(config, (image_size, image_size, 3))
    except (PolicyError, ConfigError, BackboneError) as err:
        raise click.UsageError(str(err)) from None
    return config


@click.command()
@click.option("--output-dir", default=os.path.join(REPO_ROOT, "runs"), show_default=True,
              help="Pipeline root, ML Metadata store, data and pushed models go here.")
@trainer_parameter_options(defaults={"backbone_weights": DEFAULT_BACKBONE_PATH})
@click.option("--image-size", type=int, default=IMAGE_SIZE, show_default=True)
@click.option("--data-root", default=None, help="Folder of TFRecord tf.Examples; default: the embedded digits 5-9.")
@click.option("--sample", type=int, default=None, help="Use only the first N embedded examples (tests, smoke runs).")
@click.option("--accuracy-floor", type=float, default=0.4, show_default=True,
              help="The Evaluator blesses only models at or above this eval accuracy.")
@click.option("--retrain", is_flag=True,
              help="Warm-start from the latest blessed model in --output-dir and push only if the candidate "
                   "beats the gate against it; a rejected candidate is not an error (exit 0).")
def main(output_dir, image_size, data_root, sample, accuracy_floor, retrain, **kwargs):
    parameters = pop_trainer_parameters(kwargs)
    parameters["freeze_policy"] = read_policy_source(parameters["freeze_policy"])
    config = validated_config(image_size, **parameters)

    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.metadata import sqlite_metadata_connection_config

    from pipelines.freeze_pipeline import create_pipeline
    from pipelines.run_summary import summarize_latest_run

    output_dir = os.path.abspath(output_dir)
    data_root = data_root or write_digits_examples(os.path.join(output_dir, "data", "digits_5to9"), limit=sample)
    metadata_path = os.path.join(output_dir, "metadata.sqlite")
    pipeline = create_pipeline(
        pipeline_name=PIPELINE_NAME,
        pipeline_root=os.path.join(output_dir, "pipeline_root"),
        data_root=data_root,
        serving_dir=os.path.join(output_dir, "serving"),
        **config.parameter_values(),
        image_size=image_size,
        accuracy_floor=accuracy_floor,
        metadata_connection_config=sqlite_metadata_connection_config(metadata_path),
        retrain=retrain,
    )
    started = time.monotonic()
    LocalDagRunner().run(pipeline)
    wall = time.monotonic() - started

    summary = summarize_latest_run(metadata_path, PIPELINE_NAME)
    click.echo("\n".join(summary.lines()))
    click.echo(f"  pipeline wall time               {wall:7.1f} s")
    report = transfer_report_path(config.backbone_weights)
    if os.path.exists(report):
        with open(report) as f:
            transfer = json.load(f)
        click.echo(
            "  transfer check (pretraining step, same head training): target accuracy with the pretrained"
            f" frozen base {transfer['target_eval_accuracy_pretrained_frozen_base']:.4f}, with a random frozen"
            f" base {transfer['target_eval_accuracy_random_frozen_base']:.4f}"
        )
    if not summary.pushed_to:
        if retrain:  # the gate did its job: serving keeps the previously pushed model
            click.echo("  retraining: the candidate was not blessed and was not pushed")
            return
        sys.exit("the model was not pushed")


if __name__ == "__main__":
    main()

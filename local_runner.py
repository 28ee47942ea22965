"""Runs the freeze-policy pipeline locally: TFX LocalDagRunner, Beam DirectRunner, SQLite ML Metadata.

    python local_runner.py                                  # the embedded demo (make run)
    python local_runner.py --freeze-policy policy.yaml --epochs 3 --output-dir /tmp/run
    python local_runner.py --retrain --freeze-policy kubeflow/policies/retrain_top_block.json   # cron-able
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is first imported

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import click  # noqa: E402

from components.freeze_trainer.backbones import BackboneError  # noqa: E402
from components.freeze_trainer.freeze_plan import plan_for_config  # noqa: E402
from components.freeze_trainer.freeze_policy import FROZEN_BASE_POLICY, PolicyError, read_policy_source  # noqa: E402
from components.freeze_trainer.trainer_config import ConfigError, TrainerConfig  # noqa: E402
from pipelines.digits_data import write_digits_examples  # noqa: E402
from pipelines.pretrain_backbone import DEFAULT_BACKBONE_PATH, IMAGE_SIZE, transfer_report_path  # noqa: E402

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
@click.option("--freeze-policy", "freeze_policy", default=FROZEN_BASE_POLICY.canonical_json(), show_default=True,
              help="A JSON/YAML policy file or inline JSON.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--learning-rate", type=float, default=1e-2, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--backbone", default="MobileNetV2", show_default=True)
@click.option("--backbone-weights", default=DEFAULT_BACKBONE_PATH, show_default=True,
              help="imagenet, none, a weights file or a .keras backbone (local path or URI).")
@click.option("--backbone-alpha", type=float, default=None, help="Width multiplier of MobileNet backbones.")
@click.option("--image-size", type=int, default=IMAGE_SIZE, show_default=True)
@click.option("--training-loop", type=click.Choice(["fit", "gradient_tape"]), default="fit", show_default=True)
@click.option("--distribution", type=click.Choice(["auto", "one_device", "mirrored", "multi_worker"]), default="auto",
              show_default=True, help="The tf.distribute strategy; auto picks from TF_CONFIG and the local GPUs.")
@click.option("--feature-cache", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
              help="auto: phases whose whole base is frozen train the head on base features computed once.")
@click.option("--data-root", default=None, help="Folder of TFRecord tf.Examples; default: the embedded digits 5-9.")
@click.option("--sample", type=int, default=None, help="Use only the first N embedded examples (tests, smoke runs).")
@click.option("--accuracy-floor", type=float, default=0.4, show_default=True,
              help="The Evaluator blesses only models at or above this eval accuracy.")
@click.option("--retrain", is_flag=True,
              help="Warm-start from the latest blessed model in --output-dir and push only if the candidate "
                   "beats the gate against it; a rejected candidate is not an error (exit 0).")
def main(output_dir, freeze_policy, epochs, learning_rate, batch_size, backbone, backbone_weights, backbone_alpha,
         image_size, training_loop, distribution, feature_cache, data_root, sample, accuracy_floor, retrain):
    policy_text = read_policy_source(freeze_policy)
    config = validated_config(freeze_policy=policy_text, epochs=epochs, learning_rate=learning_rate,
                              batch_size=batch_size, backbone=backbone, backbone_weights=backbone_weights,
                              backbone_alpha=backbone_alpha, image_size=image_size, training_loop=training_loop,
                              distribution=distribution, feature_cache=feature_cache)

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
        freeze_policy=config.freeze_policy.canonical_json(),
        backbone=config.backbone,
        backbone_weights=config.backbone_weights,
        backbone_alpha=backbone_alpha,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        training_loop=config.training_loop,
        distribution=config.distribution,
        feature_cache=config.feature_cache,
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

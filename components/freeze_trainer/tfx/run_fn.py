"""The default `run_fn`: builds the backbone and head, applies the freeze policy, trains, exports.

The executor calls it when the pipeline names no user module. A user `run_fn` can reuse the same
pieces; only the `freeze_report.json` asset is needed for the executor to record MLMD properties.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx_bsl.public import tfxio

from freeze_trainer.tfx.trainer_model import build_from_config
from freeze_trainer.keras.example_feed import ExampleFeed
from freeze_trainer.keras.feature_cache import FeatureCache, files_fingerprint
from freeze_trainer.keras.distribution import choose_strategy, cluster_workers, is_chief
from freeze_trainer.keras.training import train_with_proof
from freeze_trainer.keras.phase_runner import build_phase_optimizer
from freeze_trainer.keras.freeze_plan import PhasePlan, plan_policy
from freeze_trainer.tfx.image_transform import IMAGE_KEY, LABEL_KEY, LABEL_VOCABULARY, transformed_name
from freeze_trainer.tfx.executor import trainer_config
from freeze_trainer.tfx.serving_export import FREEZE_POLICY_ASSET, FREEZE_REPORT_ASSET, export_serving_model
from freeze_trainer.tfx.trainer_config import TrainerConfig
from freeze_trainer.tfx.warm_start import warm_start_from_saved_model



def transformed_input_shape(tft_output: tft.TFTransformOutput) -> tuple[int, int, int]:
    return tuple(tft_output.transformed_feature_spec()[transformed_name(IMAGE_KEY)].shape)


def _examples(fn_args: FnArgs, files: list[str], tft_output, batch_size: int) -> tf.data.Dataset:
    """Transformed examples, unbatched, once, in file order: ExampleFeed shuffles and batches them."""
    options = tfxio.TensorFlowDatasetOptions(
        batch_size=batch_size, label_key=transformed_name(LABEL_KEY), num_epochs=1, shuffle=False
    )
    examples = fn_args.data_accessor.tf_dataset_factory(files, options, tft_output.transformed_metadata.schema)
    # Under MultiWorkerMirroredStrategy every worker reads the same seeded order and keeps its share of
    # the batches: sharding by file fails whenever a split has fewer files than there are workers.
    sharding = tf.data.Options()
    sharding.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return examples.unbatch().with_options(sharding)


def freeze_report(config: TrainerConfig, plans: list[PhasePlan], checks, metrics: dict[str, float]) -> dict:
    return {
        "policy_sha256": config.freeze_policy.sha256(),
        "backbone": config.backbone,
        "backbone_weights": config.backbone_weights,
        "training_loop": config.training_loop,
        "freeze_check_passed": all(check.passed for check in checks),
        "phases": [
            {
                **check.as_dict(),
                "epochs": plan.epochs,
                "steps": plan.steps,
                "learning_rate": plan.learning_rate,
                "feature_cache": config.feature_cache == "auto" and plan.caches_features,
            }
            for plan, check in zip(plans, checks)
        ],
        "final_metrics": metrics,
    }


def run_fn(fn_args: FnArgs) -> None:
    config = trainer_config(fn_args)
    tf.keras.utils.set_random_seed(config.seed)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    num_classes = tft_output.vocabulary_size_by_name(LABEL_VOCABULARY)

    if config.mixed_precision != "none":
        tf.keras.mixed_precision.set_global_policy(config.mixed_precision)
    strategy = choose_strategy(config.distribution)
    with strategy.scope():
        # Model and plan first: a policy that does not fit the backbone fails before any data is read.
        model = build_from_config(config, transformed_input_shape(tft_output), num_classes)
        plans = plan_policy(config.freeze_policy, model, config.learning_rate, config.epochs)
        if fn_args.base_model:  # retraining: start from the latest blessed model, then apply the policy
            warm_start_from_saved_model(model, fn_args.base_model)
        optimizer = build_phase_optimizer(model, plans)

    train_examples = _examples(fn_args, fn_args.train_files, tft_output, config.batch_size)
    eval_examples = _examples(fn_args, fn_args.eval_files, tft_output, config.batch_size)
    if fn_args.eval_steps:
        eval_examples = eval_examples.take(fn_args.eval_steps * config.batch_size)
    feature_cache = None
    if config.feature_cache == "auto" and any(plan.caches_features for plan in plans):
        feature_cache = FeatureCache(
            files_fingerprint([fn_args.transform_output, *fn_args.train_files, *fn_args.eval_files]),
            spill_dir=os.path.join(fn_args.model_run_dir, "feature_cache"),
            memory_budget_bytes=config.feature_cache_memory_mb << 20,
        )
    feed = ExampleFeed(train_examples, eval_examples, config.batch_size, config.seed, feature_cache)
    total_epochs = sum(plan.epochs or 0 for plan in plans)
    steps_per_epoch = math.ceil(fn_args.train_steps / total_epochs) if fn_args.train_steps and total_epochs else None
    with strategy.scope(), feature_cache or contextlib.nullcontext():
        checks, metrics = train_with_proof(
            model,
            plans,
            feed,
            loop=config.training_loop,
            strategy=strategy,
            callbacks=[tf.keras.callbacks.TensorBoard(fn_args.model_run_dir, profile_batch=0)],
            steps_per_epoch=steps_per_epoch,
            optimizer=optimizer,
            jit_compile=config.jit_compile,
            # A preempted task rerun with the same ModelRun (a KFP or Vertex retry) resumes here. Workers
            # of a multi-worker job would each need the chief's checkpoints: not supported yet.
            checkpoint_dir=os.path.join(fn_args.model_run_dir, "checkpoints") if cluster_workers() <= 1 else None,
            checkpoint_every_steps=config.checkpoint_every_steps or None,
        )
    report = freeze_report(config, plans, checks, metrics)
    logging.info("Freeze check passed for every phase: %s", report["phases"])
    # Every worker saves (saving a distributed model is a collective), only the chief where it counts.
    export_dir = fn_args.serving_model_dir if is_chief() else tempfile.mkdtemp(prefix="worker-export-")
    export_serving_model(
        model,
        tft_output,
        export_dir,
        extra_assets={
            FREEZE_POLICY_ASSET: config.freeze_policy.model_dump(mode="json", exclude_none=True),
            FREEZE_REPORT_ASSET: report,
        },
    )

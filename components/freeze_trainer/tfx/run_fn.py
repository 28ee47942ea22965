"""The default `run_fn`, and `train_and_export`, the helper a user `run_fn` calls to get the same training.

`train_and_export` resolves the data contract (feature, label, task, classes), builds the model (a
keras.applications base or any Keras model with a new head, a module's `build_model`, or the model a
user `run_fn` passes), plans the policy, trains every phase with the proof and exports the serving model
with the freeze report, which the executor records in ML Metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass, replace
from typing import Callable

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tensorflow_transform.tf_metadata import schema_utils
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx.utils import io_utils
from tfx_bsl.public import tfxio
from tensorflow_metadata.proto.v0 import schema_pb2

from freeze_trainer.keras.models.backbones import is_saved_backbone
from freeze_trainer.keras.models.classifier_model import resolve_head_output
from freeze_trainer.keras.distribution import choose_strategy, is_chief
from freeze_trainer.keras.data.example_feed import ExampleFeed
from freeze_trainer.keras.data.feature_cache import FeatureCache, files_fingerprint
from freeze_trainer.keras.planning.freeze_plan import plan_policy
from freeze_trainer.keras.training.layer_rate_optimizer import LayerRateAdam
from freeze_trainer.keras.training.phase_runner import build_phase_optimizer
from freeze_trainer.keras.planning.phase_schedule import PhaseSchedule, build_schedule
from freeze_trainer.keras.training.with_proof import train_with_proof
from freeze_trainer.tfx.data_contract import DataContract, resolve_contract
from freeze_trainer.tfx.executor import BUILD_MODEL_KEY, USER_CODE_KEY, trainer_config
from freeze_trainer.tfx.run_report import HISTORY_FILE, write_run_report
from freeze_trainer.tfx.search_report import TRIALS_KEY
from freeze_trainer.tfx.serving_export import FREEZE_POLICY_ASSET, FREEZE_REPORT_ASSET, export_serving_model
from freeze_trainer.tfx.trainer_config import TrainerConfig, hyperparameter_values, model_hyperparameters
from freeze_trainer.tfx.trainer_model import base_model_name, bind_inputs, build_from_config
from freeze_trainer.tfx.warm_start import warm_start_from_saved_model


def _raw_schema(fn_args: FnArgs) -> schema_pb2.Schema:
    if not fn_args.schema_path:
        raise ValueError("schema: without a transform_graph the trainer reads raw examples and needs the schema input")
    return io_utils.parse_pbtxt_file(fn_args.schema_path, schema_pb2.Schema())


def examples_schema(fn_args: FnArgs, tft_output: tft.TFTransformOutput | None) -> schema_pb2.Schema:
    """The schema of the examples the trainer reads: the Transform output's, or the raw one without it."""
    return tft_output.transformed_metadata.schema if tft_output else _raw_schema(fn_args)


def data_contract(fn_args: FnArgs, config: TrainerConfig, tft_output: tft.TFTransformOutput | None,
                  schema: schema_pb2.Schema) -> DataContract:
    """The contract of these examples; raises ConfigError naming a missing key before anything trains."""
    domains = {feature.name: feature.int_domain.max + 1 for feature in schema.feature if feature.HasField("int_domain")}

    def vocabulary_names(name: str) -> list[str] | None:
        try:
            return [value.decode() if isinstance(value, bytes) else value for value in tft_output.vocabulary_by_name(name)]
        except (ValueError, tf.errors.NotFoundError, OSError):
            return None

    def count_int_classes() -> int:
        labels = _labeled_examples(fn_args, fn_args.train_files, schema, {}, label_key).map(lambda _, label: label)
        return int(labels.reduce(tf.constant(-1, tf.int64), lambda most, label: tf.maximum(most, tf.cast(
            tf.reduce_max(label), tf.int64)))) + 1

    feature_spec = schema_utils.schema_as_feature_spec(schema).feature_spec
    label_key = config.model_label_key if tft_output else config.label_key
    return resolve_contract(
        config, feature_spec, "Transform output" if tft_output else "schema",
        vocabulary_names if tft_output else (lambda _: None), domains.get, count_int_classes, tft_output is not None,
    )


def _labeled_examples(fn_args: FnArgs, files: list[str], schema, inputs: dict[str, str], label_key: str
                      ) -> tf.data.Dataset:
    """({model input: its feature}, label) examples, unbatched, once, in file order: ExampleFeed shuffles and
    batches them. `inputs` maps each of the model's inputs to the feature it reads (DataContract.inputs)."""
    options = tfxio.TensorFlowDatasetOptions(batch_size=256, label_key=label_key, num_epochs=1, shuffle=False)
    examples = fn_args.data_accessor.tf_dataset_factory(files, options, schema)
    # Under MultiWorkerMirroredStrategy every worker reads the same seeded order and keeps its share of
    # the batches: sharding by file fails whenever a split has fewer files than there are workers.
    sharding = tf.data.Options()
    sharding.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return examples.map(lambda features, label: ({name: features[feature] for name, feature in inputs.items()}, label)
                        ).unbatch().with_options(sharding)


def file_record(key: str, path: str) -> dict[str, str]:
    """How the report names a file: a URI as given; a local path by its basename, and a local file also by
    its SHA-256 (`<key>_sha256`), so the pushed model names no path of this machine."""
    if "://" in path:
        return {key: path}
    record = {key: os.path.basename(path.rstrip("/"))}
    if os.path.isfile(path):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        record[f"{key}_sha256"] = digest.hexdigest()
    return record


def weights_record(backbone_weights: str) -> dict[str, str]:
    """How the report names the backbone weights: `imagenet` and `none` as given, a file as `file_record`."""
    if backbone_weights in ("imagenet", "none"):
        return {"backbone_weights": backbone_weights}
    return file_record("backbone_weights", backbone_weights)


def model_source(config: TrainerConfig, user_code: str | None, model: tf.keras.Model) -> dict[str, str]:
    """Where the trained model came from (the executor's `MODEL_SOURCE_FIELDS`): `user_code`, the file of
    the `build_model` or user `run_fn` that built or passed the model, by name and SHA-256; without one, the
    `.keras` file or the keras.applications `backbone` with its weights that the parameters name. And
    `base_name`, the base's own Keras name."""
    if user_code is not None:
        record = {"model_source": "module_file", **file_record("module_file", user_code)}
    else:
        kind = "model_file" if is_saved_backbone(config.backbone_weights) else "keras.applications"
        record = {"model_source": kind, "backbone": config.backbone, **weights_record(config.backbone_weights)}
    return {**record, "base_name": base_model_name(model)}


def freeze_report(config: TrainerConfig, contract: DataContract, schedule: PhaseSchedule, checks,
                  metrics: dict[str, float], source: dict[str, str]) -> dict:
    """`source`: the model's provenance (`model_source`)."""
    return {
        "policy_sha256": config.freeze_policy.sha256(),
        **source,
        "training_loop": config.training_loop,
        "task": contract.task.name,
        "head_output": contract.task.head_output,
        "steps_per_epoch": schedule.steps_per_epoch,  # None: one pass over the training examples
        "freeze_check_passed": all(check.passed for check in checks),
        "phases": [
            {
                **check.as_dict(),
                "epochs": phase.plan.epochs,
                "steps": phase.plan.steps,
                "learning_rate": phase.plan.learning_rate,
                "feature_cache": phase.cache is not None,
                "feature_cache_cut": phase.cache.cut if phase.cache else None,
                **phase.transition(),  # optimizer_state, warmup, restore_best (best_epoch is in the check)
            }
            for phase, check in zip(schedule, checks)
        ],
        "final_metrics": metrics,
    }


@dataclass(frozen=True)
class PreparedRun:
    """Everything a run trains with, prepared before the first batch: the model, its schedule and data."""

    config: TrainerConfig
    contract: DataContract
    schema: schema_pb2.Schema
    tft_output: tft.TFTransformOutput | None
    strategy: tf.distribute.Strategy
    model: tf.keras.Model
    schedule: PhaseSchedule
    optimizer: LayerRateAdam
    feed: ExampleFeed
    user_code: str | None  # the user's file that built or passed the model, for the report


def prepare(fn_args: FnArgs, model: tf.keras.Model | Callable[..., tf.keras.Model] | None = None) -> PreparedRun:
    """The validated config, the data contract, the model and its schedule (a policy that does not fit the
    model fails here, before any data is read), then the example feed."""
    config = trainer_config(fn_args)
    tf.keras.utils.set_random_seed(config.seed)
    tft_output = tft.TFTransformOutput(fn_args.transform_output) if fn_args.transform_output else None
    schema = examples_schema(fn_args, tft_output)
    contract = data_contract(fn_args, config, tft_output, schema)
    build_model = model if callable(model) and not isinstance(model, tf.keras.Model) else None
    build_model = build_model or (fn_args.custom_config or {}).get(BUILD_MODEL_KEY)
    # The report names the user's code when it builds or passes the model.
    user_code = (fn_args.custom_config or {}).get(USER_CODE_KEY) if model is not None or build_model else None
    if config.mixed_precision != "none":
        tf.keras.mixed_precision.set_global_policy(config.mixed_precision)
    strategy = choose_strategy(config.distribution)
    with strategy.scope():
        model, contract = _planned_model(fn_args, config, contract, model, build_model)
        plans = plan_policy(config.freeze_policy, model, config.learning_rate, config.epochs)
        if fn_args.base_model:  # retraining: start from the latest blessed model, then apply the policy
            warm_start_from_saved_model(model, fn_args.base_model)
        optimizer = build_phase_optimizer(model, plans)
    schedule = build_schedule(plans, feature_cache=config.feature_cache == "auto", total_steps=fn_args.train_steps,
                              model=model)
    feed = _example_feed(fn_args, config, schema, contract, schedule)
    return PreparedRun(config, contract, schema, tft_output, strategy, model, schedule, optimizer, feed, user_code)


def _planned_model(fn_args: FnArgs, config: TrainerConfig, contract: DataContract, model, build_model
                   ) -> tuple[tf.keras.Model, DataContract]:
    """The model to train (inside the strategy's scope), and the contract bound to its inputs and head."""
    hyperparameters = model_hyperparameters(hyperparameter_values(fn_args.hyperparameters))  # TFX's Tuner's
    from_module = build_model is not None or isinstance(model, tf.keras.Model)  # a user module's model
    if isinstance(model, tf.keras.Model):
        model = build_from_config(config, contract, given=model)
    else:
        model = build_from_config(config, contract, build_model=build_model, hyperparameters=hyperparameters)
    contract = bind_inputs(config, contract, model, from_module=from_module)
    return model, replace(contract, task=resolve_head_output(model, contract.task, config.head_output))


def training_examples(fn_args: FnArgs, config: TrainerConfig, schema, contract: DataContract
                      ) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The training and evaluation examples, unbatched, their labels as the task's loss takes them."""
    prepare_labels = contract.task.prepare_labels

    def examples(files: list[str]) -> tf.data.Dataset:
        return _labeled_examples(fn_args, files, schema, contract.inputs, contract.label_key).map(
            lambda x, y: (x, prepare_labels(y[None])[0]))

    eval_examples = examples(fn_args.eval_files)
    if fn_args.eval_steps:  # TFX's eval_args.num_steps: that many batches of evaluation
        eval_examples = eval_examples.take(fn_args.eval_steps * config.batch_size)
    return examples(fn_args.train_files), eval_examples


def data_fingerprint(fn_args: FnArgs) -> str:
    """What cached features depend on besides the model: the example files and the Transform graph."""
    return files_fingerprint([*([fn_args.transform_output] if fn_args.transform_output else []),
                              *fn_args.train_files, *fn_args.eval_files])


def _example_feed(fn_args: FnArgs, config: TrainerConfig, schema, contract: DataContract, schedule: PhaseSchedule
                  ) -> ExampleFeed:
    """The training and evaluation examples, with a feature cache when a phase of the schedule uses one."""
    feature_cache = None
    if schedule.caches:
        feature_cache = FeatureCache(
            data_fingerprint(fn_args),
            spill_dir=os.path.join(fn_args.model_run_dir, "feature_cache"),
            memory_budget_bytes=config.feature_cache_memory_mb << 20,
        )
    return ExampleFeed(*training_examples(fn_args, config, schema, contract), config.batch_size, config.seed,
                       feature_cache)


def _checkpoint_dir(fn_args: FnArgs) -> str:
    # A preempted task rerun with the same ModelRun (a KFP or Vertex retry) resumes here. In a multi-worker
    # job the chief saves here, the others to scratch, and all resume from here.
    return os.path.join(fn_args.model_run_dir, "checkpoints")


def train(fn_args: FnArgs, run: PreparedRun) -> tuple[list, dict[str, float]]:
    """Trains every phase of the schedule with the proof; returns each phase's check and the last metrics."""
    config = run.config
    # Appended epoch by epoch, so a retried attempt's curves keep the epochs of the attempt it resumes.
    history_path = os.path.join(fn_args.model_run_dir, HISTORY_FILE)
    with run.strategy.scope(), run.feed.feature_cache or contextlib.nullcontext():
        return train_with_proof(
            run.model,
            run.schedule,
            run.feed,
            loop=config.training_loop,
            strategy=run.strategy,
            task=run.contract.task,
            callbacks=[tf.keras.callbacks.TensorBoard(fn_args.model_run_dir, profile_batch=0),
                       *([tf.keras.callbacks.CSVLogger(history_path, append=True)] if is_chief() else [])],
            optimizer=run.optimizer,
            jit_compile=config.jit_compile,
            checkpoint_dir=_checkpoint_dir(fn_args),
            checkpoint_every_steps=config.checkpoint_every_steps or None,
        )


def publish(fn_args: FnArgs, run: PreparedRun, checks, metrics: dict[str, float]) -> dict:
    """Exports the serving model with the freeze report and the run report; returns the freeze report."""
    config = run.config
    report = freeze_report(config, run.contract, run.schedule, checks, metrics,
                           model_source(config, run.user_code, run.model))
    logging.info("Freeze check passed for every phase: %s", report["phases"])
    history_path = os.path.join(fn_args.model_run_dir, HISTORY_FILE)
    report_assets = write_run_report(config, run.schedule, report, history_path, fn_args.model_run_dir,
                                     trials=(fn_args.custom_config or {}).get(TRIALS_KEY),
                                     applied=hyperparameter_values(fn_args.hyperparameters))
    # Every worker saves (saving a distributed model is a collective), only the chief where it counts.
    export_dir = fn_args.serving_model_dir if is_chief() else tempfile.mkdtemp(prefix="worker-export-")
    raw_feature_spec = run.tft_output.raw_feature_spec() if run.tft_output else schema_utils.schema_as_feature_spec(
        run.schema).feature_spec
    export_serving_model(
        run.model,
        run.tft_output,
        run.contract,
        config,
        raw_feature_spec,
        export_dir,
        extra_assets={
            FREEZE_POLICY_ASSET: config.freeze_policy.model_dump(mode="json", exclude_none=True),
            FREEZE_REPORT_ASSET: report,
            **report_assets,
        },
    )
    # Exported: the training checkpoints only served to resume this training, so they go (each holds the
    # model and its optimizer state). No parameter keeps them; a killed run never gets here and keeps its own.
    checkpoint_dir = _checkpoint_dir(fn_args)
    if is_chief() and tf.io.gfile.exists(checkpoint_dir):
        tf.io.gfile.rmtree(checkpoint_dir)
    return report


def train_and_export(fn_args: FnArgs, model: tf.keras.Model | Callable[..., tf.keras.Model] | None = None) -> dict:
    """Trains under the executor's validated config and exports with the freeze report; returns the report.

    `model` is a model of the user's own (its head declared by the `head_layers` parameter, or built with
    `freeze_trainer.keras.build_classifier`), or a function `(config, contract[, hyperparameters]) -> model`
    called inside the distribution strategy's scope; None builds the model the parameters describe."""
    run = prepare(fn_args, model)
    checks, metrics = train(fn_args, run)
    return publish(fn_args, run, checks, metrics)

def run_fn(fn_args: FnArgs) -> None:
    """The executor's default: the model the trainer parameters (or a module's `build_model`) describe."""
    train_and_export(fn_args)

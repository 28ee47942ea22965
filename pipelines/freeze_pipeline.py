"""The one pipeline factory every runner uses: local (Beam), Kubeflow Pipelines v2 and Vertex AI.

ExampleGen -> StatisticsGen -> SchemaGen -> Transform -> FreezeTrainer -> Resolver (latest blessed
model) -> Evaluator (TFMA: accuracy floor and change threshold against the baseline) -> Pusher.

With `retrain=True` the resolver also feeds the trainer's `base_model`: the candidate warm-starts from
the latest blessed model and is then gated against that same model, so a worse candidate is not pushed.
The resolver reads only earlier runs' artifacts, so the DAG stays acyclic (resolver -> trainer -> evaluator).
"""

from __future__ import annotations

from typing import Any

import freeze_trainer  # noqa: F401, I001  (first: sets TF_USE_LEGACY_KERAS before TFX imports TensorFlow)
import tensorflow_model_analysis as tfma
from tfx.components import Evaluator, ImportExampleGen, SchemaGen, StatisticsGen, Transform
from tfx.dsl.components.common.importer import Importer
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.orchestration import pipeline
from tfx.proto import pusher_pb2, trainer_pb2, transform_pb2
from tfx.types import Channel, standard_artifacts

from freeze_trainer import FreezeTrainer
from freeze_trainer.tfx.trainer_config import TrainerConfig, transformed_name
from freeze_trainer.tfx.pusher import Pusher  # unique versions, atomic filesystem pushes
from pipelines.pipeline_options import PipelineOptions

PREPROCESSING_FN = "freeze_trainer.tfx.image_transform.preprocessing_fn"

# `tfx.v1` is not imported: it pulls in the Vertex and Kubeflow clients, 20 s of start-up on 2 cores.

# One in-process worker: on a small machine, Beam's default multi-process runner spends more time
# starting workers and shipping data between them than it saves. These are Beam 2.59's DirectRunner
# defaults (apache_beam/options/pipeline_options.py), so local runs pass no Beam args at all: with any,
# every Beam executor of every run packages TFX into a ~42 MB sdist under the temp dir
# (tfx.utils.dependency_utils.build_ephemeral_package, for remote workers) and never deletes it.
FAST_LOCAL_BEAM_ARGS = ("--direct_num_workers=1", "--direct_running_mode=in_memory")


# The metric the Evaluator gates on, per task: TFMA class name, prediction key, whether higher is better.
GATE_METRICS = {
    "multiclass": ("SparseCategoricalAccuracy", "probabilities", True),
    "binary": ("AUC", "probabilities", True),
    "multi_label": ("BinaryAccuracy", "probabilities", True),
    "regression": ("MeanSquaredError", "predictions", False),
}


def eval_config(task: str, label_key: str, threshold: float, max_change: float, transformed: bool = True
                ) -> tfma.EvalConfig:
    """Blesses a model whose gate metric clears `threshold` (a floor, or a ceiling for regression's MSE) and
    is no worse than the baseline by more than `max_change` (the change threshold is skipped when no model
    was blessed before). `task` auto gates as multiclass."""
    metric, prediction_key, higher_is_better = GATE_METRICS.get(task, GATE_METRICS["multiclass"])
    bound = {"lower_bound" if higher_is_better else "upper_bound": {"value": threshold}}
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name="serving_default",
                preprocessing_function_names=["transform_features"] if transformed else [],
                label_key=label_key,
                prediction_key=prediction_key,
            )
        ],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(
                        class_name=metric,
                        threshold=tfma.MetricThreshold(
                            value_threshold=tfma.GenericValueThreshold(**bound),
                            change_threshold=tfma.GenericChangeThreshold(
                                direction=tfma.MetricDirection.HIGHER_IS_BETTER if higher_is_better
                                else tfma.MetricDirection.LOWER_IS_BETTER,
                                absolute={"value": -max_change if higher_is_better else max_change},
                            ),
                        ),
                    )
                ]
            )
        ],
    )


def transform_custom_config(image_size: int, feature_key: str, label_key: str) -> dict:
    """The Transform's `custom_config`: what the bundled image `preprocessing_fn` reads."""
    return {"image_size": image_size, "feature_key": feature_key, "label_key": label_key}


def _fixed(trainer_parameters: dict[str, Any], name: str) -> Any:
    """A compile-time trainer parameter's value: the one given, else the table's default."""
    value = trainer_parameters.get(name)
    return TrainerConfig.model_fields[name].default if value is None else value


def _policy_search(search_space: Any, search_dir: str | None, transform, schema_gen, trainer_parameters: dict[str, Any],
                   options: PipelineOptions):
    """TFX's Tuner running the freeze-aware policy search (freeze_trainer.tfx.search_component) on the
    trainer's data, with the trainer's parameters (values or RuntimeParameters, as the trainer has them)."""
    from freeze_trainer.tfx.search_component import FreezeTuner

    return FreezeTuner(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        search_space=search_space,
        search_dir=search_dir,
        train_args=trainer_pb2.TrainArgs(num_steps=options.train_steps) if options.train_steps else None,
        eval_args=trainer_pb2.EvalArgs(num_steps=options.eval_steps) if options.eval_steps else None,
        **trainer_parameters,
    )


def _tuning(search_space: Any, search_dir: str | None, hyperparameters_uri: str | None, transform, schema_gen,
            trainer_parameters: dict[str, Any], options: PipelineOptions) -> tuple[Any, dict[str, Any]]:
    """Where the trainer's hyperparameters come from: a policy search's best values (and its trials, for the
    run report), an imported file's, or nowhere; the component, and the trainer's inputs from it."""
    if search_space is not None:
        search = _policy_search(search_space, search_dir, transform, schema_gen, trainer_parameters, options)
        return search, {"hyperparameters": search.outputs["best_hyperparameters"],
                        "tuner_results": search.outputs["tuner_results"]}
    if hyperparameters_uri:
        importer = _hyperparameters_importer(hyperparameters_uri)
        return importer, {"hyperparameters": importer.outputs["result"]}
    return None, {}


def _data_components(data_root: Any, image_size: int, transform_module_file: str | None, feature_key: str,
                     label_key: str) -> tuple:
    """ExampleGen, StatisticsGen, SchemaGen and Transform (the user's module or the bundled image one)."""
    example_gen = ImportExampleGen(input_base=data_root)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    transform = Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        **({"module_file": transform_module_file} if transform_module_file else {
            "preprocessing_fn": PREPROCESSING_FN,
            # The bundled function's only analyzer is the label vocabulary: built over both splits, a class
            # seen only in the eval split has an index instead of crashing the trainer with label -1.
            "splits_config": transform_pb2.SplitsConfig(analyze=["train", "eval"], transform=["train", "eval"]),
        }),
        custom_config=transform_custom_config(image_size, feature_key, label_key),
        # StatisticsGen already describes the raw data; Transform's own pre- and post-transform
        # statistics would be a second and third pass over every image.
        disable_statistics=True,
    )
    return example_gen, statistics_gen, schema_gen, transform


def _latest_blessed_model() -> Resolver:
    """The baseline the Evaluator compares against, and the model a retraining run starts from."""
    return Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")


def _hyperparameters_importer(uri: str) -> Importer:
    return Importer(source_uri=uri, artifact_type=standard_artifacts.HyperParameters).with_id(
        "hyperparameters_importer")


def _evaluator(example_gen, trainer, model_resolver, trainer_parameters: dict[str, Any],
               options: PipelineOptions) -> Evaluator:
    """TFMA on the raw examples, gated by the task's metric against the latest blessed model."""
    label_key = _fixed(trainer_parameters, "label_key")
    transformed_label_key = _fixed(trainer_parameters, "transformed_label_key") or transformed_name(label_key)
    return Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        eval_config=eval_config(_fixed(trainer_parameters, "task"), transformed_label_key, options.accuracy_floor,
                                options.max_accuracy_drop),
    )


def _pusher(trainer, evaluator, serving_dir: str) -> Pusher:
    return Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        model_evaluation=evaluator.outputs["evaluation"],  # its metrics complete the run report
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving_dir)
        ),
    )


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: Any,
    serving_dir: str,
    options: PipelineOptions = PipelineOptions(),
    metadata_connection_config=None,
    beam_pipeline_args: list[str] | None = None,
    enable_cache: bool = False,
    trainer_class: type[FreezeTrainer] = FreezeTrainer,
    trainer_custom_config: dict | None = None,
    transform_module_file: str | None = None,
    trainer_module_file: str | None = None,
    hyperparameters_uri: str | None = None,
    search_space: Any = None,
    search_dir: str | None = None,
    **trainer_parameters: Any,
) -> pipeline.Pipeline:
    """`options` are the pipeline's own parameters (image size, train/eval steps, the Evaluator's gate,
    retraining: `PipelineOptions`); `trainer_parameters` are FreezeTrainer's (the parameter table:
    `freeze_policy`, `epochs`, ...), values or RuntimeParameters. `trainer_class` and `trainer_custom_config`
    let a runner swap in a FreezeTrainer subclass, e.g. the Vertex custom-job trainer of
    `freeze_trainer.tfx.vertex_trainer`, with its job arguments. `transform_module_file` holds the user's own
    `preprocessing_fn` (default: the bundled image one, which reads the `feature_key` and `label_key`
    parameters); `trainer_module_file` a `run_fn` or a `build_model` hook. `hyperparameters_uri`, a folder
    holding one KerasTuner hyperparameters file (what TFX's Tuner writes as `best_hyperparameters`), is
    imported and overrides the trainer parameters it names. `search_space`, a policy search's YAML or JSON
    text (tfx/search_space.py) or a RuntimeParameter, adds FreezeTuner (TFX's Tuner with the freeze-aware
    `tuner_fn`), whose `best_hyperparameters` the trainer takes instead, and whose trials its run report shows;
    its state goes to `search_dir`, where a rerun resumes it (default: the Tuner's `tuner_results`)."""
    label_key = _fixed(trainer_parameters, "label_key")
    example_gen, statistics_gen, schema_gen, transform = _data_components(
        data_root, options.image_size, transform_module_file, _fixed(trainer_parameters, "feature_key"), label_key)
    model_resolver = _latest_blessed_model()
    tuning, tuning_inputs = _tuning(search_space, search_dir, hyperparameters_uri, transform, schema_gen,
                                    trainer_parameters, options)
    trainer = trainer_class(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        **trainer_parameters,
        base_model=model_resolver.outputs["model"] if options.retrain else None,
        **tuning_inputs,
        custom_config=trainer_custom_config,
        module_file=trainer_module_file,
        train_args=trainer_pb2.TrainArgs(num_steps=options.train_steps) if options.train_steps else None,
        eval_args=trainer_pb2.EvalArgs(num_steps=options.eval_steps) if options.eval_steps else None,
    )
    evaluator = _evaluator(example_gen, trainer, model_resolver, trainer_parameters, options)
    return pipeline.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, transform, *([tuning] if tuning else []), trainer,
                    model_resolver, evaluator, _pusher(trainer, evaluator, serving_dir)],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args or []),  # none: Beam's defaults, FAST_LOCAL_BEAM_ARGS
    )

"""A tabular pipeline with FreezeTrainer, as TFX's own examples build one (README "Tabular data"):
CsvExampleGen -> StatisticsGen -> SchemaGen -> Transform (one `<column>_xf` output per column) ->
FreezeTrainer (a pretrained `.keras` base with one input per column) -> Evaluator -> Pusher.

    python tabular_pipeline.py DATA_DIR TRANSFORM_MODULE BASE.keras OUTPUT_DIR
"""

import os
import sys

from freeze_trainer import FreezeTrainer  # first: sets TF_USE_LEGACY_KERAS=1 before TFX imports TensorFlow
from freeze_trainer.tfx.pusher import Pusher
import tensorflow_model_analysis as tfma
from tfx.components import CsvExampleGen, Evaluator, SchemaGen, StatisticsGen, Transform
from tfx.orchestration import pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.metadata import sqlite_metadata_connection_config
from tfx.proto import pusher_pb2

# The base's layers are named enc_1, enc_2: the head trains on the frozen base, then enc_2 joins it.
FREEZE_POLICY = r"""
version: 1
block_pattern: '(enc_\d+)'
phases:
  - {name: head, epochs: 10, rules: [{freeze: {base: true}}]}
  - {name: top, epochs: 3, learning_rate: 0.005,
     rules: [{freeze: {base: true}}, {unfreeze: {group: enc_2}}]}
"""


def create_pipeline(data_root: str, transform_module: str, base_model: str, output_dir: str,
                    label: str = "target", accuracy_floor: float = 0.8) -> pipeline.Pipeline:
    example_gen = CsvExampleGen(input_base=data_root)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    transform = Transform(examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
                          module_file=transform_module,
                          disable_statistics=True)  # StatisticsGen describes the data already
    trainer = FreezeTrainer(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        freeze_policy=FREEZE_POLICY,
        # A base with several inputs: each input is fed the Transform output of its name (`alcohol_xf`, ...).
        backbone="custom",
        backbone_weights=base_model,
        label_key=label,  # the model learns from the Transform output `<label>_xf`
        task="multiclass",
        learning_rate=0.05,
        batch_size=16,
        dropout=0.0,
    )
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],  # raw examples: TFMA applies the Transform the model carries
        model=trainer.outputs["model"],
        eval_config=tfma.EvalConfig(
            model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key=f"{label}_xf",
                                        preprocessing_function_names=["transform_features"],
                                        prediction_key="probabilities")],
            slicing_specs=[tfma.SlicingSpec()],
            metrics_specs=[tfma.MetricsSpec(metrics=[tfma.MetricConfig(
                class_name="SparseCategoricalAccuracy",
                threshold=tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
                    lower_bound={"value": accuracy_floor})))])],
        ),
    )
    pusher = Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        model_evaluation=evaluator.outputs["evaluation"],
        push_destination=pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(
            base_directory=os.path.join(output_dir, "serving"))),
    )
    return pipeline.Pipeline(
        pipeline_name="tabular",
        pipeline_root=os.path.join(output_dir, "pipeline_root"),
        components=[example_gen, statistics_gen, schema_gen, transform, trainer, evaluator, pusher],
        metadata_connection_config=sqlite_metadata_connection_config(os.path.join(output_dir, "metadata.sqlite")),
    )


if __name__ == "__main__":
    LocalDagRunner().run(create_pipeline(*sys.argv[1:5]))

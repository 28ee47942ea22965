"""Exports the trained model as a SavedModel that serves raw tf.Examples.

`serving_default` parses serialized tf.Examples holding the raw features, applies the Transform graph
(when there is one) and predicts from the features the model's inputs read (one, or one per named input), so the pushed model needs no extra code: `probabilities`, and for
classification `class_ids` and, with a label vocabulary, `classes`; `predictions` for regression.
`transform_features` exposes the Transform graph alone, which TFMA uses to find the transformed label.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
import tensorflow_transform as tft

from freeze_trainer.keras.models.tasks import Task
from freeze_trainer.tfx.data_contract import DataContract
from freeze_trainer.tfx.trainer_config import TrainerConfig

EXTRA_ASSETS_DIR = "assets.extra"
MODEL_VARIABLES = "model_variables"  # the attribute warm starting reads back
# In the SavedModel's assets.extra/, read back by the executor into MLMD.
FREEZE_REPORT_ASSET = "freeze_report.json"
FREEZE_POLICY_ASSET = "freeze_policy.json"


def _outputs(task: Task, scores: tf.Tensor, class_names: tf.Tensor | None) -> dict[str, tf.Tensor]:
    """The serving outputs of the head's `scores`: probabilities for TFMA even from a head of logits."""
    predictions = task.predictions(scores)
    if task.name == "regression":
        return {"predictions": predictions}
    if task.name == "multi_label":
        return {"probabilities": predictions}
    class_ids = (tf.argmax(predictions, axis=-1) if task.name == "multiclass"
                 else tf.cast(predictions[:, 0] > 0.5, tf.int64))
    outputs = {"probabilities": predictions, "class_ids": class_ids}
    if class_names is not None:
        outputs["classes"] = tf.gather(class_names, class_ids)
    return outputs


def _assert_parses(serialized: tf.Tensor, spec: dict) -> tf.Operation:
    """Fails with InvalidArgumentError naming the first input that is not a serialized tf.Example. Without
    it, parse_example's own error quotes the raw bytes and reaches Python as a UnicodeDecodeError. The
    parse is tried in a tf.data pipeline, which drops a failing element instead of failing: once for the
    whole batch, and per input only when the batch fails."""

    def parsed(batches: tf.data.Dataset) -> tf.data.Dataset:
        return batches.map(lambda batch: tf.io.parse_example(batch, spec)).ignore_errors()

    def count(dataset: tf.data.Dataset) -> tf.Tensor:
        return dataset.reduce(tf.constant(0, tf.int64), lambda total, _: total + 1)

    def first_malformed() -> tf.Tensor:
        positions = tf.range(tf.size(serialized, out_type=tf.int64))
        parsed_ones = tf.data.Dataset.from_tensor_slices((positions, serialized)).map(
            lambda position, one: (position, tf.io.parse_example(one[None], spec))).ignore_errors()
        # The parsed positions are 0, 1, ... up to the first one that failed.
        return parsed_ones.reduce(tf.constant(0, tf.int64),
                                  lambda expected, element: tf.where(element[0] == expected, expected + 1, expected))

    batch_parses = count(parsed(tf.data.Dataset.from_tensors(serialized))) > 0
    position = tf.cond(batch_parses, lambda: tf.constant(-1, tf.int64), first_malformed)
    names = sorted(spec)
    names = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    return tf.debugging.Assert(batch_parses, [tf.strings.format(
        "examples[{}] does not parse as a serialized tf.Example holding the features the model reads ("
        + names.replace("{", "(").replace("}", ")") + ")", position)])


class _ServingModule(tf.Module):
    """Holds the model's variables and traced signatures, not the Keras model object: saving a Keras
    model traces every layer's call function (tens of seconds for a backbone), which serving never uses."""

    def __init__(self, model: tf.keras.Model, tft_output: tft.TFTransformOutput | None, contract: DataContract,
                 config: TrainerConfig, raw_feature_spec: dict):
        super().__init__()
        setattr(self, MODEL_VARIABLES, list(model.variables))
        self.tft_layer = tft_output.transform_features_layer() if tft_output else None
        self.class_names = tf.constant(contract.class_names) if contract.class_names else None
        raw_spec_without_label = {k: v for k, v in raw_feature_spec.items() if k != config.label_key}
        examples = tf.TensorSpec([None], tf.string, name="examples")

        def features(serialized, spec):
            with tf.control_dependencies([_assert_parses(serialized, spec)]):
                parsed = tf.io.parse_example(tf.identity(serialized), spec)
            return self.tft_layer(parsed) if self.tft_layer is not None else parsed

        def at_least_one(tensor, count):
            """An empty batch: the model (some of its kernels fail on none) sees one zero example, cut off below."""
            if not isinstance(tensor, tf.Tensor):
                return tensor
            return tf.cond(count > 0, lambda: tensor,
                           lambda: tf.zeros(tf.concat([[1], tf.shape(tensor)[1:]], 0), tensor.dtype))

        @tf.function(input_signature=[examples])
        def serve(serialized):
            transformed = features(serialized, raw_spec_without_label)
            count = tf.shape(serialized)[0]
            # Each of the model's inputs by its name (one, or several read by name: DataContract.inputs).
            inputs = {name: at_least_one(transformed[feature], count) for name, feature in contract.inputs.items()}
            scores = model(inputs, training=False)[:count]
            return _outputs(contract.task, scores, self.class_names)

        @tf.function(input_signature=[examples])
        def transform_features(serialized):
            return features(serialized, raw_feature_spec)

        self.serve = serve
        self.transform_features = transform_features


def export_serving_model(
    model: tf.keras.Model,
    tft_output: tft.TFTransformOutput | None,
    contract: DataContract,
    config: TrainerConfig,
    raw_feature_spec: dict,
    export_dir: str,
    extra_assets: dict[str, dict | str],
) -> None:
    """Writes the SavedModel to a scratch folder and renames it into place: a failed export leaves
    no half-written model at `export_dir`."""
    partial = export_dir.rstrip("/") + ".partial"
    if tf.io.gfile.exists(partial):
        tf.io.gfile.rmtree(partial)
    module = _ServingModule(model, tft_output, contract, config, raw_feature_spec)
    tf.saved_model.save(
        module,
        partial,
        signatures={"serving_default": module.serve, "transform_features": module.transform_features},
    )
    extra_dir = os.path.join(partial, EXTRA_ASSETS_DIR)
    tf.io.gfile.makedirs(extra_dir)
    for name, content in extra_assets.items():  # a dict as JSON, text as it is
        with tf.io.gfile.GFile(os.path.join(extra_dir, name), "w") as f:
            f.write(content if isinstance(content, str) else json.dumps(content, indent=2, sort_keys=True))
    tf.io.gfile.rename(partial, export_dir, overwrite=True)


def read_extra_asset(export_dir: str, name: str) -> dict:
    with tf.io.gfile.GFile(os.path.join(export_dir, EXTRA_ASSETS_DIR, name)) as f:
        return json.load(f)

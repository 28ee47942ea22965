"""Exports the trained classifier as a SavedModel that serves raw tf.Examples.

`serving_default` parses serialized tf.Examples holding the raw features, applies the Transform
graph and classifies, so the pushed model needs no extra code. `transform_features` exposes the
Transform graph alone, which TFMA uses to find the transformed label.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
import tensorflow_transform as tft

from freeze_trainer.tfx.image_transform import IMAGE_KEY, LABEL_KEY, LABEL_VOCABULARY, transformed_name

EXTRA_ASSETS_DIR = "assets.extra"
MODEL_VARIABLES = "model_variables"  # the attribute warm starting reads back
# In the SavedModel's assets.extra/, read back by the executor into MLMD.
FREEZE_REPORT_ASSET = "freeze_report.json"
FREEZE_POLICY_ASSET = "freeze_policy.json"


class _ServingModule(tf.Module):
    """Holds the model's variables and traced signatures, not the Keras model object: saving a Keras
    model traces every layer's call function (tens of seconds for a backbone), which serving never uses."""

    def __init__(self, model: tf.keras.Model, tft_output: tft.TFTransformOutput):
        super().__init__()
        setattr(self, MODEL_VARIABLES, list(model.variables))
        self.tft_layer = tft_output.transform_features_layer()
        self.class_names = tf.constant(tft_output.vocabulary_by_name(LABEL_VOCABULARY))
        raw_spec = tft_output.raw_feature_spec()
        raw_spec_without_label = {k: v for k, v in raw_spec.items() if k != LABEL_KEY}
        examples = tf.TensorSpec([None], tf.string, name="examples")

        @tf.function(input_signature=[examples])
        def serve(serialized):
            transformed = self.tft_layer(tf.io.parse_example(serialized, raw_spec_without_label))
            probabilities = model(transformed[transformed_name(IMAGE_KEY)], training=False)
            class_ids = tf.argmax(probabilities, axis=-1)
            return {
                "probabilities": probabilities,
                "class_ids": class_ids,
                "classes": tf.gather(self.class_names, class_ids),
            }

        @tf.function(input_signature=[examples])
        def transform_features(serialized):
            return self.tft_layer(tf.io.parse_example(serialized, raw_spec))

        self.serve = serve
        self.transform_features = transform_features


def export_serving_model(
    model: tf.keras.Model, tft_output: tft.TFTransformOutput, export_dir: str, extra_assets: dict[str, dict]
) -> None:
    """Writes the SavedModel to a scratch folder and renames it into place: a failed export leaves
    no half-written model at `export_dir`."""
    partial = export_dir.rstrip("/") + ".partial"
    if tf.io.gfile.exists(partial):
        tf.io.gfile.rmtree(partial)
    module = _ServingModule(model, tft_output)
    tf.saved_model.save(
        module,
        partial,
        signatures={"serving_default": module.serve, "transform_features": module.transform_features},
    )
    extra_dir = os.path.join(partial, EXTRA_ASSETS_DIR)
    tf.io.gfile.makedirs(extra_dir)
    for name, content in extra_assets.items():
        with tf.io.gfile.GFile(os.path.join(extra_dir, name), "w") as f:
            json.dump(content, f, indent=2, sort_keys=True)
    tf.io.gfile.rename(partial, export_dir, overwrite=True)


def read_extra_asset(export_dir: str, name: str) -> dict:
    with tf.io.gfile.GFile(os.path.join(export_dir, EXTRA_ASSETS_DIR, name)) as f:
        return json.load(f)

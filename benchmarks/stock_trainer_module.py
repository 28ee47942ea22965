"""The user module of the stock-TFX baseline in benchmarks/pipeline_speed.py: a plain Keras `run_fn`.

What a TFX user would write for the demo task with the stock `Trainer` and a `module_file`, after
the TFX penguin/Keras template: load the pretrained backbone with `trainable=False`, add a pooling,
dropout and softmax head, `fit` on the Transform output, and `model.save` with a `serving_default`
signature that parses raw tf.Examples through the Transform layer and a `transform_features`
signature for TFMA. The one departure from the template is the serving output's key,
`probabilities`, which the shared EvalConfig (pipelines/freeze_pipeline.py) reads.

Self-contained on purpose: TFX packages this file alone into a wheel and installs it with pip.
Hyperparameters come from the Trainer's `custom_config`.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx_bsl.public import tfxio

IMAGE_KEY = "image"
LABEL_KEY = "label"
LABEL_VOCABULARY = "label"  # vocab_filename in the preprocessing_fn


def transformed_name(key: str) -> str:
    return f"{key}_xf"


def _input_fn(file_pattern, data_accessor, tf_transform_output, batch_size: int) -> tf.data.Dataset:
    # One pass over the files per epoch: `fit` runs `epochs` of them.
    return data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=transformed_name(LABEL_KEY), num_epochs=1),
        tf_transform_output.transformed_metadata.schema,
    )


def _build_keras_model(backbone_path: str, image_shape, num_classes: int, learning_rate: float) -> tf.keras.Model:
    backbone = tf.keras.models.load_model(backbone_path, compile=False)
    backbone.trainable = False
    inputs = tf.keras.Input(shape=image_shape, name=transformed_name(IMAGE_KEY))
    # mobilenet_v2.preprocess_input for images the Transform already scaled to [0, 1]: [-1, 1].
    x = tf.keras.layers.Rescaling(2.0, offset=-1.0)(inputs)
    x = backbone(x, training=False)  # BatchNorm keeps its moving statistics (Keras transfer-learning guide)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = tf.keras.layers.Dropout(0.2)(x)
    outputs = tf.keras.layers.Dense(num_classes, activation="softmax")(x)
    model = tf.keras.Model(inputs, outputs)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
    )
    return model


def _get_tf_examples_serving_signature(model, tf_transform_output):
    model.tft_layer_inference = tf_transform_output.transform_features_layer()

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name="examples")])
    def serve_tf_examples_fn(serialized_tf_example):
        raw_feature_spec = tf_transform_output.raw_feature_spec()
        raw_feature_spec.pop(LABEL_KEY)  # no label at serving time
        raw_features = tf.io.parse_example(serialized_tf_example, raw_feature_spec)
        transformed_features = model.tft_layer_inference(raw_features)
        return {"probabilities": model(transformed_features[transformed_name(IMAGE_KEY)])}

    return serve_tf_examples_fn


def _get_transform_features_signature(model, tf_transform_output):
    model.tft_layer_eval = tf_transform_output.transform_features_layer()

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name="examples")])
    def transform_features_fn(serialized_tf_example):
        raw_feature_spec = tf_transform_output.raw_feature_spec()
        raw_features = tf.io.parse_example(serialized_tf_example, raw_feature_spec)
        return model.tft_layer_eval(raw_features)

    return transform_features_fn


def run_fn(fn_args: FnArgs) -> None:
    config = fn_args.custom_config
    tf.keras.utils.set_random_seed(0)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    image_shape = tf_transform_output.transformed_feature_spec()[transformed_name(IMAGE_KEY)].shape
    num_classes = tf_transform_output.vocabulary_size_by_name(LABEL_VOCABULARY)

    batch_size = int(config["batch_size"])
    train_dataset = _input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size)
    eval_dataset = _input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch_size)

    model = _build_keras_model(config["backbone_path"], image_shape, num_classes, float(config["learning_rate"]))
    tensorboard_callback = tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch")
    model.fit(
        train_dataset,
        epochs=int(config["epochs"]),
        validation_data=eval_dataset,
        callbacks=[tensorboard_callback],
        verbose=2,
    )

    signatures = {
        "serving_default": _get_tf_examples_serving_signature(model, tf_transform_output),
        "transform_features": _get_transform_features_signature(model, tf_transform_output),
    }
    model.save(fn_args.serving_model_dir, save_format="tf", signatures=signatures)

"""The default Transform `preprocessing_fn` for image classification: decode, resize, scale, index labels.

Images arrive as encoded bytes (PNG, JPEG, ...) in the `image` feature and labels in `label`. The
Transform graph maps them to float images in [0, 1] and to class indices over a label vocabulary, so
the same graph serves training, TFMA and the pushed model. Backbone-specific normalisation lives in
the model (`BackbonePreprocessing`), which keeps this graph independent of the backbone.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

IMAGE_KEY = "image"
LABEL_KEY = "label"
LABEL_VOCABULARY = "label"


def transformed_name(key: str) -> str:
    return f"{key}_xf"


def decode_images(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes a batch of encoded images to `[batch, image_size, image_size, 3]` floats in [0, 1]."""

    def decode_one(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)
        return tf.image.resize(image, [image_size, image_size])

    return tf.map_fn(
        decode_one, tf.reshape(encoded, [-1]), fn_output_signature=tf.TensorSpec([image_size, image_size, 3])
    )


def preprocessing_fn(inputs, custom_config):
    image_size = int(custom_config["image_size"])
    labels = tf.reshape(inputs[LABEL_KEY], [-1])
    if labels.dtype != tf.string:
        labels = tf.strings.as_string(labels)
    return {
        transformed_name(IMAGE_KEY): decode_images(inputs[IMAGE_KEY], image_size),
        transformed_name(LABEL_KEY): tft.compute_and_apply_vocabulary(labels, vocab_filename=LABEL_VOCABULARY),
    }

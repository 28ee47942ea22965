"""The bundled Transform `preprocessing_fn` for image classification: decode, resize, scale, index labels.

Images arrive as encoded bytes (PNG, JPEG, ...) in one feature and labels in another, named by
Transform's `custom_config` (`feature_key`, default `image`; `label_key`, default `label`). The Transform
graph maps them to float images in [0, 1] (`<feature_key>_xf`) and to class indices (`<label_key>_xf`)
over a vocabulary named like the label key, so the same graph serves training, TFMA and the pushed model.
Backbone-specific normalisation lives in the model (`BackbonePreprocessing`), which keeps this graph
independent of the backbone.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from freeze_trainer.tfx.trainer_config import transformed_name

IMAGE_KEY = "image"
LABEL_KEY = "label"


# The largest image side decoded, in pixels: an image's header is read before its pixels are, so a small
# file claiming a huge image (a 97 KB PNG of 10000 x 10000 pixels decodes to 1.5 GB) fails in one line.
MAX_IMAGE_SIDE = 4096
_HEADER_BYTES = 26  # BMP's height ends there, the furthest a header field read below lies


def _header_int(header: tf.Tensor, start: int, size: int, big_endian: bool) -> tf.Tensor:
    digits = tf.cast(tf.io.decode_raw(tf.strings.substr(header, start, size), tf.uint8), tf.int64)
    weights = tf.constant([256**i for i in (reversed(range(size)) if big_endian else range(size))], tf.int64)
    return tf.reduce_sum(digits * weights)


def image_dimensions(data: tf.Tensor) -> tf.Tensor:
    """`[height, width]` (int64) of one encoded PNG, JPEG, GIF or BMP image, read from its header without
    decoding its pixels; `[0, 0]` for other data (decode_image then names the format problem)."""
    header = tf.strings.join([tf.strings.substr(data, 0, _HEADER_BYTES), b"\0" * _HEADER_BYTES])
    starts = tf.strings.substr(header, 0, 8)
    bmp_height = _header_int(header, 22, 4, False)
    candidates = [
        (tf.equal(starts, b"\x89PNG\r\n\x1a\n"), lambda: tf.stack([_header_int(header, 20, 4, True),
                                                                       _header_int(header, 16, 4, True)])),
        (tf.equal(tf.strings.substr(starts, 0, 3), b"GIF"), lambda: tf.stack([_header_int(header, 8, 2, False),
                                                                              _header_int(header, 6, 2, False)])),
        (tf.equal(tf.strings.substr(starts, 0, 2), b"BM"), lambda: tf.stack([  # a negative height: top-down rows
            tf.where(bmp_height >= 2**31, 2**32 - bmp_height, bmp_height), _header_int(header, 18, 4, False)])),
        (tf.equal(tf.strings.substr(starts, 0, 3), b"\xff\xd8\xff"),
         lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)),
    ]
    return tf.case(candidates, default=lambda: tf.zeros([2], tf.int64))


def decode_images(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes a batch of encoded images to `[batch, image_size, image_size, 3]` floats in [0, 1]. An image
    larger than MAX_IMAGE_SIDE pixels a side fails with InvalidArgumentError before it is decoded."""

    def decode_one(data):
        size = image_dimensions(data)
        too_large = tf.debugging.Assert(tf.reduce_all(size <= MAX_IMAGE_SIDE), [tf.strings.format(
            "image of {} x {} pixels (height x width) is larger than the bundled image Transform decodes ("
            f"{MAX_IMAGE_SIDE} pixels a side)", (size[0], size[1]))])
        with tf.control_dependencies([too_large]):
            data = tf.identity(data)
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)
        return tf.image.resize(image, [image_size, image_size])

    return tf.map_fn(
        decode_one, tf.reshape(encoded, [-1]), fn_output_signature=tf.TensorSpec([image_size, image_size, 3])
    )


def preprocessing_fn(inputs, custom_config):
    image_size = int(custom_config["image_size"])
    image_key = custom_config.get("feature_key", IMAGE_KEY)
    label_key = custom_config.get("label_key", LABEL_KEY)
    labels = tf.reshape(inputs[label_key], [-1])
    if labels.dtype != tf.string:
        labels = tf.strings.as_string(labels)
    return {
        transformed_name(image_key): decode_images(inputs[image_key], image_size),
        transformed_name(label_key): tft.compute_and_apply_vocabulary(labels, vocab_filename=label_key),
    }

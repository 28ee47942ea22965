"""The embedded default data: scikit-learn's bundled handwritten digits as PNG-encoded tf.Examples.

It ships inside scikit-learn, so the demo runs offline. Digits 0-4 are the source task the demo
backbone is pretrained on; digits 5-9 are the target task the pipeline fine-tunes for.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

SOURCE_DIGITS = (0, 1, 2, 3, 4)
TARGET_DIGITS = (5, 6, 7, 8, 9)


def digit_labels(digits: tuple[int, ...] = TARGET_DIGITS, limit: int | None = None) -> np.ndarray:
    """The integer labels `load_digit_pngs` returns, without encoding the images."""
    target = load_digits().target
    return target[np.isin(target, digits)][:limit].astype(np.int64)


def digits_feature_spec(image_key: str = "image", label_key: str = "label") -> dict:
    """The raw feature spec of the examples `write_digits_examples` writes, as SchemaGen infers it."""
    return {image_key: tf.io.FixedLenFeature([1], tf.string), label_key: tf.io.FixedLenFeature([1], tf.int64)}


def load_digit_pngs(digits: tuple[int, ...], limit: int | None = None) -> tuple[list[bytes], np.ndarray]:
    """PNG bytes and integer labels of the digits in `digits`, in the data set's fixed order."""
    data = load_digits()
    keep = np.isin(data.target, digits)
    images = data.images[keep][:limit]
    labels = data.target[keep][:limit]
    # The scans hold 17 grey levels (0-16); spread them over 8 bits.
    pixels = np.round(images * (255.0 / 16.0)).astype(np.uint8)[..., np.newaxis]
    pngs = [tf.io.encode_png(image).numpy() for image in pixels]
    return pngs, labels.astype(np.int64)


def to_example(png: bytes, label: int | str, image_key: str = "image", label_key: str = "label") -> tf.train.Example:
    label_feature = (tf.train.Feature(bytes_list=tf.train.BytesList(value=[label.encode()])) if isinstance(label, str)
                     else tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])))
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                image_key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
                label_key: label_feature,
            }
        )
    )


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_digits_examples(
    output_dir: str,
    digits: tuple[int, ...] = TARGET_DIGITS,
    limit: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
    label_names: bool = False,
) -> str:
    """Writes the digits as a TFRecord file of tf.Examples for ImportExampleGen; returns `output_dir`.
    `label_names` writes each label as its English name (a string label) instead of an integer."""
    tf.io.gfile.makedirs(output_dir)
    pngs, labels = load_digit_pngs(digits, limit)
    path = os.path.join(output_dir, "digits.tfrecord")
    with tf.io.TFRecordWriter(path + ".tmp") as writer:
        for png, label in zip(pngs, labels):
            value = DIGIT_NAMES[label] if label_names else label
            writer.write(to_example(png, value, image_key, label_key).SerializeToString())
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    return output_dir

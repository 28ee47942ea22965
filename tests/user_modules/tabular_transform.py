"""A user Transform module for tabular data: the named numeric columns, z-scored and stacked into one
`features_xf` vector; the integer label passes through as `label_xf`."""

import tensorflow as tf
import tensorflow_transform as tft

FEATURE_PREFIX = "f_"


def preprocessing_fn(inputs, custom_config):
    columns = sorted(key for key in inputs if key.startswith(FEATURE_PREFIX))
    scaled = [tft.scale_to_z_score(tf.reshape(tf.cast(inputs[key], tf.float32), [-1])) for key in columns]
    return {
        "features_xf": tf.stack(scaled, axis=1),
        "label_xf": tf.reshape(inputs["label"], [-1]),
    }

"""A Transform module of the kind TFX's tabular examples use: one output per column. Every numeric column
is z-scored into its own output, `<column>_xf`; the integer label `target` passes through as `target_xf`."""

import tensorflow as tf
import tensorflow_transform as tft

LABEL = "target"


def preprocessing_fn(inputs):
    outputs = {f"{name}_xf": tft.scale_to_z_score(tf.cast(value, tf.float32))
               for name, value in inputs.items() if name != LABEL}
    outputs[f"{LABEL}_xf"] = tf.reshape(inputs[LABEL], [-1])
    return outputs

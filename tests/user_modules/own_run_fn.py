"""User trainer modules' `run_fn`s: one builds its own model and calls the documented helper, one does not."""

import tensorflow as tf

from freeze_trainer.keras import build_classifier
from freeze_trainer.tfx.run_fn import train_and_export


def run_fn(fn_args):
    """A base of the user's own under the project's new head; planning, proof and export from the helper."""

    def build(config, contract):
        base = tf.keras.Sequential([tf.keras.Input(contract.input_shape),
                                    tf.keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="own_conv")],
                                   name="own_base")
        return build_classifier(base, None, contract.num_classes, bn_inference_mode=True,
                                input_name=contract.feature_key, task=contract.task)

    train_and_export(fn_args, build)


def run_fn_without_helper(fn_args):
    """Trains nothing and saves a bare model: no freeze report."""
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(1)])
    model.save(fn_args.serving_model_dir, save_format="tf")

"""A multiplier k on a variable gives exactly Adam at k × the learning rate."""

import numpy as np
import tensorflow as tf

from freeze_trainer.keras.training.layer_rate_optimizer import LayerRateAdam


def _steps(optimizer, variable, gradients):
    optimizer.build([variable])
    for gradient in gradients:
        optimizer.apply_gradients([(tf.constant(gradient), variable)])
    return variable.numpy()


def test_multiplier_matches_adam_at_the_scaled_rate():
    gradients = [np.array([0.3, -1.0, 2.0], np.float32), np.array([0.1, 0.5, -0.2], np.float32)] * 3
    scaled = tf.Variable([1.0, 2.0, 3.0])
    optimizer = LayerRateAdam(1e-2)
    optimizer.set_multipliers([(scaled, 0.25)])
    reference = tf.Variable([1.0, 2.0, 3.0])
    np.testing.assert_allclose(
        _steps(optimizer, scaled, gradients), _steps(tf.keras.optimizers.Adam(2.5e-3), reference, gradients),
        rtol=1e-6,
    )


def test_variables_without_a_multiplier_train_at_the_base_rate():
    gradients = [np.array([1.0, -1.0], np.float32)] * 2
    plain = tf.Variable([0.0, 0.0])
    other = tf.Variable([0.0])
    optimizer = LayerRateAdam(1e-2)
    optimizer.set_multipliers([(other, 0.5)])
    np.testing.assert_allclose(
        _steps(optimizer, plain, gradients),
        _steps(tf.keras.optimizers.Adam(1e-2), tf.Variable([0.0, 0.0]), gradients),
        rtol=1e-6,
    )

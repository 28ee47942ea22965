"""The GradientTape loop: same policy semantics as `fit`, same result, Keras callbacks."""

import json

import numpy as np
import pytest
import tensorflow as tf

from freeze_trainer.keras.models.backbones import build_backbone
from freeze_trainer.keras.models.classifier_model import build_classifier
from freeze_trainer.keras.training.fit_training import train_with_fit
from freeze_trainer.keras.planning.freeze_plan import plan_policy
from freeze_trainer.policy.freeze_policy import parse_policy
from freeze_trainer.keras.training.gradient_tape_loop import train_with_gradient_tape
from tests.model_builders import SHAPE, random_images

POLICY = {
    "version": 1,
    "batchnorm": "affine",
    "phases": [
        {"name": "head", "epochs": 2, "rules": [{"freeze": {"base": True}}]},
        {"name": "top", "epochs": 1, "learning_rate": 1e-3, "rules": [{"freeze": {"base": True}},
         {"unfreeze": {"group": "block_16"}}], "lr_rules": [{"select": {"group": "block_16"}, "multiplier": 0.5}]},
    ],
}
RTOL = 1e-5


def _train(loop, policy=POLICY, evaluate=True, **kwargs):
    tf.keras.utils.set_random_seed(7)
    backbone = build_backbone("MobileNetV2", "none", SHAPE, alpha=0.35)
    model = build_classifier(backbone, "MobileNetV2", 3, bn_inference_mode=True, dropout=0.0)
    images, labels = random_images(48)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    plans = plan_policy(parse_policy(json.dumps(policy)), model, 1e-2, 1)
    checks, metrics = loop(model, plans, data, data if evaluate else None, verbose=0, **kwargs)
    return model, checks, metrics


@pytest.fixture(scope="module")
def both():
    return _train(train_with_fit), _train(train_with_gradient_tape)


def test_tape_and_fit_end_with_the_same_weights_and_metrics(both):
    (fit_model, fit_checks, fit_metrics), (tape_model, tape_checks, tape_metrics) = both
    assert len(fit_model.variables) == len(tape_model.variables)
    for fit_var, tape_var in zip(fit_model.variables, tape_model.variables):
        assert fit_var.name == tape_var.name
        np.testing.assert_allclose(tape_var.numpy(), fit_var.numpy(), rtol=RTOL, atol=1e-7, err_msg=fit_var.name)
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert tape_metrics[name] == pytest.approx(fit_metrics[name], rel=RTOL, abs=1e-6), name


def test_tape_loop_passes_the_per_phase_proof(both):
    _, (_, checks, _) = both
    assert [check.phase for check in checks] == ["head", "top"]
    assert all(check.passed for check in checks)
    assert checks[1].trainable_variables > checks[0].trainable_variables == 2


class _EpochLog(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs, self.logs = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.logs.append(dict(logs))


def test_keras_callbacks_run_in_the_tape_loop(tmp_path):
    # An unreachable min_delta: no epoch improves on the first, so EarlyStopping ends training after two.
    stopper = tf.keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)
    log = _EpochLog()
    board = tf.keras.callbacks.TensorBoard(str(tmp_path / "logs"), profile_batch=0)
    policy = {"version": 1, "phases": [{"name": "long", "epochs": 6, "rules": [{"freeze": {"base": True}}]}]}
    _, checks, _ = _train(train_with_gradient_tape, policy=policy, callbacks=[stopper, log, board])
    assert log.epochs == [0, 1] and stopper.stopped_epoch == 1
    assert set(log.logs[-1]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert list((tmp_path / "logs" / "train").iterdir())
    assert checks[0].passed


@pytest.mark.parametrize("loop", [train_with_fit, train_with_gradient_tape])
def test_both_loops_train_without_evaluation_data(loop):
    policy = {"version": 1, "phases": [{"name": "head", "epochs": 1, "rules": [{"freeze": {"base": True}}]}]}
    _, checks, metrics = _train(loop, policy=policy, evaluate=False)
    assert set(metrics) == {"loss", "accuracy"}
    assert checks[0].passed

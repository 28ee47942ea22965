"""`.keras` files saved by Keras 3 (a plain `import tensorflow` script on TF 2.16+): the common layers load
through the same safe allowlist, with their weights; a layer tf-keras does not have is refused in one line
that says the file was saved by Keras 3 and how to re-save it."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from freeze_trainer.keras.backbones import BackboneError, build_backbone
from freeze_trainer.keras.classifier_model import build_classifier
from freeze_trainer.keras.model_files import ModelFileError, load_model_file
from tests.conftest import REPO_ROOT

RESAVE = ("re-save it with tf-keras: rebuild the model with TF_USE_LEGACY_KERAS=1 set before TensorFlow is imported, "
          "load the Keras 3 weights (model.save_weights) and save it as .keras")


@pytest.fixture(scope="module")
def keras3_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras3")
    environment = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    saved = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tests", "keras3", "save_keras3_models.py"),
                            str(folder)], env=environment, capture_output=True, text=True, timeout=300)
    assert saved.returncode == 0, saved.stderr[-3000:]
    return str(folder)


@pytest.mark.parametrize("name, layers", [
    ("functional", ["image", "conv", "bn", "skip", "add", "pool", "enc"]),
    ("sequential", ["d1", "dropout", "d2"]),
])
def test_a_keras3_model_of_common_layers_loads_with_its_weights(keras3_files, name, layers):
    model = load_model_file(os.path.join(keras3_files, f"{name}.keras"), {})
    assert [layer.name for layer in model.layers] == layers
    probe = np.load(os.path.join(keras3_files, f"{name}_probe.npy"))
    expected = np.load(os.path.join(keras3_files, f"{name}_output.npy"))
    np.testing.assert_allclose(model(probe, training=False).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_a_keras3_base_takes_a_new_head_as_a_custom_backbone(keras3_files):
    base = build_backbone(None, os.path.join(keras3_files, "functional.keras"), (8, 8, 3))
    model = build_classifier(base, None, 3, bn_inference_mode=True)
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize("name, reason", [
    ("rms_norm", "layer 'rms': keras.layers.RMSNormalization is not an allowed Keras built-in"),
    ("lora_dense", "tf-keras cannot build it: "),
])
def test_a_keras3_layer_without_a_tf_keras_twin_is_refused_in_one_line(keras3_files, name, reason):
    path = os.path.join(keras3_files, f"{name}.keras")
    with pytest.raises(ModelFileError) as raised:
        load_model_file(path, {})
    message = str(raised.value)
    assert message.startswith(f"{path}: saved by Keras 3.") and reason in message, message
    assert message.endswith(RESAVE) and "\n" not in message
    with pytest.raises(BackboneError) as raised:
        build_backbone(None, path, None)
    assert str(raised.value).startswith(f"backbone_weights: {path}: saved by Keras 3.")

"""`.keras` files saved by Keras 3 (a plain `import tensorflow` script on TF 2.16+): the common layers load
through the same safe allowlist, with their weights; a layer tf-keras does not have is refused in one line
that says the file was saved by Keras 3 and how to re-save it."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from freeze_trainer.keras.models.backbones import BackboneError, build_backbone
from freeze_trainer.keras.models.classifier_model import build_classifier
from freeze_trainer.keras.models.model_files import ModelFileError, load_model_file
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
    ("two_inputs", ["bill", "flipper", "stack", "inner", "out"]),
])
def test_a_keras3_model_of_common_layers_loads_with_its_weights(keras3_files, name, layers):
    model = load_model_file(os.path.join(keras3_files, f"{name}.keras"), {})
    assert [layer.name for layer in model.layers] == layers
    with np.load(os.path.join(keras3_files, f"{name}_probe.npz")) as saved:
        probe = [saved[f"arr_{index}"] for index in range(len(saved.files))]
    expected = np.load(os.path.join(keras3_files, f"{name}_output.npy"))
    outputs = model(probe if len(probe) > 1 else probe[0], training=False).numpy()
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)


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


def test_a_keras3_call_on_a_missing_call_is_refused_rather_than_left_to_loop(tmp_path):
    """tf-keras re-queues a call whose input does not exist yet, forever: such a reference is refused first."""
    from freeze_trainer.keras.models.keras3_files import Keras3MappingError, tf_keras_config

    tensor = {"class_name": "__keras_tensor__", "config": {"keras_history": ["features", 0, 0]}}
    dense = {"module": "keras.layers", "class_name": "Dense", "name": "d", "config": {"name": "d", "units": 1},
             "inbound_nodes": [{"args": [{**tensor, "config": {"keras_history": ["d", 1, 0]}}], "kwargs": {}}]}
    model = {"module": "keras.src.models.functional", "class_name": "Functional", "config": {
        "name": "m", "layers": [{"module": "keras.layers", "class_name": "InputLayer", "name": "features",
                                 "config": {"name": "features", "batch_shape": [None, 2]}, "inbound_nodes": []}, dense],
        "input_layers": ["features", 0, 0], "output_layers": ["d", 0, 0]}}
    with pytest.raises(Keras3MappingError, match="layer 'd': a call on call 1 of layer 'd', which it has not"):
        tf_keras_config(model)
    path = str(tmp_path / "looping.keras")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(model))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.12.4"}))
    with pytest.raises(ModelFileError) as raised:
        load_model_file(path, {})
    assert str(raised.value) == (f"{path}: saved by Keras 3.12.4, in a form tf-keras cannot read: layer 'd': a call on "
                                 f"call 1 of layer 'd', which it has not; {RESAVE}")
    dense["inbound_nodes"][0]["args"] = [tensor]
    assert tf_keras_config(model)["config"]["layers"][1]["inbound_nodes"] == [[["features", 0, 0, {}]]]

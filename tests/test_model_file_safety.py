"""A `.keras` backbone never runs code (issue #12): a Lambda layer naming `pydoc.pipepager` runs a shell
command under plain Keras safe mode, and is refused, with one line naming the file, by every way in."""

import json
import os
import pydoc
import time
import zipfile

import pytest
import tensorflow as tf
from click.testing import CliRunner

from freeze_trainer.cli.policy_cli import main as policy_cli
from freeze_trainer.keras.models.backbones import BackboneError, build_backbone
from freeze_trainer.keras.models.model_files import ALLOWED_ACTIVATIONS, ALLOWED_CLASSES
from freeze_trainer.tfx.trainer_config import TrainerConfig
from freeze_trainer.tfx.trainer_model import build_from_config, planning_contract
from pipelines.pretrain_backbone import DEFAULT_BACKBONE_PATH
from tests.conftest import run_local_runner
from tests.model_builders import tiny_classifier

SHAPE = (32, 32, 3)
POLICY = '{"version": 1, "rules": [{"freeze": {"base": true}}]}'


def _entries(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write_keras(path, entries: dict[str, bytes], config: dict) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in {**entries, "config.json": json.dumps(config).encode()}.items():
            archive.writestr(name, data)
    return str(path)


def _layer(config: dict, name: str) -> dict:
    return next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == name)


def _appears(marker, seconds: float) -> bool:
    """The pager's shell runs beside the loader, which fails on its own afterwards: wait for it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if marker.exists():
            return True
        time.sleep(0.05)
    return marker.exists()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A benign 32x32x3 model, Conv2D then a Lambda, as a `.keras` file's entries and config."""
    inputs = tf.keras.Input(SHAPE)
    features = tf.keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.Lambda(lambda x: x, name="pager")(features))
    path = tmp_path_factory.mktemp("benign") / "benign.keras"
    model.save(path)
    entries = _entries(path)
    return entries, json.loads(entries["config.json"])


@pytest.fixture
def pager_file(saved_model, tmp_path):
    """The attack: the Lambda becomes `Lambda(pydoc.pipepager, arguments={"cmd": "touch MARKER"})`, its
    function stored by name (Keras stores any Python function as bytecode, which safe mode refuses)."""
    entries, config = saved_model
    marker = tmp_path / "PWNED"
    pager = tf.keras.layers.Lambda(pydoc.pipepager, arguments={"cmd": f"touch {marker}"}, name="pager")
    named = {"module": "pydoc", "class_name": "function", "config": "pipepager", "registered_name": "pipepager"}
    config = json.loads(json.dumps(config))
    _layer(config, "pager")["config"] = {**pager.get_config(), "function": named, "function_type": "function"}
    return _write_keras(tmp_path / "pager.keras", entries, config), marker


def _assert_one_line_refusal(message: str, path: str) -> None:
    assert "\n" not in message.strip()
    assert path in message and "'pager'" in message and "Lambda" in message


def test_the_threat_is_real_plain_safe_mode_runs_the_command(pager_file):
    path, marker = pager_file
    with pytest.raises(Exception):  # pipepager gets a tensor for its text, once the shell already runs
        tf.keras.models.load_model(path, compile=False, safe_mode=True)
    assert _appears(marker, seconds=10)
    marker.unlink()


def test_the_policy_cli_refuses_it(pager_file):
    path, marker = pager_file
    result = CliRunner().invoke(
        policy_cli, ["plan", POLICY, "--backbone", "MobileNetV2", "--backbone-weights", path, "--image-size", "32"]
    )
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    _assert_one_line_refusal(errors[0], path)
    assert not _appears(marker, seconds=1)


def test_the_local_runner_refuses_it_before_any_component_runs(pager_file, tmp_path):
    path, marker = pager_file
    output_dir = tmp_path / "run"
    result = run_local_runner("--backbone-weights", path, "--output-dir", str(output_dir), "--sample", "50",
                              timeout=300)
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stdout + result.stderr
    _assert_one_line_refusal(errors[0], path)
    assert "Traceback" not in result.stderr
    assert not (output_dir / "pipeline_root").exists()
    assert not _appears(marker, seconds=1)


def test_the_executor_model_build_refuses_it(pager_file):
    """`run_fn` builds its model with this call, with the contract it reads from the data."""
    path, marker = pager_file
    config = TrainerConfig.from_parameters(freeze_policy=POLICY, backbone_weights=path)
    with pytest.raises(BackboneError) as raised:
        build_from_config(config, planning_contract(SHAPE, num_classes=3))
    _assert_one_line_refusal(str(raised.value), path)
    assert not _appears(marker, seconds=1)


def test_a_class_from_a_foreign_module_is_refused(saved_model, tmp_path):
    entries, config = saved_model
    config = json.loads(json.dumps(config))
    _layer(config, "pager").update(module="keras.layers", class_name="Identity")  # only the foreign class left
    _layer(config, "pager")["config"] = {"name": "pager", "trainable": True, "dtype": "float32"}
    _layer(config, "conv")["config"]["kernel_initializer"] = {
        "module": "os", "class_name": "system", "config": {}, "registered_name": None
    }
    path = _write_keras(tmp_path / "foreign.keras", entries, config)
    with pytest.raises(BackboneError, match=r"^backbone_weights: .*foreign\.keras: layer 'conv': .*module 'os'"):
        build_backbone("MobileNetV2", path, SHAPE)


def _zip_holding(name: str, text: str):
    def write(path):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(name, text)
    return write


@pytest.mark.parametrize("write, reason", [
    (lambda path: path.write_bytes(os.urandom(4096)), "not a .keras file: not a zip archive"),
    (_zip_holding("metadata.json", "{}"), "not a .keras file: the archive has no config.json"),
    (_zip_holding("config.json", "{not json"), "config.json is not valid JSON: "),
], ids=["random-bytes", "no-config", "bad-json"])
def test_a_file_that_is_not_a_keras_archive_gets_one_line(tmp_path, write, reason):
    path = tmp_path / "broken.keras"
    write(path)
    with pytest.raises(BackboneError) as raised:
        build_backbone("MobileNetV2", str(path), SHAPE)
    assert str(raised.value).startswith(f"backbone_weights: {path}: {reason}") and "\n" not in str(raised.value)


def test_the_demo_backbone_still_loads():
    backbone = build_backbone("MobileNetV2", DEFAULT_BACKBONE_PATH, SHAPE)
    assert backbone.input_shape[1:] == SHAPE and len(backbone.layers) > 100


def test_the_projects_own_registered_layer_is_allowed(tmp_path):
    path = str(tmp_path / "classifier.keras")
    tiny_classifier().save(path)
    loaded = build_backbone("MobileNetV2", path, SHAPE)
    assert "BackbonePreprocessing" in [type(layer).__name__ for layer in loaded.layers]


def test_an_op_layer_backbone_loads_and_only_arithmetic_ops_pass(tmp_path):
    """MobileNetV3's hard-swish is saved as TFOpLambda layers: allowed for tensor arithmetic only."""
    path = str(tmp_path / "v3.keras")
    tf.keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=SHAPE).save(path)
    assert build_backbone("MobileNetV3Small", path, SHAPE).count_params() > 0
    entries = _entries(path)
    config = json.loads(entries["config.json"])
    op = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "TFOpLambda")
    op["config"]["function"] = "io.gfile.rmtree"
    with pytest.raises(BackboneError, match=r"op layer calls tf\.io\.gfile\.rmtree"):
        build_backbone("MobileNetV3Small", _write_keras(tmp_path / "rmtree.keras", entries, config), SHAPE)


def test_every_allowed_name_is_a_keras_built_in():
    namespaces = {"keras.layers": tf.keras.layers, "keras.initializers": tf.keras.initializers,
                  "keras.regularizers": tf.keras.regularizers, "keras.constraints": tf.keras.constraints}
    for module, namespace in namespaces.items():
        assert not [name for name in ALLOWED_CLASSES[module] if not isinstance(getattr(namespace, name, None), type)]
    assert all(callable(tf.keras.activations.get(name)) for name in ALLOWED_ACTIVATIONS)
    assert "Lambda" not in ALLOWED_CLASSES["keras.layers"]

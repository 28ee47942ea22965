"""`FreezeTrainer(...)` refuses a bad literal parameter where the pipeline is defined, in one line naming it
(issue 19); RuntimeParameters are left to the executor. And a module's `build_model` receives the model's
own hyperparameters, in either of its two forms."""

import json
import zipfile

import pytest
import tensorflow as tf
from tfx import types
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from freeze_trainer import FreezeTrainer, PolicyError
from freeze_trainer.tfx.trainer_config import ConfigError, TrainerConfig, model_hyperparameters
from freeze_trainer.tfx.trainer_model import build_from_config, planning_contract
from pipelines.demo_backbone import DEFAULT_BACKBONE_PATH

POLICY = '{"version": 1, "rules": [{"freeze": {"base": true}}]}'


def _trainer(**parameters) -> FreezeTrainer:
    return FreezeTrainer(examples=types.Channel(type=standard_artifacts.Examples), **parameters)


def _unsafe_keras_file(path) -> str:
    """A `.keras` archive whose config names a class from `os`: refused from its config, nothing loaded."""
    config = {"class_name": "Functional", "module": "tf_keras.src.engine.functional", "registered_name": None,
              "config": {"name": "base", "layers": [
                  {"class_name": "system", "module": "os", "registered_name": None, "config": {"name": "shell"}}]}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    return str(path)


@pytest.mark.parametrize("parameters, error, message", [
    ({"freeze_policy": '{"version": 1, "rulez": []}'}, PolicyError, "freeze policy: rulez: unknown key"),
    ({"task": "binery"}, ConfigError, "task: Input should be 'auto', 'multiclass', 'binary'"),
    ({"epochs": 0}, ConfigError, "epochs: Input should be greater than 0"),
    ({"backbone_weights": "/nope/w.h5"}, ConfigError, "backbone_weights: '/nope/w.h5' does not exist"),
    ({"backbone": "custom", "backbone_weights": "/nope/base.keras"}, ConfigError,
     "backbone_weights: '/nope/base.keras' does not exist"),
])
def test_a_bad_literal_parameter_fails_at_definition_naming_it(parameters, error, message):
    with pytest.raises(error) as raised:
        _trainer(**parameters)
    assert str(raised.value).startswith(message), str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_keras_file_naming_code_fails_at_definition_from_its_config(tmp_path):
    path = _unsafe_keras_file(tmp_path / "base.keras")
    with pytest.raises(ConfigError) as raised:
        _trainer(backbone="custom", backbone_weights=path)
    assert str(raised.value) == (f"backbone_weights: {path}: layer 'shell': class 'system' from module 'os', "
                                 "which is not Keras' own")


def test_runtime_parameters_are_left_to_the_run_and_good_values_pass(tmp_path):
    runtime = tfx.dsl.experimental.RuntimeParameter
    trainer = _trainer(
        freeze_policy=runtime(name="freeze_policy", ptype=str, default='{"version": 1, "rulez": []}'),
        task=runtime(name="task", ptype=str, default="binery"),
        backbone_weights=runtime(name="backbone_weights", ptype=str, default="/nope/w.h5"),
        epochs=3,
    )
    assert trainer.exec_properties["epochs"] == 3
    # The bundled `.keras` base, URIs (checked when loaded) and the defaults construct.
    _trainer(freeze_policy=POLICY, backbone_weights=DEFAULT_BACKBONE_PATH, epochs=2)
    _trainer(backbone="custom", backbone_weights="gs://bucket/base.keras")
    _trainer()


def test_the_local_pipeline_still_constructs(tmp_path):
    from pipelines.freeze_pipeline import create_pipeline
    from pipelines.pipeline_options import PipelineOptions

    pipeline = create_pipeline("p", str(tmp_path / "root"), str(tmp_path / "data"), str(tmp_path / "serving"),
                               PipelineOptions(image_size=32), freeze_policy=POLICY,
                               backbone_weights=DEFAULT_BACKBONE_PATH)
    assert any(isinstance(node, FreezeTrainer) for node in pipeline.components)


def test_build_model_gets_the_models_own_hyperparameters_in_either_form():
    config = TrainerConfig.from_parameters(backbone="custom", head_layers="head")
    contract = planning_contract((4,))
    seen = {}

    def model(name):
        inputs = tf.keras.Input((4,), name="features")
        return tf.keras.Model(inputs, tf.keras.layers.Dense(2, activation="softmax", name="head")(
            tf.keras.layers.Dense(3, name="hidden")(inputs)), name=name)

    def with_hyperparameters(config, contract, hyperparameters):
        seen.update(hyperparameters)
        return model("tuned")

    def original(config, contract):
        return model("original")

    values = {"learning_rate": 0.1, "policy.phases.0.epochs": 2, "num_layers": 3}
    assert model_hyperparameters(values) == {"num_layers": 3}
    built = build_from_config(config, contract, build_model=with_hyperparameters,
                              hyperparameters=model_hyperparameters(values))
    assert built.name == "tuned" and seen == {"num_layers": 3}
    assert build_from_config(config, contract, build_model=original, hyperparameters={"num_layers": 3}).name == "original"

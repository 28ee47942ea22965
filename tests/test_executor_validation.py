"""The executor rejects bad parameters before it reads any artifact."""

import pytest
from tfx.types import standard_artifacts

from freeze_trainer.tfx.executor import Executor, trainer_config_from_exec_properties
from freeze_trainer.policy.freeze_policy import PolicyError
from freeze_trainer.tfx.trainer_config import ConfigError


def _exec_properties(policy: str, **overrides):
    return {"freeze_policy": policy, "backbone": "MobileNetV2", "backbone_weights": "none",
            "train_args": "{}", "eval_args": "{}", "custom_config": "null", **overrides}


def _missing_inputs(tmp_path):
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "does-not-exist")
    graph = standard_artifacts.TransformGraph()
    graph.uri = str(tmp_path / "does-not-exist-either")
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    run = standard_artifacts.ModelRun()
    run.uri = str(tmp_path / "run")
    return {"examples": [examples], "transform_graph": [graph]}, {"model": [model], "model_run": [run]}


@pytest.mark.parametrize(
    "policy, message",
    [
        ('{"version": 1, "rules": [', "malformed JSON"),
        ('{"version": 1, "rules": [{"freeze": {"base": true}}], "extra": 1}', "extra: unknown key"),
    ],
)
def test_bad_policy_fails_in_the_executor_before_inputs_are_read(tmp_path, policy, message):
    inputs, outputs = _missing_inputs(tmp_path)
    with pytest.raises(PolicyError, match=message):
        Executor().Do(inputs, outputs, _exec_properties(policy))
    assert not (tmp_path / "model").exists()


def test_vertex_executor_rejects_a_bad_policy_before_submitting_a_job(tmp_path):
    from freeze_trainer.tfx.vertex_trainer import VertexExecutor

    inputs, outputs = _missing_inputs(tmp_path)
    # No project, region or credentials: reaching the job submission would fail differently.
    with pytest.raises(PolicyError, match="malformed JSON"):
        VertexExecutor().Do(inputs, outputs, _exec_properties('{"version": 1, "rules": ['))
    assert not (tmp_path / "model").exists()


def test_unknown_backbone_names_the_key():
    with pytest.raises(ConfigError, match="backbone: unknown backbone 'AlexNet'"):
        trainer_config_from_exec_properties(
            _exec_properties('{"version": 1, "rules": [{"freeze": {"base": true}}]}', backbone="AlexNet")
        )


def test_optional_parameters_fall_back_to_defaults():
    config = trainer_config_from_exec_properties(
        _exec_properties('{"version": 1, "rules": [{"freeze": {"base": true}}]}', epochs=None, learning_rate=None)
    )
    assert config.epochs == 10 and config.learning_rate == 1e-2

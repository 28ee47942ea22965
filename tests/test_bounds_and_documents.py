"""Issue 20's bounds and strict documents, each a regression test of an input that was accepted wrongly:
one set of bounds on every path (the table's, the policy's, effective per-layer rates, a loss that
diverges with finite weights, cron strings and time zones), duplicate keys, hyperparameters files checked
against the table at start-up and in the executor, regexes that would backtrack for minutes, and user
files capped before they are read. Fast: no pipeline runs."""

import json
import os
import time
import zipfile

import click
import pytest
from click.testing import CliRunner

from freeze_trainer.policy.freeze_policy import PolicyError, parse_policy
from freeze_trainer.tfx.trainer_config import (
    MAX_HYPERPARAMETERS_BYTES,
    ConfigError,
    TrainerConfig,
    config_with_hyperparameters,
    read_hyperparameters_file,
)
from tests.conftest import REPO_ROOT, run_local_runner

HEAD_RULES = [{"freeze": {"base": True}}]


@pytest.mark.parametrize("values, naming", [
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"seed": 2**40}, "seed: Input should be less than or equal to 2147483647"),
    ({"batch_size": 10**23}, "batch_size: Input should be less than or equal to 65536"),
    ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
])
def test_the_tables_bounds_refuse_a_negative_seed_and_a_huge_batch(values, naming):
    with pytest.raises(ConfigError, match=naming):
        TrainerConfig.from_parameters(**values)


def test_freeze_trainer_refuses_a_negative_seed_when_the_pipeline_is_defined():
    from freeze_trainer import FreezeTrainer

    with pytest.raises(ConfigError, match="seed: Input should be greater than or equal to 0"):
        FreezeTrainer(examples=None, transform_graph=None, schema=None, seed=-1)


def test_an_effective_rate_past_the_bounds_is_refused_at_plan_time_naming_the_rule():
    """Was: multiplier 1e4 on a head rate of 10 trained at 1e5; the loss reached 14,565 and the proof passed."""
    from freeze_trainer.keras.planning.freeze_plan import plan_policy
    from tests.model_builders import tiny_classifier

    policy = parse_policy(json.dumps({"version": 1, "phases": [{
        "name": "hot", "learning_rate": 10, "rules": [{"freeze": {"base": True}}, {"unfreeze": {"names": ["conv_b"]}}],
        "lr_rules": [{"select": {"names": ["conv_b"]}, "multiplier": 1e4}]}]}))
    with pytest.raises(PolicyError) as raised:
        plan_policy(policy, tiny_classifier())
    assert raised.value.key == "phases[0].lr_rules[0].multiplier"
    assert "effective learning rate of 100000" in str(raised.value) and "[1e-08, 10]" in str(raised.value)


def test_a_loss_that_rises_past_100x_its_first_epoch_fails_the_phase_as_diverged():
    from freeze_trainer.keras.training.freeze_proof import FreezeCheck, FreezeViolation, LossRise, raise_on_violation
    from tests.model_builders import tiny_classifier

    rise = LossRise()
    rise.set_model(tiny_classifier())
    for epoch, loss in enumerate([2.0, 150.0, 199.0]):  # 99.5x: not yet
        rise.on_epoch_end(epoch, {"loss": loss})
    assert rise.diverged == () and not rise.model.stop_training
    rise.on_epoch_end(3, {"loss": 14565.0})
    assert rise.diverged == (2.0, 14565.0) and rise.model.stop_training  # stops the phase there
    check = FreezeCheck(phase="finetune", passed=False, frozen_variables=1, trainable_variables=1, frozen_params=1,
                        trainable_params=1, changed_frozen=(), unchanged_trainable=(), loss_rise=rise.diverged)
    assert FreezeCheck.from_dict(json.loads(json.dumps(check.as_dict()))) == check  # survives a checkpoint
    with pytest.raises(FreezeViolation, match=r"phase 'finetune': training diverged: the loss rose from 2 "
                                              r"\(first epoch\) to 1.456e\+04, more than 100×"):
        raise_on_violation(check)


@pytest.mark.parametrize("command, cron, naming", [
    ("vertex", "TZ=Mars/Olympus 0 3 * * *", "unknown time zone 'Mars/Olympus'"),
    ("vertex", "0 99 * * *", "out of range"),
    ("vertex", "0 3 31 2 *", "matches no date: the schedule would never run"),
    ("kfp", "0 0 3 * * 9", "out of range"),
    ("kfp", "TZ=UTC 0 3 * * *", "KFP schedules take no TZ= prefix"),
])
def test_schedule_refuses_an_unknown_time_zone_and_an_impossible_cron(tmp_path, command, cron, naming):
    from kubeflow import schedule

    where = ["--template", str(tmp_path / "p.json"), "--project", "p"] if command == "vertex" else [
        "--package", str(tmp_path / "p.yaml"), "--host", "https://kfp.example"]
    result = CliRunner().invoke(schedule.main, [command, *where, "--cron", cron, "--dry-run"])
    assert result.exit_code == 2, result.output
    assert naming in result.output and "Traceback" not in result.output


def test_plan_refuses_fewer_than_two_classes():
    from freeze_trainer.cli.policy_cli import main

    result = CliRunner().invoke(main, ["plan", os.path.join(REPO_ROOT, "kubeflow", "policies", "head_then_top.json"),
                                       "--num-classes", "0"])
    assert result.exit_code == 2 and "'--num-classes': 0 is not in the range x>=2" in result.output


def test_the_local_runner_refuses_zero_train_steps_and_negative_eval_steps(tmp_path):
    for flag, value in (("--train-steps", "0"), ("--eval-steps", "-1")):
        result = run_local_runner("--output-dir", str(tmp_path / "out"), flag, value, timeout=300)
        assert result.returncode == 2, result.stderr
        assert "Error:" in result.stderr and flag.lstrip("-").replace("-", "_") in result.stderr.replace("-", "_")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, key", [
    ('{"version": 1, "rules": [{"freeze": {"base": true}}], "rules": [{"unfreeze": {"top": 2}}]}', "rules"),
    ('{"version": 1, "rules": [{"freeze": {"base": true}, "freeze": {"top": 1}}]}', "freeze"),
    ("version: 1\nphases:\n  - {name: a, rules: [{freeze: {base: true}}]}\nphases:\n  - {name: b, rules: []}\n",
     "phases"),
    ("version: 1\nrules:\n  - freeze:\n      base: true\n      base: false\n", "base"),
])
def test_a_repeated_key_in_a_json_or_yaml_policy_is_refused_naming_it(text, key):
    """Was: accepted, and one of the two definitions silently dropped."""
    with pytest.raises(PolicyError) as raised:
        parse_policy(text)
    assert raised.value.key == key and "repeated" in str(raised.value)


def _hyperparameters_file(tmp_path, values) -> str:
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"space": [], "values": values}))
    return str(path)


@pytest.mark.parametrize("values, naming", [
    ({"learning_rat": 0.1}, "hyperparameters.learning_rat: unknown hyperparameter; closest: learning_rate"),
    ({"backbone": "ResNet50"}, "hyperparameters.backbone: a compile-time parameter"),
    ({"task": "regression"}, "hyperparameters.task: a compile-time parameter"),
    ({"learning_rate": 20}, "hyperparameters.learning_rate: value 20: Input should be less than or equal to 10"),
    ({"seed": -1}, "hyperparameters.seed: value -1: Input should be greater than or equal to 0"),
    ({"epochs": "three"}, "hyperparameters.epochs: value 'three': Input should be a valid integer"),
    ({"policy.phases.0.learning_rate": 1}, "phases.0.learning_rate names no field of the policy"),
])
def test_a_hyperparameter_that_would_not_take_effect_is_refused_by_runner_and_executor(tmp_path, values, naming):
    """Was: a typo was ignored, and `backbone` recorded, while the log and MLMD claimed the override."""
    import local_runner
    from freeze_trainer.tfx.executor import trainer_config_from_exec_properties

    with pytest.raises(click.UsageError, match=naming):
        local_runner.validated_config(32, None, _hyperparameters_file(tmp_path, values))
    with pytest.raises((ConfigError, PolicyError), match=naming):
        trainer_config_from_exec_properties({}, values)


def test_the_models_own_hyperparameters_need_a_module_that_reads_them():
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        config_with_hyperparameters({}, {"num_layers": 3})
    assert config_with_hyperparameters({}, {"num_layers": 3, "learning_rate": 0.5}, user_model=True).learning_rate == 0.5
    from freeze_trainer.tfx.executor import trainer_config_from_exec_properties

    assert trainer_config_from_exec_properties({"module_file": "m.py"}, {"num_layers": 3}).learning_rate == 1e-2


@pytest.mark.parametrize("content, naming", [
    ('{"learning_rate": NaN}', "is not JSON: NaN is not a finite number"),
    ("[1, 2]", "holds no name -> value mapping"),
    ('{"values": 3}', "holds no name -> value mapping"),
    ("learning_rate: 0.1", "is not JSON"),
])
def test_a_hyperparameters_file_that_is_not_a_mapping_of_numbers_is_refused(tmp_path, content, naming):
    path = tmp_path / "h.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=naming):
        read_hyperparameters_file(str(path))


def test_a_hyperparameters_file_over_the_cap_is_refused_unread(tmp_path):
    path = tmp_path / "big.json"
    path.write_text('{"learning_rate": 0.1, "x": "' + "a" * MAX_HYPERPARAMETERS_BYTES + '"}')
    with pytest.raises(ConfigError, match=f"larger than {MAX_HYPERPARAMETERS_BYTES} bytes"):
        read_hyperparameters_file(str(path))


@pytest.mark.parametrize("pattern", [r"(\w*)*(\w*)*z", r"(\w*)*z", r"(a?){25}a{25}", r"(a|ab)*c", ".*.*.*.*z"])
def test_a_regex_that_would_backtrack_for_minutes_is_refused_in_milliseconds(pattern):
    """Was: `(\\w*)*(\\w*)*z` ran `freeze-policy plan` at 100 % CPU for minutes, `(\\w*)*z` added 47 s."""
    started = time.monotonic()
    for key, policy in (("rules[1].unfreeze.regex", {"rules": [{"freeze": {"base": True}}, {"unfreeze": {"regex": pattern}}]}),
                        ("block_pattern", {"rules": HEAD_RULES, "block_pattern": pattern})):
        with pytest.raises(PolicyError) as raised:
            parse_policy(json.dumps({"version": 1, **policy}))
        assert raised.value.key == key and "backtrack" in str(raised.value)
    assert time.monotonic() - started < 1.0


def test_ordinary_selector_regexes_still_plan():
    from freeze_trainer.keras.planning.freeze_plan import plan_policy
    from tests.model_builders import tiny_classifier

    for pattern in ("conv_.*", "conv_[ab]|bn", r"(conv)_\w+", r"c\w{1,5}_b"):
        policy = parse_policy(json.dumps({"version": 1, "rules": [{"freeze": {"regex": pattern}}]}))
        assert plan_policy(policy, tiny_classifier())


def test_a_keras_file_whose_config_inflates_past_the_cap_is_refused_before_inflating(tmp_path):
    """Was: a 1.3 MB `.keras` whose config.json inflates to 1.34 GB was read whole: 43 s, 3.2 GB."""
    from freeze_trainer.keras.models.model_files import MAX_MEMBER_BYTES, ModelFileError, read_config

    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", b'{"a": "' + b" " * (MAX_MEMBER_BYTES + 1) + b'"}')
    assert os.path.getsize(path) < MAX_MEMBER_BYTES / 100
    started = time.monotonic()
    with pytest.raises(ModelFileError, match="config.json inflates to .* bytes, more than"):
        read_config(str(path))
    assert time.monotonic() - started < 1.0


def test_a_template_over_the_cap_is_refused_unread(tmp_path):
    from kubeflow.submission import MAX_TEMPLATE_BYTES, Refused, read_pipeline_spec

    path = tmp_path / "pipeline.json"
    with open(path, "wb") as f:
        f.truncate(MAX_TEMPLATE_BYTES + 1)
    with pytest.raises(Refused, match="larger than"):
        read_pipeline_spec(str(path))

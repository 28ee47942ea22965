"""`freeze-policy plan|validate|schema`, and the plan text for a known policy, line by line."""

import os
import subprocess
import sys

import json

from click.testing import CliRunner

from freeze_trainer.keras.freeze_plan import plan_policy
from freeze_trainer.policy.freeze_policy import parse_policy
from freeze_trainer.keras.plan_report import format_plan
from freeze_trainer.cli.policy_cli import main
from tests.model_builders import tiny_classifier

RUNNER = CliRunner()
SMALL = ["--image-size", "32", "--alpha", "0.35"]


def test_plan_text_for_a_known_policy_line_by_line():
    policy = parse_policy('{"version": 1, "rules": [{"freeze": {"names": ["conv_a"]}}]}')
    lines = format_plan(plan_policy(policy, tiny_classifier(), default_learning_rate=0.01, default_epochs=2))
    fields = [line.split() for line in lines]
    assert lines[0] == ("phase 1/1 'train': 2 epochs, head lr 0.01; 4 of 6 layers trainable; "
                        "trainable params 19, frozen params 128; no feature cache: 1 backbone layer(s) train")
    assert fields[1] == ["#", "layer", "class", "group", "auto", "state", "bn", "lr", "trainable", "frozen"]
    assert fields[2:] == [
        ["0", "conv_a", "Conv2D", "stem", "auto_0", "frozen", "-", "-", "0", "112"],
        ["1", "bn", "BatchNormalization", "stem", "auto_1", "frozen", "frozen", "-", "0", "16"],
        ["2", "conv_b", "Conv2D", "stem", "auto_2", "trainable", "-", "0.01", "10", "0"],
        ["3", "head_pool", "GlobalAveragePooling2D", "head", "head", "trainable", "-", "-", "0", "0"],
        ["4", "head_dropout", "Dropout", "head", "head", "trainable", "-", "-", "0", "0"],
        ["5", "head_classifier", "Dense", "head", "head", "trainable", "-", "0.01", "9", "0"],
    ]


def test_plan_command_shows_recipe_phases_groups_and_decayed_rates(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nauto_groups: 2\nrecipe:\n  gradual: {factor: 2.0}\n")
    result = RUNNER.invoke(main, ["plan", str(policy), "--learning-rate", "0.01", *SMALL])
    assert result.exit_code == 0, result.output
    summaries = [line for line in result.output.splitlines() if line.startswith("phase ")]
    assert [line.split("'")[1] for line in summaries] == ["head", "top_1_groups", "top_2_groups"]
    assert summaries[0].endswith("head trains on cached base features")
    assert all("; no feature cache: " in line for line in summaries[1:])
    rows = {fields[1]: fields for fields in (line.split() for line in result.output.splitlines()) if len(fields) == 10}
    # In the last phase the top auto group trains at lr/2 and the bottom one at lr/4.
    assert rows["block_16_project"][3:9] == ["block_16", "auto_1", "trainable", "-", "0.005", rows["block_16_project"][8]]
    assert rows["Conv1"][5:8] == ["trainable", "-", "0.0025"]


def test_validate_accepts_and_rejects_with_the_key():
    on_backbone = ["--backbone", "MobileNetV2", *SMALL]
    ok = RUNNER.invoke(main, ["validate", '{"version": 1, "rules": [{"freeze": {"base": true}}]}', *on_backbone])
    assert ok.exit_code == 0 and "valid: 1 phase(s)" in ok.output
    bad = RUNNER.invoke(main, ["validate", '{"version": 1, "rules": [{"freeze": {"group": "block_99"}}]}', *on_backbone])
    assert bad.exit_code == 1
    assert "rules[0].freeze.group: group 'block_99' does not exist for this backbone" in bad.output
    assert "block_16" in bad.output


def test_validate_rejects_an_unknown_backbone():
    bad = RUNNER.invoke(main, ["validate", '{"version": 1, "rules": [{"freeze": {"base": true}}]}', "--backbone", "X"])
    assert bad.exit_code == 1 and "backbone: unknown backbone 'X'" in bad.output


def test_schema_command_prints_the_json_schema():
    result = RUNNER.invoke(main, ["schema"])
    assert result.exit_code == 0
    assert "recipe" in json.loads(result.output)["properties"]


def test_schema_and_validate_without_a_backbone_never_import_tensorflow(tmp_path):
    """The policy language needs pydantic and yaml only: a process that checks a policy stays light."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - freeze: {base: true}\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("version: 1\nrules:\n  - freeze: {bsae: true}\n")
    probe = (
        "import sys; from click.testing import CliRunner; from freeze_trainer.cli.policy_cli import main; "
        "results = [CliRunner().invoke(main, args) for args in (['schema'], ['validate', sys.argv[1]], "
        "['validate', sys.argv[2]])]; "
        "print([r.exit_code for r in results], results[2].output.strip(), "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'tfx')))"
    )
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run([sys.executable, "-c", probe, str(policy), str(typo)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[0, 0, 1] Error: freeze policy: rules[0].freeze.bsae: unknown key []"

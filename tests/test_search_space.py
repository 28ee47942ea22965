"""Search spaces (issue 23): checked up front as a policy is, and listed by `freeze-policy search`, without data."""

import json
import os
import re
import subprocess
import sys

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from freeze_trainer.cli.policy_cli import main
from freeze_trainer.tfx.search_space import (
    DEFAULT_OBJECTIVES,
    OBJECTIVE_METRICS,
    SearchSpaceError,
    parse_search_space,
    plan_combinations,
    search_space_json_schema,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO_ROOT, "kubeflow", "policies", "search_top_block.yaml")
HEAD_THEN_TOP = os.path.join(REPO_ROOT, "kubeflow", "policies", "head_then_top.json")
RUNNER = CliRunner()
# MobileNetV2 at 96 px plans as at 224 (the same layers), faster.
BASE = {"backbone": "MobileNetV2", "backbone_weights": "none", "freeze_policy": open(HEAD_THEN_TOP).read()}
SMALL = ["--backbone", "MobileNetV2", "--image-size", "96"]


def _space(hyperparameters: dict, **fields) -> str:
    return yaml.safe_dump({"version": 1, "hyperparameters": hyperparameters, **fields}, sort_keys=False)


def _refused(text: str, base: dict = BASE) -> str:
    with pytest.raises(SearchSpaceError) as refused:
        parse_search_space(text, base)
    return str(refused.value)


@pytest.fixture(scope="module")
def planning_models():
    """The planning models built so far, shared by the tests that plan the same base."""
    return {}


@pytest.fixture(scope="module")
def example_listing():
    return RUNNER.invoke(main, ["search", EXAMPLE, *SMALL, "--freeze-policy", HEAD_THEN_TOP])


def test_the_example_space_lists_its_trials_each_planned(example_listing):
    assert example_listing.exit_code == 0, example_listing.output
    lines = example_listing.output.splitlines()
    assert lines[1] == "random search, objective val_accuracy (maximised)"
    assert lines[2] == "8 trials drawn from these 12 combinations, each of which plans:"
    combinations = [line for line in lines[3:] if re.match(r" *\d+\. ", line)]  # not a library's warning
    assert len(combinations) == 12
    # The first key varies slowest; each line holds the values a hyperparameters artifact would carry and
    # what the plan trains: more of the base with each wider unfrozen group, more with affine BatchNorm.
    assert combinations[0] == ('   1. policy.phases.1.rules.1.unfreeze={"group":"top"}  policy.phases.1.learning_rate=0.001'
                               "  policy.batchnorm=frozen  (head 12,810 · finetune 422,410 trainable)")
    assert combinations[11].startswith('  12. policy.phases.1.rules.1.unfreeze={"regex":"block_1[56]_.*"}'
                                       "  policy.phases.1.learning_rate=0.0001  policy.batchnorm=affine")
    finetune = [int(line.split("finetune ")[1].split()[0].replace(",", "")) for line in combinations]
    assert finetune[0] < finetune[1] < finetune[4] < finetune[5] < finetune[8] < finetune[9]


def test_a_grid_within_max_trials_runs_every_combination(planning_models):
    space = parse_search_space(_space({"policy.batchnorm": ["frozen", "affine"]}), BASE)
    assert space.is_grid and space.trial_count == space.combination_count == 2
    planned = plan_combinations(space, BASE, (96, 96, 3), models=planning_models)
    assert [values for values, _ in planned] == [{"policy.batchnorm": "frozen"}, {"policy.batchnorm": "affine"}]
    frozen, affine = (plans[1] for _, plans in planned)
    assert affine.trainable_params > frozen.trainable_params  # the unfrozen BatchNorm's gamma and beta


def test_ranges_need_max_trials_and_the_listing_says_what_is_sampled():
    ranged = RUNNER.invoke(main, ["search", *SMALL, "--freeze-policy", HEAD_THEN_TOP, _space(
        {"learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"}, "epochs": {"min": 1, "max": 4}},
        max_trials=5, algorithm="bayesian", objective={"name": "val_loss"})])
    assert ranged.exit_code == 0, ranged.output
    assert "bayesian search, objective val_loss (minimised)" in ranged.output
    assert "learning_rate: sampled log-uniform from 0.0001 to 0.01" in ranged.output
    assert "epochs: sampled integers from 1 to 4" in ranged.output
    assert "5 trials; every combination of these values and the ranges' ends plans (4):" in ranged.output
    assert "  4. learning_rate=0.01  epochs=4  (head 12,810 · finetune 891,850 trainable)" in ranged.output


@pytest.mark.parametrize("name, closest", [
    ("learning_rat", "learning_rate"),
    ("policy.phases.1.learning_rat", "policy.phases.1.learning_rate"),
    ("policy.batchnorn", "policy.batchnorm"),
])
def test_an_unknown_key_is_refused_with_the_closest_name(name, closest):
    assert _refused(_space({name: [0.1]})) == \
        f"search space: hyperparameters.{name}: unknown hyperparameter; closest: {closest}"


def test_a_name_the_trainer_does_not_know_is_refused_though_an_artifact_would_pass_it_to_the_user_model():
    assert "hyperparameters.units: unknown hyperparameter; a search varies a trainer parameter or a policy field" \
        in _refused(_space({"units": [8, 16]}))


@pytest.mark.parametrize("hyperparameters, message", [
    ({"learning_rate": [0.1, 20.0]},
     "hyperparameters.learning_rate: value 20: Input should be less than or equal to 10"),
    ({"policy.phases.1.learning_rate": [1.0e-3, 0.0]},
     "hyperparameters.policy.phases.1.learning_rate: value 0: Input should be greater than or equal to 0.00000001"),
    ({"policy.batchnorm": ["frozen", "moving"]},
     "hyperparameters.policy.batchnorm: value moving: Input should be 'frozen', 'affine' or 'train'"),
    ({"dropout": {"min": 0.0, "max": 1.0}},  # a range's ends are checked
     "hyperparameters.dropout: value 1: must be in [0, 1)"),
    ({"freeze_policy": [{"version": 1, "rules": [{"freeze": {"base": True}}]}]},
     'hyperparameters.freeze_policy: value {"version":1,"rules":[{"freeze":{"base":true}}]}: a policy\'s JSON or YAML'),
    ({"freeze_policy": ["version: 1\nrules: [{freeze: {base: false}}]"]},
     'hyperparameters.freeze_policy: value "version: 1\\nrules: [{freeze: {base: false}}]":'
     " rules[0].freeze.base: Input should be True"),
    ({"policy.phases.1.rules.1.unfreeze": [{"group": "block_16", "regex": "block_15_.*"}]},
     'hyperparameters.policy.phases.1.rules.1.unfreeze: value {"group":"block_16","regex":"block_15_.*"}: a selector'
     " sets exactly one of"),
])
def test_a_value_out_of_bounds_is_refused_naming_key_and_value(hyperparameters, message):
    assert message in _refused(_space(hyperparameters, max_trials=4))


def test_a_compile_time_parameter_may_not_be_searched():
    refused = _refused(_space({"backbone": ["ResNet50", "MobileNetV2"]}))
    assert refused.startswith("search space: hyperparameters.backbone: a compile-time parameter")
    searchable = refused.split("per-run parameters: ")[1].split(", ")
    assert "learning_rate" in searchable and "backbone" not in searchable and "task" not in searchable


@pytest.mark.parametrize("document, message", [
    (_space({"learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"}}),
     "max_trials: needed when a hyperparameter is a range (learning_rate)"),
    (_space({"learning_rate": {"min": 1e-2, "max": 1e-4}}, max_trials=3), "hyperparameters.learning_rate: a range needs"),
    (_space({"learning_rate": 0.1}), "hyperparameters.learning_rate: a list of values, or a range {min, max, sampling}"),
    (_space({"learning_rate": []}), "hyperparameters.learning_rate: List should have at least 1 item"),
    (_space({"learning_rate": [0.1]}, objective="val_acc"), "objective: unknown metric 'val_acc'; closest: val_auc"),
    (_space({"learning_rate": [0.1]}, algorithm="grid"), "algorithm: Input should be 'random', 'bayesian' or 'hyperband'"),
    (_space({"learning_rate": [0.1]}, trials=3), "trials: unknown key"),
    ("hyperparameters: {learning_rate: [0.1]}", "version: Field required"),
])
def test_the_document_itself_is_checked(document, message):
    assert f"search space: {message}" in _refused(document)


def test_repeated_keys_are_refused_in_yaml_and_json():
    yaml_text = "version: 1\nhyperparameters:\n  epochs: [1, 2]\n  epochs: [3]\n"
    assert _refused(yaml_text) == "search space: epochs: repeated at line 4; a key appears once"
    json_text = '{"version": 1, "hyperparameters": {"epochs": [1, 2], "epochs": [3]}}'
    assert _refused(json_text) == "search space: epochs: repeated; a key appears once"


def test_a_selector_that_matches_nothing_is_named_before_any_trial(planning_models):
    alone = parse_search_space(_space({"policy.phases.1.rules.1.unfreeze.group": ["block_16", "block_99"]}), BASE)
    with pytest.raises(SearchSpaceError, match=r"^search space: hyperparameters.policy.phases.1.rules.1.unfreeze.group:"
                                               r" value block_99: group 'block_99' does not exist for this"
                                               r" backbone; its groups are stem, block_1, "):
        plan_combinations(alone, BASE, (96, 96, 3), models=planning_models)
    # Each value plans alone; together, two auto groups have no auto_3.
    together = parse_search_space(_space({"policy.auto_groups": [4, 2],
                                          "policy.phases.1.rules.1.unfreeze": [{"group": "auto_3"}]}), BASE)
    with pytest.raises(SearchSpaceError, match=r"^search space: hyperparameters: combination 2 \(policy.auto_groups=2 "
                                               r" policy.phases.1.rules.1.unfreeze=\{\"group\":\"auto_3\"\}\):"
                                               r" phases\[1\].rules\[1\].unfreeze.group: group 'auto_3' does not exist"):
        plan_combinations(together, BASE, (96, 96, 3), models=planning_models)


def test_a_bad_space_is_one_line_and_exit_2_before_any_model_is_built(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(_space({"policy.phases.1.learning_rate": [1.0e-3, 20.0]}))
    result = RUNNER.invoke(main, ["search", str(space), *SMALL, "--freeze-policy", HEAD_THEN_TOP])
    assert result.exit_code == 2
    assert result.output == ("Error: search space: hyperparameters.policy.phases.1.learning_rate: value 20:"
                             " Input should be less than or equal to 10\n")
    missing = RUNNER.invoke(main, ["search", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "search space: file" in missing.output and "does not exist" in missing.output


def test_the_schema_is_published_valid_and_describes_the_example():
    result = RUNNER.invoke(main, ["schema", "--search"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema == search_space_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert {"version", "hyperparameters", "max_trials", "objective", "algorithm"} == set(schema["properties"])
    with open(EXAMPLE) as f:
        jsonschema.validate(yaml.safe_load(f), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": 1, "hyperparameters": {"epochs": {"min": 1}}}, schema)
    # The policy's own schema stays what `freeze-policy schema` prints.
    assert "phases" in json.loads(RUNNER.invoke(main, ["schema"]).output)["properties"]


def test_parsing_a_space_and_its_schema_never_import_tensorflow():
    code = ("import sys; from freeze_trainer.tfx.search_space import parse_search_space, search_space_json_schema;"
            "search_space_json_schema(); space = parse_search_space(open(sys.argv[1]).read(),"
            " {'freeze_policy': open(sys.argv[2]).read()}); print(space.trial_count, 'tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, EXAMPLE, HEAD_THEN_TOP], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["8", "False"]


def test_the_objectives_are_the_metrics_the_tasks_record():
    from freeze_trainer.keras.models.tasks import Task

    recorded = {"loss"} | {metric.name for task in DEFAULT_OBJECTIVES for metric in Task(task).metrics()}
    assert recorded == set(OBJECTIVE_METRICS)
    assert all(objective.removeprefix("val_") in {"loss", *(m.name for m in Task(task).metrics())}
               for task, objective in DEFAULT_OBJECTIVES.items())

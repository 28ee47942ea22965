"""Parsing and schema validation of freeze policies (no model needed)."""

import json

import pytest

from freeze_trainer.policy.freeze_policy import (
    FROZEN_BASE_POLICY,
    PolicyError,
    parse_policy,
    policy_json_schema,
)

TOP_N = {"version": 1, "rules": [{"freeze": {"base": True}}, {"unfreeze": {"top": 10}}]}


def test_json_and_yaml_give_the_same_policy():
    yaml_text = """
version: 1
rules:
  - freeze: {base: true}
  - unfreeze: {top: 10}
"""
    assert parse_policy(json.dumps(TOP_N)) == parse_policy(yaml_text)


def test_single_rules_list_is_one_phase_named_train():
    phases = parse_policy(json.dumps(TOP_N)).resolved_phases()
    assert [phase.name for phase in phases] == ["train"]
    assert [rule.trainable for rule in phases[0].rules] == [False, True]


def test_canonical_json_round_trips_and_hash_is_stable():
    policy = parse_policy(json.dumps(TOP_N))
    assert parse_policy(policy.canonical_json()) == policy
    assert policy.sha256() == parse_policy(json.dumps(TOP_N, indent=4)).sha256()
    assert policy.sha256() != FROZEN_BASE_POLICY.sha256()


@pytest.mark.parametrize(
    "text, key, reason",
    [
        ('{"version": 1, "rules": [', "", "malformed JSON"),
        ("version: 1\nrules: [\n", "", "malformed or unsafe YAML"),
        ("!!python/object/apply:os.system ['echo hacked']", "", "unsafe YAML"),
        ('{"version": 2, "rules": [{"freeze": {"base": true}}]}', "version", "Input should be 1"),
        ('{"version": 1, "rules": [{"freeze": {"base": true}}], "colour": 1}', "colour", "unknown key"),
        ('{"version": 1, "rules": [{"freeze": {"bse": true}}]}', "rules[0].freeze.bse", "unknown key"),
        ('{"version": 1, "rules": [{"freeze": {"top": -3}}]}', "rules[0].freeze.top", "greater than 0"),
        ('{"version": 1, "rules": [{"freeze": {"top": "3"}}]}', "rules[0].freeze.top", "valid integer"),
        ('{"version": 1, "rules": [{"freeze": {"top": 3, "regex": "x"}}]}', "rules[0].freeze", "exactly one"),
        ('{"version": 1, "rules": [{"freeze": {"base": true}, "unfreeze": {"top": 1}}]}', "rules[0]", "either"),
        ('{"version": 1}', "", "exactly one of `rules`"),
        ('{"version": 1, "rules": []}', "rules", "at least 1"),
        ('{"version": 1, "batchnorm": "sometimes", "rules": [{"freeze": {"base": true}}]}', "batchnorm", "frozen"),
        ("[1, 2]", "", "must be a mapping"),
        ("", "", "empty"),
    ],
)
def test_bad_policies_give_one_error_naming_key_and_reason(text, key, reason):
    with pytest.raises(PolicyError) as raised:
        parse_policy(text)
    assert raised.value.key == key
    assert reason in str(raised.value)


def test_duplicate_phase_names_are_rejected():
    policy = {
        "version": 1,
        "phases": [
            {"name": "a", "rules": [{"freeze": {"base": True}}]},
            {"name": "a", "rules": [{"freeze": {"base": True}}]},
        ],
    }
    with pytest.raises(PolicyError, match="used twice"):
        parse_policy(json.dumps(policy))


def test_schema_is_published_and_strict():
    schema = policy_json_schema()
    assert schema["additionalProperties"] is False
    assert {"version", "rules", "phases", "batchnorm"} <= set(schema["properties"])

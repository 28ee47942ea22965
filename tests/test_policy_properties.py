"""Property tests: random policies never crash the validator with anything but PolicyError, and every
policy it accepts plans and applies cleanly."""

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freeze_trainer.keras.planning.freeze_plan import apply_plan, plan_policy, policy_layers
from freeze_trainer.policy.freeze_policy import PolicyError, parse_policy
from tests.model_builders import tiny_classifier

LAYER_NAMES = ["conv_a", "bn", "conv_b", "head_pool", "head_dropout", "head_classifier", "conv_c", "block_1"]
ANY_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=True), st.text(max_size=6))

selectors = st.one_of(
    st.fixed_dictionaries({"base": st.sampled_from([True, False, 1])}),
    st.fixed_dictionaries({"names": st.lists(st.sampled_from(LAYER_NAMES), max_size=3)}),
    st.fixed_dictionaries({"glob": st.sampled_from(["conv_*", "*", "head_*", "x*", "[", "bn"])}),
    st.fixed_dictionaries({"regex": st.sampled_from(["conv_.", ".*", "(", "head_.*", "b.", "zz"])}),
    st.fixed_dictionaries({"top": st.integers(-2, 6)}),
    st.fixed_dictionaries({"top_fraction": st.floats(-0.5, 1.5)}),
    st.fixed_dictionaries({"bottom_fraction": st.floats(-0.5, 1.5)}),
    st.fixed_dictionaries({"indices": st.sampled_from(["0:1", "-1:", ":", "2:1", "a:b", "5:9", "-2:-1"])}),
    st.fixed_dictionaries({"layer_class": st.sampled_from(["Conv2D", "Dense", "BatchNormalization", "LSTM"])}),
    st.fixed_dictionaries({"group": st.sampled_from(["stem", "head", "auto_0", "auto_1", "auto_7", "block_3"])}),
    st.dictionaries(st.sampled_from(["base", "top", "glob", "colour"]), ANY_SCALAR, max_size=2),
)
rules = st.lists(
    st.one_of(
        st.fixed_dictionaries({"freeze": selectors}),
        st.fixed_dictionaries({"unfreeze": selectors}),
        st.dictionaries(st.sampled_from(["freeze", "unfreeze", "thaw"]), selectors, max_size=2),
    ),
    max_size=4,
)
lr_rules = st.lists(
    st.fixed_dictionaries({"select": selectors}, optional={"lr": ANY_SCALAR, "multiplier": ANY_SCALAR}), max_size=2
)
decay = st.fixed_dictionaries(
    {"factor": st.floats(0.5, 4.0)}, optional={"per": st.sampled_from(["group", "layer", "block"]),
                                               "floor": st.floats(-1e-3, 1e-2)}
)
phases = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["a", "b", "c", ""]), "rules": rules},
        optional={"epochs": st.integers(-1, 3), "steps": st.integers(-1, 3), "learning_rate": ANY_SCALAR,
                  "lr_rules": lr_rules, "lr_decay": decay},
    ),
    max_size=3,
)
recipes = st.one_of(
    st.fixed_dictionaries({"gradual": st.fixed_dictionaries({}, optional={"factor": st.floats(0.5, 4.0),
                                                                          "epochs_per_group": st.integers(0, 2)})}),
    st.fixed_dictionaries({"head_then_top": st.fixed_dictionaries(
        {"head_epochs": st.integers(0, 2), "finetune_epochs": st.integers(0, 2),
         "finetune_learning_rate": st.floats(-1e-3, 1e-2)},
        optional={"top_layers": st.integers(0, 5), "top_fraction": st.floats(0, 1.2)})}),
    st.fixed_dictionaries({"backbone_at_epoch": st.fixed_dictionaries(
        {"unfreeze_at_epoch": st.integers(0, 3), "epochs": st.integers(0, 5)},
        optional={"initial_ratio": st.floats(0, 1.5), "growth": st.floats(0.5, 3)})}),
)
policies = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 1, 1, 2, "1"])},
    optional={"batchnorm": st.sampled_from(["frozen", "affine", "train", "off"]), "auto_groups": st.integers(0, 5),
              "rules": rules, "phases": phases, "recipe": recipes, "extra": ANY_SCALAR},
)


# Well-formed documents, so that many reach planning and application rather than the schema.
good_selectors = st.one_of(
    st.just({"base": True}),
    st.fixed_dictionaries({"names": st.lists(st.sampled_from(LAYER_NAMES[:6]), min_size=1, max_size=2)}),
    st.fixed_dictionaries({"glob": st.sampled_from(["conv_*", "b*", "head_c*"])}),
    st.fixed_dictionaries({"top": st.integers(1, 3)}),
    st.fixed_dictionaries({"top_fraction": st.floats(0.1, 1.0)}),
    st.fixed_dictionaries({"bottom_fraction": st.floats(0.1, 1.0)}),
    st.fixed_dictionaries({"indices": st.sampled_from(["0:1", "-1:", ":", "1:"])}),
    st.fixed_dictionaries({"layer_class": st.sampled_from(["Conv2D", "BatchNormalization"])}),
    st.fixed_dictionaries({"group": st.sampled_from(["stem", "auto_0", "auto_1"])}),
)
good_rules = st.lists(
    st.one_of(st.fixed_dictionaries({"freeze": good_selectors}), st.fixed_dictionaries({"unfreeze": good_selectors})),
    min_size=1, max_size=4,
)
good_phases = st.lists(
    st.fixed_dictionaries(
        {"name": st.uuids().map(str), "rules": good_rules},
        optional={"epochs": st.integers(1, 3), "learning_rate": st.floats(1e-5, 1e-1),
                  "lr_decay": st.fixed_dictionaries({"factor": st.floats(1.1, 4.0)},
                                                    optional={"per": st.sampled_from(["group", "layer"]),
                                                              "floor": st.floats(1e-6, 1e-3)}),
                  "lr_rules": st.lists(st.fixed_dictionaries({"select": good_selectors, "multiplier": st.floats(0.1, 2)}),
                                       max_size=2)},
    ),
    min_size=1, max_size=3,
)
good_policies = st.fixed_dictionaries(
    {"version": st.just(1)},
    optional={"batchnorm": st.sampled_from(["frozen", "affine", "train"]), "auto_groups": st.integers(1, 5)},
).flatmap(lambda head: st.one_of(
    st.fixed_dictionaries({"rules": good_rules}), st.fixed_dictionaries({"phases": good_phases}),
    st.fixed_dictionaries({"recipe": recipes}),
).map(lambda body: {**head, **body}))


@pytest.fixture(scope="module")
def model():
    return tiny_classifier()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=st.one_of(policies, good_policies))
def test_validator_raises_only_policy_errors_and_accepted_policies_apply(model, policy):
    try:
        parsed = parse_policy(json.dumps(policy))
        plans = plan_policy(parsed, model)
    except PolicyError as err:
        assert str(err).startswith("freeze policy: ")
        return
    backbone, head = policy_layers(model)
    for plan in plans:
        apply_plan(model, plan)
        assert all(layer.trainable for layer in head)
        assert plan.trainable_params == sum(v.shape.num_elements() for v in model.trainable_variables) > 0
        assert {layer.name for layer in backbone + head if layer.trainable} >= {
            state.name for state in plan.layers if state.trainable
        }


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=80))
def test_arbitrary_text_is_a_policy_error_or_a_policy(text):
    try:
        parse_policy(text)
    except PolicyError:
        pass


# Hostile documents: YAML alias chains, deep nesting, non-finite numbers, path-like strings.
def _alias_chain(width: int, levels: int) -> str:
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


hostile_documents = st.one_of(
    st.builds(_alias_chain, st.integers(2, 12), st.integers(2, 12)),
    st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 5000).map(lambda depth: "a:\n" + "".join("  " * i + "b:\n" for i in range(1, min(depth, 400)))),
    st.sampled_from([".inf", "-.inf", ".nan", "1e-300", "1e309"]).map(
        lambda value: f"version: 1\nphases:\n  - name: p\n    learning_rate: {value}\n    rules: [{{freeze: {{base: true}}}}]\n"),
    st.sampled_from(["Infinity", "-Infinity", "NaN", "1e-300"]).map(
        lambda value: '{"version": 1, "rules": [{"freeze": {"base": true}}], "phases": null, "x": ' + value + "}"),
    st.text(alphabet="/._-abc:", min_size=1, max_size=40),
)


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_documents)
def test_hostile_documents_fail_fast_with_a_policy_error(text):
    try:
        policy = parse_policy(text)
    except PolicyError as err:
        assert str(err).startswith("freeze policy:") and "\n" not in str(err)[:200]
    else:  # an accepted policy never carries a rate the trainer cannot use
        for phase in policy.resolved_phases():
            assert phase.learning_rate is None or 1e-8 <= phase.learning_rate <= 10


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="abcxyz_-.", min_size=1, max_size=12), st.sampled_from(["/", "./", "/nonexistent/"]),
       st.sampled_from(["", ".json", ".yaml", ".yml"]))
def test_a_path_that_is_not_a_file_is_never_read_as_an_inline_policy(name, prefix, suffix):
    from freeze_trainer.policy import read_policy_source

    value = prefix + name + suffix
    with pytest.raises(PolicyError, match=r"^freeze policy: policy file .* (does not exist|is a directory|is not a regular file)$"):
        read_policy_source(value)


# Duplicate keys: a well-formed policy written with one mapping's key twice, as JSON or as YAML (JSON text
# behind a comment line goes through the YAML loader), is refused naming that key, never half-read.
def _dump_with_repeated_key(value, target: int, counter: list[int]) -> str:
    """JSON text of `value` in which the `target`-th mapping (depth first, modulo their count) repeats its
    first key."""
    if isinstance(value, dict):
        index = counter[0]
        counter[0] += 1
        items = [f"{json.dumps(key)}: {_dump_with_repeated_key(child, target, counter)}" for key, child in value.items()]
        if index == target and value:
            first_key, first = next(iter(value.items()))
            items.append(f"{json.dumps(first_key)}: {json.dumps(first)}")
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dump_with_repeated_key(child, target, counter) for child in value) + "]"
    return json.dumps(value)


def _mappings(value) -> list[dict]:
    if isinstance(value, dict):
        return [value, *(m for child in value.values() for m in _mappings(child))]
    return [m for child in value for m in _mappings(child)] if isinstance(value, list) else []


@settings(max_examples=150, deadline=1000)
@given(policy=good_policies, target=st.integers(0, 50), as_yaml=st.booleans())
def test_a_repeated_key_anywhere_in_a_json_or_yaml_policy_is_refused_naming_it(policy, target, as_yaml):
    mappings = [m for m in _mappings(policy) if m]
    target %= len(mappings)
    text = _dump_with_repeated_key(policy, target, [0])
    if as_yaml:
        text = "# YAML\n" + text
    with pytest.raises(PolicyError) as raised:
        parse_policy(text)
    assert raised.value.key == str(next(iter(mappings[target]))) and "repeated" in raised.value.reason


# Regex selectors from pieces that include nested quantifiers and alternations: each is refused at validation
# or plans, and either way within the example's time budget; an accepted one also matches in linear-ish time
# a long name built to make a backtracking matcher fail slowly.
REGEX_PIECES = ["a", "_", "conv", r"\w", r"\d", ".", "[a-z]", "(", ")", "(?:", "*", "+", "?", "{2,}", "{1,3}", "|", "z"]


@settings(max_examples=300, deadline=1500, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(REGEX_PIECES), min_size=1, max_size=14))
def test_regex_selectors_are_refused_or_match_fast(model, pieces):
    import re

    pattern = "".join(pieces)
    try:
        policy = parse_policy(json.dumps({"version": 1, "rules": [{"freeze": {"regex": pattern}}]}))
    except PolicyError as err:
        assert err.key == "rules[0].freeze.regex" and "\n" not in str(err)
        return
    adversarial = "conv_" + "a1_" * 30 + "!"  # fails at its last character after every split of the rest
    started = time.monotonic()
    re.fullmatch(pattern, adversarial)
    assert time.monotonic() - started < 0.5
    try:
        plan_policy(policy, model)
    except PolicyError as err:  # the regex matches no layer, freezes the head or every layer
        assert str(err).startswith("freeze policy: rules")

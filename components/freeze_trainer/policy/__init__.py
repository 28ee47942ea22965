"""The freeze-policy language: typed models, recipes, parsing and the JSON Schema. No TensorFlow."""

from freeze_trainer.policy.freeze_policy import (
    FROZEN_BASE_POLICY,
    FreezePolicy,
    Phase,
    PolicyError,
    Selector,
    parse_policy,
    policy_from_dict,
    policy_json_schema,
    read_policy_source,
)

__all__ = [
    "FROZEN_BASE_POLICY",
    "FreezePolicy",
    "Phase",
    "PolicyError",
    "Selector",
    "parse_policy",
    "policy_from_dict",
    "policy_json_schema",
    "read_policy_source",
]

"""The freeze policy: a versioned, validated description of what trains and what stays frozen.

A policy is data. It is parsed from JSON or YAML into typed pydantic models that reject unknown
keys, so a typo fails at parse time rather than silently training the wrong layers. Resolving the
selectors against a concrete model happens in `freeze_plan.py`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

POLICY_VERSION = 1


class PolicyError(ValueError):
    """An invalid freeze policy. `key` is the dotted path of the offending entry."""

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"freeze policy: {key}: {reason}" if key else f"freeze policy: {reason}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Selector(_Strict):
    """Chooses layers of the model. Exactly one field is set."""

    base: Literal[True] | None = Field(None, description="Every layer of the pretrained backbone.")
    names: list[str] | None = Field(None, min_length=1, description="Exact layer names.")
    glob: str | None = Field(None, description="A shell-style pattern over layer names.")
    regex: str | None = Field(None, description="A regular expression matched against the whole layer name.")
    top: PositiveInt | None = Field(None, description="The last N layers of the backbone.")
    bottom_fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="The first fraction of the backbone's layers, e.g. 0.8."
    )
    layer_class: str | None = Field(None, description="Layers of this Keras class, e.g. BatchNormalization.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Selector:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            options = ", ".join(type(self).model_fields)
            raise ValueError(f"a selector sets exactly one of {options}; got {chosen or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)


class Rule(_Strict):
    """`{"freeze": <selector>}` or `{"unfreeze": <selector>}`; later rules override earlier ones."""

    freeze: Selector | None = None
    unfreeze: Selector | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Rule:
        if (self.freeze is None) == (self.unfreeze is None):
            raise ValueError('a rule is either {"freeze": selector} or {"unfreeze": selector}')
        return self

    @property
    def trainable(self) -> bool:
        return self.unfreeze is not None

    @property
    def selector(self) -> Selector:
        return self.unfreeze if self.unfreeze is not None else self.freeze  # type: ignore[return-value]


class Phase(_Strict):
    """A stretch of training with one freeze state. Each phase starts from an all-trainable model."""

    name: str = Field(..., min_length=1)
    epochs: PositiveInt | None = Field(None, description="Defaults to the trainer's `epochs` parameter.")
    learning_rate: PositiveFloat | None = Field(None, description="Defaults to the trainer's learning rate.")
    rules: list[Rule] = Field(..., min_length=1)


class FreezePolicy(_Strict):
    """The whole policy. `rules` is shorthand for a single phase named `train`."""

    version: Literal[1]
    batchnorm: Literal["frozen", "affine", "train"] = Field(
        "frozen",
        description=(
            "How BatchNorm layers that the rules leave trainable behave: `frozen` keeps them in inference"
            " mode with fixed statistics and affine weights; `affine` trains gamma/beta on fixed"
            " statistics; `train` updates everything. BatchNorm inside frozen layers never changes."
        ),
    )
    rules: list[Rule] | None = Field(None, min_length=1)
    phases: list[Phase] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _rules_or_phases(self) -> FreezePolicy:
        if (self.rules is None) == (self.phases is None):
            raise ValueError("a policy sets exactly one of `rules` (a single phase) or `phases`")
        if self.phases is not None:
            seen: set[str] = set()
            for phase in self.phases:
                if phase.name in seen:
                    raise ValueError(f"phase name {phase.name!r} is used twice")
                seen.add(phase.name)
        return self

    def resolved_phases(self) -> list[Phase]:
        if self.phases is not None:
            return list(self.phases)
        return [Phase(name="train", rules=self.rules)]  # type: ignore[arg-type]

    @property
    def bn_runs_in_inference_mode(self) -> bool:
        return self.batchnorm != "train"

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


FROZEN_BASE_POLICY = FreezePolicy(version=1, rules=[Rule(freeze=Selector(base=True))])


def _error_key(loc: tuple) -> str:
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif part.startswith("function-") or part in {"str", "int", "bool", "float"}:
            continue  # pydantic's internal validator names say nothing to a policy author
        else:
            key += f".{part}" if key else part
    return key


def parse_policy(text: str) -> FreezePolicy:
    """Parses a policy from JSON or YAML text. Raises PolicyError, and only PolicyError."""
    if not isinstance(text, str) or not text.strip():
        raise PolicyError("", "the policy is empty")
    try:
        # JSON is YAML, but JSON's own parser gives better positions for JSON's errors.
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise PolicyError("", f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except yaml.YAMLError as err:
        raise PolicyError("", f"malformed or unsafe YAML: {err}") from None
    return policy_from_dict(data)


def policy_from_dict(data: object) -> FreezePolicy:
    if not isinstance(data, dict):
        raise PolicyError("", f"the policy must be a mapping, got {type(data).__name__}")
    try:
        return FreezePolicy.model_validate(data)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        reason = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            reason = "unknown key"
        raise PolicyError(_error_key(first["loc"]), reason) from None


def policy_json_schema() -> dict:
    """The published JSON Schema of the policy."""
    return FreezePolicy.model_json_schema()

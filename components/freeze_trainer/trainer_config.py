"""The trainer's typed configuration, assembled from the component's execution parameters."""

from __future__ import annotations

import pydantic
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator

from components.freeze_trainer.backbones import BACKBONES
from components.freeze_trainer.freeze_policy import FreezePolicy, parse_policy

CUSTOM_CONFIG_KEY = "freeze_trainer"


class ConfigError(ValueError):
    """A bad trainer parameter other than the policy; `key` names the parameter."""

    def __init__(self, key: str, reason: str):
        self.key = key
        super().__init__(f"{key}: {reason}")


class TrainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    freeze_policy: FreezePolicy
    backbone: str = "MobileNetV2"
    backbone_weights: str = Field("imagenet", description="`imagenet`, `none`, a weights file or a `.keras` backbone")
    backbone_alpha: PositiveFloat = 1.0
    epochs: PositiveInt = 5
    learning_rate: PositiveFloat = 1e-3
    batch_size: PositiveInt = 32
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = 0
    training_loop: Literal["fit", "gradient_tape"] = "fit"
    distribution: Literal["auto", "one_device", "mirrored", "multi_worker"] = "auto"
    mixed_precision: Literal["none", "mixed_float16", "mixed_bfloat16"] = "none"
    jit_compile: bool = Field(False, description="XLA-compile the training step.")
    feature_cache: Literal["auto", "off"] = Field(
        "auto", description="`auto` trains the head on cached base features in phases whose whole base is frozen."
    )
    feature_cache_memory_mb: PositiveInt = Field(1024, description="Cached features beyond this go to disk.")
    checkpoint_every_steps: PositiveInt | None = Field(
        None, description="Save a training checkpoint every N steps of a phase; unset: at every epoch's end."
    )

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
        return name

    @field_validator("freeze_policy", mode="before")
    @classmethod
    def _parse_policy_text(cls, value):
        return parse_policy(value) if isinstance(value, str) else value

    @classmethod
    def from_parameters(cls, **values) -> TrainerConfig:
        """Validates pipeline parameters; `None` means the default. The policy is parsed first so that
        its errors surface as PolicyError with the policy's own key path."""
        values = {key: value for key, value in values.items() if value is not None}
        if isinstance(values.get("freeze_policy"), str):
            values["freeze_policy"] = parse_policy(values["freeze_policy"])
        try:
            return cls.model_validate(values)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            raise ConfigError(".".join(map(str, first["loc"])), first["msg"].removeprefix("Value error, ")) from None

    def to_custom_config(self) -> dict:
        return {CUSTOM_CONFIG_KEY: self.model_dump(mode="json", exclude_none=True)}

    @classmethod
    def from_custom_config(cls, custom_config: dict | None) -> TrainerConfig:
        return cls.model_validate((custom_config or {})[CUSTOM_CONFIG_KEY])

"""`freeze-policy`: check and explain a freeze policy without training or reading data.

    freeze-policy validate policy.yaml --backbone MobileNetV2
    freeze-policy plan policy.yaml --backbone ResNet50 --image-size 224
    freeze-policy schema > freeze_policy.schema.json
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow is first imported

import json  # noqa: E402

import click  # noqa: E402

from components.freeze_trainer.backbones import BackboneError  # noqa: E402
from components.freeze_trainer.freeze_plan import PhasePlan, plan_for_config  # noqa: E402
from components.freeze_trainer.freeze_policy import PolicyError, policy_json_schema, read_policy_source  # noqa: E402
from components.freeze_trainer.plan_report import format_plan, phase_summary  # noqa: E402
from components.freeze_trainer.trainer_config import ConfigError, TrainerConfig  # noqa: E402


def plan_policy_text(
    policy: str, backbone: str, backbone_weights: str, alpha: float | None, image_size: int, num_classes: int,
    learning_rate: float, epochs: int,
) -> list[PhasePlan]:
    """Validates everything a trainer would check before reading data; raises its errors."""
    config = TrainerConfig.from_parameters(
        freeze_policy=read_policy_source(policy), backbone=backbone, backbone_weights=backbone_weights,
        backbone_alpha=alpha, learning_rate=learning_rate, epochs=epochs,
    )
    return plan_for_config(config, (image_size, image_size, 3), num_classes)


_model_options = [
    click.argument("policy"),
    click.option("--backbone", default="MobileNetV2", show_default=True),
    click.option("--backbone-weights", default="none", show_default=True,
                 help="`none` plans on the architecture alone; a `.keras` backbone plans on its own layers."),
    click.option("--alpha", type=float, default=None, help="Width multiplier of MobileNet backbones."),
    click.option("--image-size", type=int, default=224, show_default=True),
    click.option("--num-classes", type=int, default=10, show_default=True),
    click.option("--learning-rate", type=float, default=1e-3, show_default=True, help="The trainer's default rate."),
    click.option("--epochs", type=int, default=5, show_default=True, help="The trainer's default phase length."),
]


def model_options(command):
    for option in reversed(_model_options):
        command = option(command)
    return command


def _plans_or_exit(**kwargs) -> list[PhasePlan]:
    try:
        return plan_policy_text(**kwargs)
    except (PolicyError, ConfigError, BackboneError) as err:
        raise click.ClickException(str(err)) from None


@click.group()
def main() -> None:
    """Check and explain freeze policies."""


@main.command()
@model_options
def plan(**kwargs) -> None:
    """Print every phase: each layer's group, state, BatchNorm mode, learning rate and parameters."""
    click.echo("\n".join(format_plan(_plans_or_exit(**kwargs))))


@main.command()
@model_options
def validate(**kwargs) -> None:
    """Exit non-zero, naming the key and the reason, if the policy would not train."""
    plans = _plans_or_exit(**kwargs)
    click.echo(f"valid: {len(plans)} phase(s)")
    for number, phase_plan in enumerate(plans, start=1):
        click.echo("  " + phase_summary(number, len(plans), phase_plan))


@main.command()
def schema() -> None:
    """Print the policy's JSON Schema."""
    click.echo(json.dumps(policy_json_schema(), indent=2))


if __name__ == "__main__":
    main()

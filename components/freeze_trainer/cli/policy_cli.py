"""`freeze-policy`: check and explain a freeze policy without training or reading data.

    freeze-policy validate policy.yaml --backbone MobileNetV2
    freeze-policy plan policy.yaml --backbone ResNet50 --image-size 224 [--layers] [--format json] [--picture plan.png]
    freeze-policy schema [--search] > freeze_policy.schema.json
    freeze-policy search space.yaml --backbone MobileNetV2 --freeze-policy base.json
"""

from __future__ import annotations

import functools
import json

import click

import freeze_trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is first imported)
from freeze_trainer.cli.terminal import QuietGroup, echo_error
from freeze_trainer.policy import PolicyError, parse_policy, policy_json_schema, read_policy_source
from freeze_trainer.tfx.trainer_config import TrainerConfig


def plan_policy_text(
    policy: str, backbone: str, backbone_weights: str, alpha: float | None, image_size: int, num_classes: int,
    learning_rate: float, epochs: int,
) -> tuple:
    """Validates everything a trainer would check before reading data; raises its errors. Returns the phase
    schedule (with the trainer's default `feature_cache: auto`: where each phase cuts, or why it does not
    cache) and the planned model's input shapes. Builds the backbone, so TensorFlow is imported here and
    only here."""
    from freeze_trainer.keras.planning.freeze_plan import plan_policy
    from freeze_trainer.keras.planning.phase_schedule import build_schedule
    from freeze_trainer.keras.planning.plan_report import input_shapes
    from freeze_trainer.tfx.trainer_model import planning_model

    config = TrainerConfig.from_parameters(
        freeze_policy=read_policy_source(policy), backbone=backbone, backbone_weights=backbone_weights,
        backbone_alpha=alpha, learning_rate=learning_rate, epochs=epochs,
    )
    model = planning_model(config, (image_size, image_size, 3), num_classes)
    plans = plan_policy(config.freeze_policy, model, config.learning_rate, config.epochs)
    return build_schedule(plans, model=model), input_shapes(model)


_DEFAULTS = TrainerConfig()  # the trainer's defaults, the runner's too

_model_options = [
    click.argument("policy"),
    click.option("--backbone", default=None, help="The keras.applications architecture; plan's default: MobileNetV2."),
    click.option("--backbone-weights", default="none", show_default=True,
                 help="`none` plans on the architecture alone; a `.keras` backbone plans on its own layers."),
    click.option("--alpha", type=float, default=None, help="Width multiplier of MobileNet backbones."),
    click.option("--image-size", type=int, default=224, show_default=True),
    # A plan's head is a multiclass one: fewer than two classes is no classifier (0 made a head of 0 weights).
    click.option("--num-classes", type=click.IntRange(min=2), default=10, show_default=True,
                 help="Classes of the planned head (2 or more)."),
    click.option("--learning-rate", type=float, default=_DEFAULTS.learning_rate, show_default=True,
                 help="The trainer's default rate."),
    click.option("--epochs", type=int, default=_DEFAULTS.epochs, show_default=True,
                 help="The trainer's default phase length."),
]


def model_options(command, policy_argument: bool = True):
    """The options of a command that plans on a model; `policy_argument=False` leaves out the POLICY argument."""
    for option in reversed(_model_options if policy_argument else _model_options[1:]):
        command = option(command)
    return command


def _schedule_or_exit(**kwargs) -> tuple:
    from freeze_trainer.tfx.trainer_model import USER_ERRORS

    try:
        return plan_policy_text(**kwargs)
    except USER_ERRORS as err:
        raise click.ClickException(str(err)) from None


@click.group(cls=QuietGroup)
def main() -> None:
    """Check and explain freeze policies."""


def _planned(kwargs: dict, inputs: dict[str, list[int | None]]) -> dict:
    """What was planned and the defaults a phase takes when it sets no rate or length (the trainer's unless
    given): the text's first line, the JSON's top-level keys. A base of the user's own (`custom`) takes its
    own inputs, whatever the image size."""
    custom = kwargs["backbone"] == "custom"
    return {
        "backbone": kwargs["backbone"],
        "backbone_weights": kwargs["backbone_weights"],
        "alpha": kwargs["alpha"],
        "image_size": None if custom else kwargs["image_size"],
        "inputs": inputs,
        "num_classes": kwargs["num_classes"],
        "defaults": {"learning_rate": kwargs["learning_rate"], "epochs": kwargs["epochs"]},
    }


def _planned_line(planned: dict) -> str:
    from freeze_trainer.keras.planning.plan_report import format_inputs, format_lr

    model = planned["backbone"] + (f" alpha {planned['alpha']:g}" if planned["alpha"] is not None else "")
    weights = "" if planned["backbone_weights"] == "none" else f" ({planned['backbone_weights']})"
    size = (f"at {planned['image_size']} px" if planned["image_size"] else
            format_inputs(planned["inputs"]) if planned["inputs"] else "on its own inputs")
    defaults = planned["defaults"]
    return (f"{model}{weights} {size}, {planned['num_classes']} classes; defaults for phases "
            f"that set none: head lr {format_lr(defaults['learning_rate'])}, {defaults['epochs']} epochs")


@main.command()
@model_options
@click.option("--layers", "by_layer", is_flag=True,
              help="One row per layer (group, auto group, state, BatchNorm mode, lr, parameters) instead of per group.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="`json`: phases with their groups, changes and layers, for programs.")
@click.option("--picture", type=click.Path(dir_okay=False), default=None,
              help="Also draw the plan into this .png or .svg file: the groups as a strip, one row per phase.")
def plan(by_layer: bool, output_format: str, picture: str | None, **kwargs) -> None:
    """Print every phase by group: layers, state, BatchNorm mode, learning rates, parameters, what changed
    from the phase before, and the totals. Runs of three or more alike groups share a row."""
    from freeze_trainer.keras.planning.plan_report import format_plan, format_plan_groups, plan_dict

    if picture:
        from freeze_trainer.keras.planning.plan_picture import check_picture_path

        try:
            check_picture_path(picture)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--picture") from None
    kwargs["backbone"] = kwargs["backbone"] or "MobileNetV2"
    schedule, inputs = _schedule_or_exit(**kwargs)
    planned = _planned(kwargs, inputs)
    if output_format == "json":
        click.echo(json.dumps(plan_dict(schedule, planned), indent=2))
    elif by_layer:
        click.echo("\n".join(format_plan(schedule)))
    else:
        click.echo("\n".join([_planned_line(planned), "", *format_plan_groups(schedule)]))
    if picture:
        from freeze_trainer.keras.planning.plan_picture import draw_plan

        draw_plan(schedule.plans, picture, title=_planned_line(planned))
        echo_error(f"plan picture: {picture}")


@main.command()
@model_options
def validate(**kwargs) -> None:
    """Exit non-zero, naming the key and the reason, if the policy would not train. Without --backbone
    it checks the policy language alone (no TensorFlow); with one, it plans the policy on that backbone."""
    if kwargs["backbone"] is None:
        try:
            policy = parse_policy(read_policy_source(kwargs["policy"]))
        except PolicyError as err:
            raise click.ClickException(str(err)) from None
        click.echo(f"valid: {len(policy.resolved_phases())} phase(s); plan it with --backbone to check its selectors")
        return
    from freeze_trainer.keras.planning.plan_report import phase_summary

    schedule, _ = _schedule_or_exit(**kwargs)
    click.echo(f"valid: {len(schedule)} phase(s)")
    for phase in schedule:
        click.echo("  " + phase_summary(phase.number, len(schedule), phase.plan, cache=phase.cache_clause))


@main.command()
@click.option("--search", "search_space", is_flag=True, help="The schema of a search space (`freeze-policy search`).")
def schema(search_space: bool) -> None:
    """Print the policy's JSON Schema, or a search space's."""
    from freeze_trainer.tfx.search_space import search_space_json_schema

    click.echo(json.dumps(search_space_json_schema() if search_space else policy_json_schema(), indent=2))


class _BadSearchSpace(click.ClickException):
    """A search space that would not run: one line naming the key and the reason, before any trial."""

    exit_code = 2


@main.command()
@click.argument("space")
@click.option("--freeze-policy", "base_policy", default=None,
              help="The base policy the space's `policy.<path>` values change (file or text); default: a frozen base.")
@functools.partial(model_options, policy_argument=False)
def search(space: str, base_policy: str | None, **kwargs) -> None:
    """List the trials a search space would run, after checking it without data: every key exists and is
    per-run, every value passes the trainer's and the policy's bounds, every combination plans (a range by
    its two ends)."""
    from freeze_trainer.keras.models.backbones import BackboneError
    from freeze_trainer.tfx.search_space import SearchSpaceError, format_values, plan_combinations, read_search_space
    from freeze_trainer.tfx.trainer_config import ConfigError

    kwargs["backbone"] = kwargs["backbone"] or "MobileNetV2"
    base = {"backbone": kwargs["backbone"], "backbone_weights": kwargs["backbone_weights"],
            "backbone_alpha": kwargs["alpha"], "learning_rate": kwargs["learning_rate"], "epochs": kwargs["epochs"]}
    try:
        base["freeze_policy"] = base_policy and read_policy_source(base_policy)
        TrainerConfig.from_parameters(**base)
        searched = read_search_space(space, base)
        planned = plan_combinations(searched, base, (kwargs["image_size"],) * 2 + (3,), kwargs["num_classes"])
    except SearchSpaceError as err:
        raise _BadSearchSpace(str(err)) from None
    except (PolicyError, ConfigError, BackboneError) as err:
        raise click.ClickException(str(err)) from None
    # The combinations plan on several models; a custom base's inputs are listed by `plan`, not here.
    click.echo(_planned_line(_planned(kwargs, {})) + (f"; base policy {base_policy}" if base_policy else ""))
    click.echo(f"{searched.algorithm} search, objective {searched.objective_text()}")
    for name, values in searched.hyperparameters.items():
        if not isinstance(values, list):
            click.echo(f"  {name}: sampled {values.describe()}")
    count, trials = searched.combination_count, searched.trial_count
    if not searched.is_grid:
        click.echo(f"{trials} trials; every combination of these values and the ranges' ends plans ({count}):")
    elif trials < count:
        click.echo(f"{trials} trials drawn from these {count} combinations, each of which plans:")
    else:
        click.echo(f"{trials} trials, each of which plans:")
    for number, (values, plans) in enumerate(planned, start=1):
        click.echo(f"  {number:>{len(str(count))}}. {format_values(values)}  ({_phase_summary(plans)})")


def _phase_summary(plans: list) -> str:
    """What each phase trains, in trainable parameters: `head 12,810 · finetune 1,124,234`."""
    return " · ".join(f"{plan.phase.name} {plan.trainable_params:,}" for plan in plans) + " trainable"


if __name__ == "__main__":
    main()

"""Command-line options generated from the trainer's parameter table, for every tool that sets them (the
local runner, the Kubeflow compiler). Each becomes `--name-with-dashes`, typed from the table."""

from __future__ import annotations

from typing import Any, Callable

import click

from freeze_trainer.tfx.trainer_config import TRAINER_PARAMETERS, TrainerParameter


def _option(parameter: TrainerParameter, default: Any, alias: str | None = None) -> Callable:
    flag = "--" + parameter.name.replace("_", "-")
    if alias:
        return click.option(flag, alias, parameter.name, default=default, show_default=True, help=parameter.doc)
    if parameter.name == "freeze_policy":
        return click.option(flag, default=default, show_default="the frozen-base policy",
                            help="A JSON/YAML policy file, or the policy inline.")
    if parameter.is_flag:
        return click.option(f"{flag}/--no-{flag[2:]}", default=bool(default), show_default=True, help=parameter.doc)
    kind = click.Choice(parameter.choices) if parameter.choices else parameter.pipeline_type
    return click.option(flag, type=kind, default=default, show_default=default is not None, help=parameter.doc)


def trainer_parameter_options(defaults: dict[str, Any] | None = None, aliases: dict[str, str] | None = None
                              ) -> Callable:
    """A decorator adding one option per table row; `defaults` overrides the table's defaults (the demo's
    backbone file, say) and `aliases` adds a second flag to a string option (`--image-key` for
    `--feature-key`). The command receives each as a keyword argument named like the parameter."""
    defaults, aliases = defaults or {}, aliases or {}

    def decorate(command: Callable) -> Callable:
        for parameter in reversed(TRAINER_PARAMETERS):
            default = defaults.get(parameter.name, parameter.pipeline_default)
            command = _option(parameter, default, aliases.get(parameter.name))(command)
        return command

    return decorate


def pop_trainer_parameters(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Takes the table's parameters out of a command's keyword arguments."""
    return {parameter.name: kwargs.pop(parameter.name) for parameter in TRAINER_PARAMETERS}

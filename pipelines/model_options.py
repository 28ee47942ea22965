"""Command-line options generated from a pydantic model, as the trainer's come from its table
(`freeze_trainer.cli.parameter_options`): one `--flag` per field, typed, bounded, defaulted and documented
by the field, so a command declares nothing by hand and the model validates everything, once.

A field holding a model (`TrainerResources`) gives one flag per field of it, `--<prefix>-<field>`; when that
field is optional (`dataflow: DataflowOptions | None`), the nested model is given only when one of its
flags is. A model's error comes back as one line naming the flag, and a validator's message that names a
field in backticks (`` `beam_preset` ``) names the flag instead.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Callable, Literal

import click
import pydantic
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from freeze_trainer.policy.validation import first_error


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """`annotation` less a `| None`, and whether it had one."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    inner, optional = _without_none(annotation)
    return (inner, optional) if isinstance(inner, type) and issubclass(inner, BaseModel) else (None, False)


def _click_type(field: FieldInfo) -> tuple[Any, bool]:
    """The click type of a leaf field (None for a flag) and whether it repeats (a tuple)."""
    kind, _ = _without_none(field.annotation)
    metadata = list(field.metadata)
    if typing.get_origin(kind) is typing.Annotated:
        kind, *extra = typing.get_args(kind)
        metadata += extra
    if typing.get_origin(kind) is Literal:
        return click.Choice(typing.get_args(kind)), False
    if typing.get_origin(kind) is tuple:
        return typing.get_args(kind)[0], True
    if kind is bool:
        return None, False
    if kind in (int, float):
        # pydantic keeps `ge=0` as annotated_types' Ge(ge=0), `PositiveInt`'s as Gt(gt=0).
        bounds = {name: getattr(item, name) for item in metadata for name in ("ge", "gt", "le", "lt")
                  if getattr(item, name, None) is not None}
        if bounds:  # the field's bounds, so `--image-size 10000` is refused with the range
            kind_range = click.IntRange if kind is int else click.FloatRange
            return kind_range(min=bounds.get("ge", bounds.get("gt")), max=bounds.get("le", bounds.get("lt")),
                              min_open="gt" in bounds, max_open="lt" in bounds), False
    return kind, False


class ModelOptions:
    """Click options for `model`'s fields but `exclude`. `defaults` replaces a field's default (the demo's
    image size, say); `prefixes` names the flag prefix of a nested model's fields (default: the field's
    name); `flags` gives a field path (`trainer_resources.accelerator_type`) a flag other than the
    generated one. A decorator; `values` and `error` turn the command's arguments back into the model."""

    def __init__(self, model: type[BaseModel], *, exclude: tuple[str, ...] = (), defaults: dict[str, Any] | None = None,
                 prefixes: dict[str, str] | None = None, flags: dict[str, str] | None = None):
        self.model = model
        self.flags: dict[str, str] = {}  # field path -> flag
        self.optional_groups: set[str] = set()  # nested models given only when one of their flags is
        self._options: list[Callable] = []
        self._collect(model, "", "", exclude, defaults or {}, prefixes or {}, flags or {}, in_optional=False)

    def _collect(self, model: type[BaseModel], path: str, flag_prefix: str, exclude: tuple[str, ...],
                 defaults: dict[str, Any], prefixes: dict[str, str], flags: dict[str, str], in_optional: bool) -> None:
        for name, field in model.model_fields.items():
            field_path = path + name
            if field_path in exclude:
                continue
            nested, optional = _nested_model(field.annotation)
            if nested is not None:
                if optional:
                    self.optional_groups.add(field_path)
                self._collect(nested, field_path + ".", prefixes.get(field_path, name), exclude, defaults, prefixes,
                              flags, in_optional or optional)
                continue
            generated = "--" + (f"{flag_prefix}-{name}" if flag_prefix else name).replace("_", "-")
            self.flags[field_path] = flags.get(field_path, generated)
            self._options.append(self._option(field_path, field, defaults.get(field_path), in_optional))

    def _option(self, path: str, field: FieldInfo, default: Any, in_optional: bool) -> Callable:
        flag, destination = self.flags[path], path.replace(".", "__")
        kind, multiple = _click_type(field)
        default = field.default if default is None and not field.is_required() else default
        common = {"help": field.description}
        if kind is None:
            return click.option(flag, destination, is_flag=True, default=bool(default), **common)
        if multiple:
            return click.option(flag, destination, type=kind, multiple=True, **common)
        if in_optional:  # unset unless given: the nested model's own default applies
            return click.option(flag, destination, type=kind, default=None,
                                show_default=str(default) if default is not None else False, **common)
        return click.option(flag, destination, type=kind, default=default, required=field.is_required(),
                            show_default=default is not None, **common)

    def __call__(self, command: Callable) -> Callable:
        for option in reversed(self._options):
            command = option(command)
        return command

    def values(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Takes this decorator's options out of a command's keyword `arguments`: the model's fields as
        `model_validate` takes them, nested models as dicts (an optional one only when a flag of it is given)."""
        values: dict[str, Any] = {}
        for path in self.flags:
            value = arguments.pop(path.replace(".", "__"))
            *parents, name = path.split(".")
            group = ".".join(parents)
            if group in self.optional_groups and value is None:
                continue
            node = values
            for parent in parents:
                node = node.setdefault(parent, {})
            node[name] = tuple(value) if isinstance(value, (tuple, list)) else value
        return values

    def error(self, err: pydantic.ValidationError) -> str:
        """The model's first error as one line, naming flags rather than fields."""
        where, reason = first_error(err)

        def flag(match: re.Match) -> str:
            name = match.group(1)
            return self.flags.get(f"{where}.{name}") or self.flags.get(name) or match.group(0)

        reason = re.sub(r"`([\w.]+)`", flag, reason)
        where = self.flags.get(where, where)
        return f"{where}: {reason}" if where else reason

    def validate(self, arguments: dict[str, Any], **values: Any) -> BaseModel:
        """The model from a command's keyword `arguments` (this decorator's options, taken out of them) and
        `values` (more fields, e.g. the trainer's); a bad value is a click usage error naming its flag."""
        try:
            return self.model.model_validate({**self.values(arguments), **values})
        except pydantic.ValidationError as err:
            raise click.UsageError(self.error(err)) from None

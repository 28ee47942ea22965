"""The one translation of a pydantic validation error into the "key: reason" line users see, and its error."""

from __future__ import annotations

import pydantic


class DocumentError(ValueError):
    """An invalid document (a policy, a search space): `key` is the dotted path of the offending entry."""

    document = "document"  # what the message's first words name

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"{self.document}: {key}: {reason}" if key else f"{self.document}: {reason}")


def error_key(loc: tuple) -> str:
    """`phases[1].rules[0].freeze.names` from pydantic's location tuple."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif part.startswith("function-") or part in {"str", "int", "bool", "float"}:
            continue  # pydantic's internal validator names say nothing to a user
        else:
            key += f".{part}" if key else part
    return key


def first_error(err: pydantic.ValidationError) -> tuple[str, str]:
    """The first error's key and reason."""
    first = err.errors()[0]
    reason = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    return error_key(first["loc"]), reason

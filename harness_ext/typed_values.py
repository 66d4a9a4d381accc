"""Checks of one value read from a user's file (grid spec, recipe): the type it must have, said once.

Each check returns the value, or raises `WrongValue` whose text completes "must be ..." / "expected ...":
`true or false, got 'yes'`. The callers put the file, line and field in front (leaderboards.spec_parser,
recipes.modifiers).
"""

from __future__ import annotations

from typing import Any


class WrongValue(ValueError):
    """What the value should have been and what it was, e.g. `an integer >= 1, got 1.5`."""


def check_flag(value: Any) -> bool:
    """`value` if it is a YAML boolean."""
    if not isinstance(value, bool):
        raise WrongValue(f"true or false, got {value!r}")
    return value


def check_number(value: Any, integer: bool = False, minimum: float | None = None) -> int | float:
    """`value` if it is a number (an integer when `integer`; booleans refused) not below `minimum`."""
    kind = "an integer" if integer else "a number"
    wanted = kind if minimum is None else f"{kind} >= {minimum:g}"
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int))
            or (minimum is not None and value < minimum)):
        raise WrongValue(f"{wanted}, got {value!r}")
    return value


__all__ = ["WrongValue", "check_flag", "check_number"]

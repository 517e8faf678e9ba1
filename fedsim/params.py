"""The one way fedsim checks a parameter: every config field and every component argument.

Each check raises :class:`ParamError` with one line, ``<field>=<value>: must be <valid range
or options>``, which the CLI prints as ``fedsim: error: ...`` before any work starts. Components
call these from their constructors (Hydra builds them before the first round); the root config
uses them in :mod:`fedsim.config`.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any


class ParamError(ValueError):
    """A config field or component argument outside its valid range."""


def shown(value: Any) -> str:
    """A value as the error line shows it: numbers plainly, anything else as its repr."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def fail(field: str, value: Any, rule: str) -> None:
    """Raise the one-line error for ``field``."""
    raise ParamError(f"{field}={shown(value)}: must be {rule}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_range(
    field: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    """``value`` is a finite number (an integer if ``integer``) within [low, high] (open ends as asked)."""
    kind = "an integer" if integer else "a finite number"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {shown(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {shown(high)}")
    if low is not None and high is not None:
        rule = f"in {'(' if low_open else '['}{shown(low)}, {shown(high)}{')' if high_open else ']'}"
    else:
        rule = " and ".join(parts) or "set"
    ok = is_number(value) and (not integer or isinstance(value, int))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        fail(field, value, rule if not integer and is_number(value) else f"{kind} {rule}")


def check_choice(field: str, value: Any, options: Collection[Any]) -> None:
    """``value`` is one of ``options``."""
    if value not in options:
        fail(field, value, f"one of {', '.join(map(str, options))}")


def check_that(field: str, value: Any, ok: bool, rule: str) -> None:
    """A rule that is not a range or a choice (e.g. ``f < num_clients/2``)."""
    if not ok:
        fail(field, value, rule)

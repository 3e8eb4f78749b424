"""Checks of a config's fields where they are defined: an error names the config, the field, the value and what is
allowed (`DistillConfig.lr must be a finite number > 0, not -0.001`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def is_int(ok: Callable[[int], bool]) -> Callable[[Any], bool]:
    """A predicate: an int (not a bool) for which `ok` holds."""
    return lambda x: not isinstance(x, bool) and isinstance(x, int) and ok(x)


def is_real(ok: Callable[[float], bool]) -> Callable[[Any], bool]:
    """A predicate: a finite int or float (not a bool) for which `ok` holds."""
    return lambda x: not isinstance(x, bool) and isinstance(x, int | float) and math.isfinite(x) and ok(x)


def check_field(owner: str, name: str, value: Any, allowed: str, ok: Callable[[Any], bool]) -> None:
    """Raise ValueError("<owner>.<name> must be <allowed>, not <value>") unless `ok(value)`."""
    if not ok(value):
        raise ValueError(f"{owner}.{name} must be {allowed}, not {value!r}")

"""JSON for what a store keeps outside the process: arguments, progress
data, results.

Anything JSON cannot hold is refused where it is given, with a ``TypeError``
that names the value and where it sits, before anything is written.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ("dumps", "loads")


def dumps(value: Any, what: str) -> str:
    """``value`` as compact JSON text.

    Args:
        value: what to encode.
        what: how to name it in an error, e.g. ``"the arguments of resize"``.

    Raises:
        TypeError: ``value`` holds something JSON cannot: an object of
            another type, a dict key that is not a string, a float that is
            not finite, or itself. The message names it and its place.
    """
    if value is None:  # what most jobs return
        return "null"
    # Walked first, not left to json.dumps: it would turn a key 1 into "1"
    # silently, and the job would get back something else than was given.
    found = _find(value, "")
    if found is not None:
        place, problem = found
        where = f" at {place}" if place else ""
        raise TypeError(
            f"{what} must be JSON (an SQL store keeps it as JSON), but{where} there is {problem}"
        )
    return json.dumps(value, separators=(",", ":"), allow_nan=False, check_circular=False)


def loads(text: str) -> Any:
    """The value that :func:`dumps` encoded."""
    return json.loads(text)


def _find(value: Any, place: str, depth: int = 0) -> tuple[str, str] | None:
    """The first thing JSON cannot hold inside ``value``, and where it is."""
    if depth > 100:
        return place, "a structure nested too deep (or that contains itself)"
    if value is None or isinstance(value, bool | int | str):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (place, f"the float {value!r}")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _find(item, f"{place}[{i}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return place, f"a key that is not a string: {key!r} ({type(key).__name__})"
            found = _find(item, f"{place}[{key!r}]", depth + 1)
            if found:
                return found
        return None
    return place, f"{_describe(value)}, which JSON cannot hold"


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"a {type(value).__module__}.{type(value).__qualname__} ({text})".replace(
        "builtins.", ""
    )

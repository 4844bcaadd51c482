"""JSON for what a store keeps outside the process: arguments, progress
data, results.

Anything JSON cannot hold, or would not give back equal, is refused where
it is given, with a ``TypeError`` that names the value and where it sits,
before anything is written: one rule, whichever database keeps it. Values
are never converted: a ``str`` or ``int`` subclass (an ``IntEnum``, a
``StrEnum``) would come back as a plain ``str`` or ``int``, so it is
refused too (give its ``.value``).
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ("dumps", "loads", "storable_text")


def dumps(value: Any, what: str) -> str:
    """``value`` as compact JSON text.

    Args:
        value: what to encode.
        what: how to name it in an error, e.g. ``"the arguments of resize"``.

    Raises:
        TypeError: ``value`` holds something JSON cannot, or would give
            back as something else: an object of another type (a subclass
            of ``str``, ``int`` or ``float`` included), a dict key that is
            not a string, a float that is not finite, an integer too long
            to write, or itself. The message names it and its place.
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
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False, check_circular=False)
    except ValueError as exc:  # an int too long to write: sys.get_int_max_str_digits()
        raise TypeError(
            f"{what} must be JSON, but it holds what cannot be written: {exc}"
        ) from None


def loads(text: str) -> Any:
    """The value that :func:`dumps` encoded.

    Raises:
        ValueError: ``text`` is not JSON, holds ``NaN`` or an infinity, or
            is nested too deep to read (text that :func:`dumps` never
            writes: edited by hand?).
    """
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deep to read") from None


def _refuse(constant: str) -> float:
    """``NaN`` and the infinities: Python's JSON reads them, :func:`dumps`
    never writes them, and a value holding one could not be written out
    again (the web app's JSON, say): text edited by hand."""
    raise ValueError(f"{constant} is not JSON")


#: json.loads's own decoder, but for NaN and the infinities (made once:
#: json.loads makes a decoder at each call given any option).
_DECODER = json.JSONDecoder(parse_constant=_refuse)


def storable_text(text: str) -> str:
    """``text`` with what a database cannot keep escaped: lone surrogates
    (``"\\ud800"``, which are not UTF-8) and NUL characters (``"\\x00"``,
    which PostgreSQL refuses). Other text is returned as it is."""
    if text.isascii():
        return text if "\x00" not in text else text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


#: The types JSON gives back as they were given (a tuple comes back as a
#: list: the one conversion, documented); their subclasses would come back
#: as the base type, so they are refused.
_BASES = (bool, int, float, str, list, tuple, dict)


def _find(value: Any, place: str, depth: int = 0) -> tuple[str, str] | None:
    """The first thing JSON cannot hold inside ``value``, or would give back
    as something else, and where it is."""
    if depth > 100:
        return place, "a structure nested too deep (or that contains itself)"
    kind = type(value)
    if value is None or kind is str or kind is int or kind is bool:
        return None
    if kind is float:
        return None if math.isfinite(value) else (place, f"the float {value!r}")
    if kind is list or kind is tuple:
        for i, item in enumerate(value):
            found = _find(item, f"{place}[{i}]", depth + 1)
            if found:
                return found
        return None
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return place, f"a key that is not a string: {key!r} ({type(key).__name__})"
            found = _find(item, f"{place}[{key!r}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, _BASES):
        base = next(t for t in _BASES if isinstance(value, t)).__name__
        return place, (
            f"{_describe(value)}, a subclass of {base}, which would come back as a "
            f"plain {base}: give {base}(...) of it (or its .value)"
        )
    return place, f"{_describe(value)}, which JSON cannot hold"


def _describe(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - the error being described must still be raised
        text = f"its repr() raised {type(exc).__name__}"
    if len(text) > 60:
        text = text[:57] + "..."
    return f"a {type(value).__module__}.{type(value).__qualname__} ({text})".replace(
        "builtins.", ""
    )

"""JSON for what an SQL store keeps: refusals name the value and its place."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest

from asyncjob.stores.kit import dumps, loads


@pytest.mark.parametrize(
    "value",
    [None, True, 3, 2.5, "text", [1, "a", None], {"a": {"b": [1, 2.0, False]}}, []],
)
def test_round_trip(value: Any) -> None:
    """What JSON can hold comes back equal."""
    assert loads(dumps(value, "x")) == value


def test_tuples_become_lists() -> None:
    """JSON has no tuples: they come back as lists, as with any JSON."""
    assert loads(dumps({"size": (640, 480)}, "x")) == {"size": [640, 480]}


@pytest.mark.parametrize(
    ("value", "place", "problem"),
    [
        ({"when": datetime.date(2026, 1, 2)}, "['when']", "a datetime.date"),
        ([1, [2, {3}]], "[1][1]", "a set ({3})"),
        ({"a": [1, {"b": object()}]}, "['a'][1]['b']", "a object"),
        ({1: "one"}, "", "a key that is not a string: 1 (int)"),
        ([math.nan], "[0]", "the float nan"),
        ({"x": math.inf}, "['x']", "the float inf"),
        (b"bytes", "", "a bytes (b'bytes')"),
    ],
)
def test_refusals_name_what_and_where(value: Any, place: str, problem: str) -> None:
    """The error says what cannot be JSON, and where it sits."""
    with pytest.raises(TypeError) as info:
        dumps(value, "the arguments of resize")
    message = str(info.value)
    assert message.startswith("the arguments of resize must be JSON")
    assert problem in message
    if place:
        assert f"at {place}" in message


def test_a_structure_that_contains_itself() -> None:
    """A cycle is refused, not followed for ever."""
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(TypeError, match="nested too deep"):
        dumps(loop, "data")

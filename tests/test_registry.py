"""Registering jobs by name with @asyncjob.job."""

from __future__ import annotations

import functools
import re
from typing import Any

import pytest

import asyncjob
from asyncjob._core import registry as _registry

from . import jobs_for_registry as jobs
from .conftest import TIMEOUT

pytestmark = pytest.mark.usefixtures("clean_registry")


def _name_of(func: Any) -> str:
    definition = _registry.definition_of(func)
    assert definition is not None, f"{func!r} is not registered"
    return definition.name


def test_register_by_module_and_name() -> None:
    """The default name is module.qualname; the function comes back unchanged."""
    assert asyncjob.job(jobs.resize) is jobs.resize
    assert _name_of(jobs.resize) == "tests.jobs_for_registry.resize"
    definition = _registry.lookup("tests.jobs_for_registry.resize")
    assert definition is not None
    assert definition.func is jobs.resize


def test_register_with_a_name() -> None:
    """@job(name=...) keeps a name that survives moving the code."""
    assert asyncjob.job(name="reports.yearly")(jobs.report) is jobs.report
    assert _name_of(jobs.report) == "reports.yearly"
    assert _registry.lookup("tests.jobs_for_registry.report") is None


def test_registering_twice_is_harmless() -> None:
    """The same function under the same name, again: nothing changes."""
    asyncjob.job(jobs.report)
    asyncjob.job(jobs.report)
    assert _name_of(jobs.report) == "tests.jobs_for_registry.report"


def test_a_name_taken_by_another_function() -> None:
    """Two functions cannot share a name: the error says how to fix it."""
    asyncjob.job(name="reports")(jobs.report)
    with pytest.raises(
        ValueError, match=re.escape("'reports' is taken by tests.jobs_for_registry.report")
    ):
        asyncjob.job(name="reports")(jobs.other_report)


def make_closure() -> Any:
    """A nested function, which no other process could import."""

    def nested() -> None:
        """Nested."""

    return nested


class Holder:
    """Has a method."""

    def method(self) -> None:
        """A method."""


@pytest.mark.parametrize(
    "thing",
    [lambda: None, make_closure(), Holder.method, functools.partial(jobs.report, 1)],
    ids=["lambda", "closure", "method", "partial"],
)
def test_only_module_level_functions(thing: Any) -> None:
    """Lambdas, closures, methods and partials are refused, saying why."""
    with pytest.raises(TypeError, match=r"module-level functions|registers functions"):
        asyncjob.job(thing)


@pytest.mark.parametrize("name", ["", "   ", 42])
def test_bad_names(name: Any) -> None:
    """A name must be a non-empty string."""
    with pytest.raises(ValueError, match="non-empty string"):
        asyncjob.job(name=name)(jobs.report)


def test_unregistered_and_unhashable() -> None:
    """Anything never registered has no name, hashable or not."""

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self) -> None:
            """Callable."""

    assert _registry.definition_of(jobs.other_report) is None
    assert _registry.definition_of(Unhashable()) is None


async def test_a_registered_job_runs_like_any_other(runner: asyncjob.Runner) -> None:
    """With the memory store, registering changes nothing about running."""
    asyncjob.job(jobs.resize)
    job_id = await runner.perform(jobs.resize, "cat.jpg", 64)
    assert await runner.wait(job_id, timeout=TIMEOUT) == "cat.jpg@64"

"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import asyncjob
from asyncjob.stores import MemoryStore, Store

#: Every wait in the tests is bounded by this many seconds, so that a bug
#: fails fast instead of hanging the run.
TIMEOUT = 10.0

RunnerFactory = Callable[..., Any]


@pytest.fixture
async def make_runner() -> AsyncIterator[RunnerFactory]:
    """Start runners on demand, and stop every one of them after the test."""
    made: list[asyncjob.Runner] = []

    async def make(store: str | Store | None = None, **options: Any) -> asyncjob.Runner:
        runner = asyncjob.Runner(store if store is not None else MemoryStore(), **options)
        made.append(runner)
        await runner.start()
        return runner

    yield make
    for runner in reversed(made):
        await runner.stop()


@pytest.fixture
async def runner(make_runner: RunnerFactory) -> asyncjob.Runner:
    """A running runner on the memory store, with the default options."""
    made: asyncjob.Runner = await make_runner()
    return made

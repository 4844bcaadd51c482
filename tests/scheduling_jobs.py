"""Registered jobs for tests/test_scheduling.py.

They are registered at module level, as a worker runner needs them: the
worker runners of those tests run in the test's own process, on its loop,
so the jobs can share state (events, counters) with the test through this
module.

All but one: :func:`limited` is registered with its concurrency limit by
the test that uses it (:func:`register_limited`, under the
``clean_registry`` fixture). Registered here, its limit would last the
whole test session, and every claim of every SQL worker of the other test
files would take the limits' path (a transaction taking a lock per limited
name) instead of the plain claim they mean to test.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncjob

#: How many :func:`limited` jobs may run at once.
LIMIT = 2


@asyncjob.job
async def echo(n: int) -> int:
    """Return ``n``: a registered job with no defaults."""
    return n


@asyncjob.job(queue="q", priority=7)
async def with_defaults(n: int) -> int:
    """Return ``n``: a registered job with a default queue and priority."""
    return n


@asyncjob.job
async def own_options(
    delay: int, priority: str, queue: list[int], unique: bool, at: str | None
) -> dict[str, Any]:
    """A job whose own parameters have the names of :func:`asyncjob.using`'s
    options: it returns what it was given."""
    return {"delay": delay, "priority": priority, "queue": queue, "unique": unique, "at": at}


#: Gates that a test opens to let :func:`gated` jobs end.
GATES: dict[str, asyncio.Event] = {}


@asyncjob.job
async def gated(name: str) -> str:
    """Wait until the test opens the gate ``name``."""
    await GATES.setdefault(name, asyncio.Event()).wait()
    return name


@dataclass
class Tally:
    """What the :func:`limited` jobs did, for the test that performed them."""

    running: int = 0
    peak: int = 0
    started: list[int] = field(default_factory=list)
    #: Set once ``LIMIT`` of them run at once.
    full: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set by the test to let them end.
    release: asyncio.Event = field(default_factory=asyncio.Event)


#: Reset by each test that performs :func:`limited` (``LIMITED = Tally()``).
LIMITED = Tally()


def reset_limited() -> Tally:
    """A fresh tally for the next test, which it returns."""
    global LIMITED
    LIMITED = Tally()
    return LIMITED


def register_limited() -> None:
    """Register :func:`limited` with its limit, for one test (which uses the
    ``clean_registry`` fixture, so that the limit ends with it)."""
    asyncjob.job(concurrency=LIMIT)(limited)


async def limited(n: int) -> int:
    """Count how many of its kind run at once, and wait for the test."""
    tally = LIMITED
    tally.running += 1
    tally.peak = max(tally.peak, tally.running)
    tally.started.append(n)
    if tally.running == LIMIT:
        tally.full.set()
    try:
        await tally.release.wait()
        for _ in range(3):
            await asyncio.sleep(0)  # let the others interleave, were any to run too
    finally:
        tally.running -= 1
    return n

"""A registered job for the browser tests on an SQL store: run by the test's
own runner, in the test's process and event loop, one step at a time."""

from __future__ import annotations

import asyncio

import asyncjob

from .conftest import TIMEOUT

#: What lets each job take its next step, by the key it was performed with:
#: one item put, one step taken. Its arguments are stored as JSON, so a job
#: cannot be handed a queue of its own: the key is how they find each other.
STEPS: dict[str, asyncio.Queue[None]] = {}


def steps(key: str) -> asyncio.Queue[None]:
    """The steps of the job performed with ``key``, made by whichever of the
    test and the job asks first."""
    return STEPS.setdefault(key, asyncio.Queue())


@asyncjob.job
async def advance(key: str, total: int) -> str:
    """Take ``total`` steps, each when the test lets it, reporting the
    percentage done and ``"n of total"`` after each; then return."""
    for done in range(1, total + 1):
        async with asyncio.timeout(TIMEOUT):
            await steps(key).get()
        asyncjob.set_progress(done * 100 / total, f"{done} of {total}")
    return f"{total} done"

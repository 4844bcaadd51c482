"""Registered jobs for the resilience tests, imported by their worker processes."""

from __future__ import annotations

import asyncio
import os

import asyncjob


@asyncjob.job(name="tests.resilience.step")
async def step(n: int, seconds: float) -> dict[str, int]:
    """One job of a stream: a little work, then say who did it."""
    await asyncio.sleep(seconds)  # the work
    return {"n": n, "pid": os.getpid()}


@asyncjob.job(name="tests.resilience.always_fails", retries=1, backoff=0.01)
async def always_fails(message: str) -> None:
    """Fails on every attempt, so that its failure is recorded for a retry."""
    raise RuntimeError(message)

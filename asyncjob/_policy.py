"""What a registered job's definition asks of each attempt: a timeout, retries."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from . import _context
from ._models import Job
from ._registry import lookup
from ._sessions import JobScope

__all__ = ("call_async", "retry_delay", "timeout_of")


def timeout_of(job: Job) -> float | None:
    """Seconds the job's attempt may run, or None for no limit."""
    if not job.registered:
        return None
    definition = lookup(job.name)
    return None if definition is None else definition.timeout


def retry_delay(job: Job) -> float | None:
    """Seconds before the job's next attempt, after this one failed; None
    when it gets no other attempt."""
    if not job.registered:
        return None
    definition = lookup(job.name)
    return None if definition is None else definition.delay_before(job.attempt)


def timed_out(job: Job, timeout: float) -> TimeoutError:
    """The error an attempt that ran past its timeout fails with."""
    return TimeoutError(f"{job.name} ran longer than its timeout of {timeout:g} s")


async def call_async(
    job: Job, ctx: _context.JobContext, scope: JobScope, timeout: float | None
) -> Any:
    """Await the coroutine job inside its scope and under its timeout."""
    async with contextlib.AsyncExitStack() as stack:
        if scope.wraps_async:
            await stack.enter_async_context(scope.for_async_job(ctx))
        if timeout is None:
            return await job.func(*job.args, **job.kwargs)
        limit = asyncio.timeout(timeout)
        try:
            async with limit:
                return await job.func(*job.args, **job.kwargs)
        except TimeoutError:
            if limit.expired():
                raise timed_out(job, timeout) from None
            raise

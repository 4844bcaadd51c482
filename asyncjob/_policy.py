"""What a job's definition asks of each attempt (a timeout, retries), and the
scope it runs in, with its success recorded in its own session where it can be."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from . import _context
from ._models import Job
from ._registry import lookup
from ._sessions import JobScope
from .stores import Store

__all__ = (
    "FinishIn",
    "FinishInSync",
    "call_async",
    "finish_in_session",
    "finish_in_sync_session",
    "in_scope_sync",
    "retry_delay",
    "timeout_of",
)

#: ``finish_in(session, job_id, result)``: record a job's success in its session.
FinishIn = Callable[[Any, str, Any], Awaitable[None]]
#: The same for a sync job, called in its thread.
FinishInSync = Callable[[Any, str, Any], None]


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
    job: Job,
    ctx: _context.JobContext,
    scope: JobScope,
    timeout: float | None,
    finish_in: FinishIn | None = None,
) -> Any:
    """Await the coroutine job inside its scope and under its timeout.

    With ``finish_in``, the job's success is recorded through its own
    session, before the scope commits it: the job's writes and its final
    state are one transaction (``ctx.finished`` says it is done).
    """
    if not scope.wraps_async:
        return await _call_with_timeout(job, timeout)
    async with scope.for_async_job(ctx):
        result = await _call_with_timeout(job, timeout)
        if finish_in is not None and ctx.session is not None and not ctx.cancelled:
            await finish_in(ctx.session, job.id, result)
            ctx.finished = True
        return result


async def _call_with_timeout(job: Job, timeout: float | None) -> Any:
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


def in_scope_sync(
    job: Job, ctx: _context.JobContext, scope: JobScope, finish_in: FinishInSync | None
) -> Callable[..., Any]:
    """The sync job as its thread runs it: inside its scope and, with
    ``finish_in``, its success recorded through its own session before the
    scope commits it, as :func:`call_async` does for a coroutine job."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with scope.for_sync_job(ctx):
            result = job.func(*args, **kwargs)
            if (
                finish_in is not None
                and ctx.session is not None
                and not ctx.cancelled
                and not inspect.iscoroutine(result)  # a mistake the runner reports
            ):
                timeout = timeout_of(job)
                if ctx.timed_out and timeout is not None:  # too late to succeed
                    raise timed_out(job, timeout)
                finish_in(ctx.session, job.id, result)
                ctx.finished = True
            return result

    return call


def finish_in_session(store: Store, maker: Any) -> FinishIn | None:
    """The store's way of recording a coroutine job's success in the job's
    own session, when the runner's sessions are on the store's database."""
    method: FinishIn | None = _sharing(store, maker, "finish_in")
    return method


def finish_in_sync_session(store: Store, maker: Any) -> FinishInSync | None:
    """:func:`finish_in_session` for sync jobs and their sessions."""
    method: FinishInSync | None = _sharing(store, maker, "finish_in_sync")
    return method


def _sharing(store: Store, maker: Any, name: str) -> Any:
    method = getattr(store, name, None)
    shares = getattr(store, "shares_database_with", None)
    if maker is None or method is None or shares is None:
        return None
    engine = maker.kw.get("bind")
    if engine is None or not shares(engine):
        return None
    return method

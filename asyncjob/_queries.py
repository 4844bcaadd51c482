"""What a runner answers about its jobs: status, progress, waiting, cancelling.

A base of :class:`asyncjob.Runner`, apart only to keep each module short:
every method here reads the store, or stops a job, on the runner's loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from . import _loops
from ._errors import JobCancelled, JobFailed, JobNotFound
from ._execution import Executor
from ._models import JobState, JobStatus, Outcome, Progress
from .stores import Store

__all__ = ("JobQueries",)

T = TypeVar("T")


class JobQueries:
    """The runner's questions about jobs (see :class:`asyncjob.Runner`)."""

    _store: Store
    _executor: Executor
    _loop: asyncio.AbstractEventLoop | None

    async def status(self, job_id: str) -> JobStatus:
        """The job's current :class:`JobStatus`.

        Raises:
            JobNotFound: no job has this id (or it was forgotten).
        """
        status = await self._read(self._store.get, job_id)
        if status is None:
            raise JobNotFound(job_id)
        return status

    async def get_progress(self, job_id: str) -> Progress | None:
        """The job's progress, with ``tgext.asyncjob``'s meaning.

        ``(-1, None)`` while the job has not reported any progress yet;
        ``(value, data)`` as last given to :func:`asyncjob.set_progress`;
        ``None`` once the job has ended, and for an unknown id.
        """
        status = await self._read(self._store.get, job_id)
        if status is None or status.is_final:
            return None
        if status.progress is None:
            return (-1, None)
        return (status.progress, status.data)

    async def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """Wait for the job to end and return its result.

        Raises:
            JobFailed: the job raised; the text has the original error.
            JobCancelled: the job was cancelled.
            JobNotFound: no job has this id.
            TimeoutError: ``timeout`` seconds passed first (the job goes on).
        """
        outcome = await self._read(self._store.outcome, job_id)
        if outcome is None:
            raise JobNotFound(job_id)
        if not outcome.state.is_final:
            async with asyncio.timeout(timeout):
                async for status in self.watch(job_id):
                    if status.is_final:
                        outcome = status.outcome()
        return _result(job_id, outcome)

    async def watch(self, job_id: str) -> AsyncIterator[JobStatus]:
        """Yield the job's status now and on every change; stop after the
        final one.

        Changes are pushed to the watcher as they happen; many watchers of
        one job are fine. A watcher that falls far behind may miss
        intermediate progress, never the final status.

        Raises:
            JobNotFound: no job has this id.
        """
        if self._loop is None or self._on_own_loop():
            async for status in self._store.watch(job_id):
                yield status
            return
        source = functools.partial(self.watch, job_id)
        async for status in _loops.relay(self._loop, source, _is_final):
            yield status

    async def cancel(self, job_id: str) -> bool:
        """Cancel the job; returns True if it was queued or running.

        Its state is ``cancelled`` as soon as this returns: a queued job
        never starts; a running coroutine job gets
        :class:`asyncio.CancelledError` at its current ``await`` (it may
        clean up); a running sync job gets :class:`JobCancelled` from its
        next :func:`asyncjob.set_progress`, since a thread cannot be stopped
        from outside. A job that has ended, or an unknown id, gives False.
        """
        return await self._on_loop(self._cancel_here(job_id))

    async def _cancel_here(self, job_id: str) -> bool:
        before = await self._store.cancel(job_id)
        if before is JobState.running:
            self._executor.interrupt(job_id)
        return before in (JobState.queued, JobState.running)

    def _on_own_loop(self) -> bool:
        return _loops.is_current(self._loop)

    async def _read(self, method: Callable[[str], Awaitable[T]], job_id: str) -> T:
        """``await method(job_id)``: a store read, on the runner's loop."""
        if asyncio.get_running_loop() is self._loop:
            return await method(job_id)
        return await self._on_loop(method(job_id))

    async def _on_loop(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` on the runner's loop, from whichever loop calls."""
        return await _loops.call_on(self._loop, awaitable)


def _is_final(status: JobStatus) -> bool:
    return status.is_final


def _result(job_id: str, outcome: Outcome) -> Any:
    if outcome.state is JobState.succeeded:
        return outcome.result
    if outcome.state is JobState.failed:
        raise JobFailed(job_id, outcome.error or "unknown error", outcome.traceback)
    raise JobCancelled(job_id)

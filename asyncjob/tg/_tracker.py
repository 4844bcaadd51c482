"""The seed's progress trackers, fed from a store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import anyio.to_thread

from asyncjob._models import Claimed, Job, JobState, JobStatus, Outcome
from asyncjob.stores import Store

__all__ = ("ProgressTracker", "TrackedStore")


class ProgressTracker(Protocol):
    """``tgext.asyncjob``'s tracker interface: where progress is kept for
    :func:`asyncjob_get_progress` to read (a Redis tracker, say, so that
    several web processes see it)."""

    def track(self, entryid: str) -> None:
        """A job was performed: its progress is ``(-1, None)`` from now."""

    def remove(self, entryid: str) -> None:
        """The job ended: its progress is ``None`` from now."""

    def set_progress(self, entryid: str, value: Any, message: Any) -> None:
        """The job reported ``(value, message)``."""

    def get_progress(self, entryid: str) -> Any:
        """``(value, message)``, ``(-1, None)``, or ``None``."""


class TrackedStore(Store):
    """A store that also tells a :class:`ProgressTracker` what happens.

    Everything is kept in ``inner`` as usual; the tracker is told of each
    job performed, each progress report, and each job's end. Its calls that
    come from the event loop run in a worker thread, as a tracker may block
    (Redis); progress reports come from the job itself, in its own thread
    for a sync job.
    """

    def __init__(self, inner: Store, tracker: ProgressTracker) -> None:
        self.inner = inner
        self.tracker = tracker
        self.durable = inner.durable

    @property
    def on_queued(self) -> Callable[[], None] | None:
        return self.inner.on_queued

    @on_queued.setter
    def on_queued(self, callback: Callable[[], None] | None) -> None:
        self.inner.on_queued = callback

    def __getattr__(self, name: str) -> Any:
        # Whatever else the inner store offers (a durable store's lease,
        # poll_interval, finish_in...) is the inner store's.
        return getattr(self.inner, name)

    async def claim(self, limit: int) -> list[Claimed]:
        return await self.inner.claim(limit)

    async def release(self, job_ids: list[str]) -> None:
        await self.inner.release(job_ids)

    async def renew(self) -> list[str]:
        return await self.inner.renew()

    async def recover(self) -> int:
        return await self.inner.recover()

    async def forget_finished(self) -> int:
        return await self.inner.forget_finished()

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def enqueue(self, job: Job) -> None:
        await anyio.to_thread.run_sync(self.tracker.track, job.id)
        await self.inner.enqueue(job)

    async def enqueue_many(self, jobs: list[Job]) -> None:
        def track_all() -> None:
            for job in jobs:
                self.tracker.track(job.id)

        await anyio.to_thread.run_sync(track_all)
        await self.inner.enqueue_many(jobs)

    async def enqueue_in(self, session: Any, job: Job) -> None:
        await anyio.to_thread.run_sync(self.tracker.track, job.id)
        await self.inner.enqueue_in(session, job)

    async def start(self, job_id: str) -> bool:
        return await self.inner.start(job_id)

    def report_progress(self, job_id: str, value: float, data: Any) -> None:
        self.inner.report_progress(job_id, value, data)
        self.tracker.set_progress(job_id, value, data)

    async def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        # The tracker first: whoever sees the job end must find no progress.
        await anyio.to_thread.run_sync(self.tracker.remove, job_id)
        return await self.inner.finish(
            job_id, state, result=result, error=error, traceback=traceback
        )

    async def retry(self, job_id: str, *, error: str, delay: float) -> bool:
        return await self.inner.retry(job_id, error=error, delay=delay)

    async def cancel(self, job_id: str) -> JobState | None:
        status = await self.inner.get(job_id)
        if status is not None and not status.is_final:
            await anyio.to_thread.run_sync(self.tracker.remove, job_id)
        return await self.inner.cancel(job_id)

    async def get(self, job_id: str) -> JobStatus | None:
        return await self.inner.get(job_id)

    async def outcome(self, job_id: str) -> Outcome | None:
        return await self.inner.outcome(job_id)

    def watch(self, job_id: str) -> AsyncIterator[JobStatus]:
        return self.inner.watch(job_id)

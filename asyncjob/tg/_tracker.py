"""The seed's progress trackers, told of each job's life by the runner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import anyio.to_thread

from asyncjob._engine.hooks import JobHooks, JobInfo

__all__ = ("ProgressTracker", "TrackerHooks")


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


class TrackerHooks(JobHooks):
    """Tells a :class:`ProgressTracker` of each job performed, each progress
    report, and each job's end, before the store records it.

    Its calls that come from the event loop run in a worker thread, as a
    tracker may block (Redis); progress reports come from the job itself,
    in its own thread for a sync job.
    """

    def __init__(self, tracker: ProgressTracker) -> None:
        self.tracker = tracker

    async def enqueued(self, jobs: Sequence[JobInfo]) -> None:
        def track_all() -> None:
            for job in jobs:
                self.tracker.track(job.id)

        await anyio.to_thread.run_sync(track_all)

    def progress(self, job_id: str, value: float, data: Any) -> None:
        self.tracker.set_progress(job_id, value, data)

    async def ending(self, job_id: str) -> None:
        # Before the store: whoever sees the job end must find no progress.
        await anyio.to_thread.run_sync(self.tracker.remove, job_id)

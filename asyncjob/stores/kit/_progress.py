"""Progress reports, coalesced: many set_progress calls, few writes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from asyncjob._core.log import logger

__all__ = ("PROGRESS_INTERVAL", "ProgressBuffer", "Report")

#: A job's progress is written at most this often (seconds): set_progress
#: may be called thousands of times a second, the database sees a few.
PROGRESS_INTERVAL = 0.1

#: ``(value, data)``, as the store keeps them (data as JSON text, say).
Report = tuple[float, Any]


class ProgressBuffer:
    """Keeps the latest report of each job until a flush writes them all.

    :meth:`report` may be called from any thread and only takes a lock;
    the flusher task, on the loop, writes what has gathered, then waits
    :data:`PROGRESS_INTERVAL` before it writes again.
    """

    def __init__(self, write: Callable[[dict[str, Report]], Awaitable[None]]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._pending: dict[str, Report] = {}
        # What the flush in flight writes: not stored yet, as far as we know.
        self._writing: dict[str, Report] = {}
        self._scheduled = False
        self._due = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the flusher on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._flush_forever())

    async def stop(self) -> None:
        """Stop the flusher, after writing what is pending."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()

    def report(self, job_id: str, report: Report) -> None:
        """Keep ``report`` as the job's latest; from any thread."""
        with self._lock:
            self._pending[job_id] = report
            if self._scheduled:
                return
            self._scheduled = True
        loop = self._loop
        if loop is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._due.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed: stopping
                loop.call_soon_threadsafe(self._due.set)

    def take(self, job_id: str) -> Report | None:
        """Remove and return the job's latest report that may not be stored
        yet, for its final write; from any thread, without waiting.

        That is the one still pending, or the one a flush in flight is
        writing: the flush may land after the job's end (its write then
        changes nothing, as the job no longer runs), so the end carries it.
        """
        if not self._pending and not self._writing:
            # Most jobs report nothing: no lock then. This job's reports
            # came before its end (its code has returned), and a flush
            # moves them to _writing before it empties _pending.
            return None
        with self._lock:
            report = self._pending.pop(job_id, None)
            return report if report is not None else self._writing.get(job_id)

    async def flush(self) -> None:
        """Write every pending report now."""
        async with self._flushing:
            with self._lock:
                # In this order, for take()'s look without the lock: a
                # report is always in one of the two.
                pending = self._writing = self._pending
                self._pending = {}
                self._scheduled = False
            try:
                if pending:
                    await self._write(pending)
            finally:
                with self._lock:
                    self._writing = {}

    async def _flush_forever(self) -> None:
        while True:
            await self._due.wait()
            self._due.clear()
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - best effort: the next report retries
                logger.exception("could not write job progress")
            # At most one write of each job's progress per interval.
            await asyncio.sleep(PROGRESS_INTERVAL)

"""Waking the watchers of a job when it changes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ("Signals", "wait_for")


class Signals:
    """Wakes the watchers of a job when this process changes it, or hears
    (from PostgreSQL's notifications) that another did.

    A watcher subscribes *before* it reads the job, so that a change made
    between its read and its wait is not missed: the change sets the event,
    and the wait returns at once.
    """

    def __init__(self) -> None:
        self._events: dict[str, list[asyncio.Event]] = {}

    def notify(self, job_id: str) -> None:
        for event in self._events.get(job_id, ()):
            event.set()

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set on every change of the job, for as long as the
        ``with`` block lasts; clear it before each read of the job."""
        event = asyncio.Event()
        self._events.setdefault(job_id, []).append(event)
        try:
            yield event
        finally:
            events = self._events[job_id]
            events.remove(event)
            if not events:
                del self._events[job_id]


async def wait_for(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set, or ``timeout`` seconds pass."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass

"""Waking the watchers of a job when this process changes it."""

from __future__ import annotations

import asyncio

__all__ = ("Signals",)


class Signals:
    """Wakes the watchers of a job when this process changes it."""

    def __init__(self) -> None:
        self._events: dict[str, list[asyncio.Event]] = {}

    def notify(self, job_id: str) -> None:
        for event in self._events.get(job_id, ()):
            event.set()

    async def wait(self, job_id: str, timeout: float) -> None:
        """Until the job changes here, or ``timeout`` seconds pass."""
        event = asyncio.Event()
        self._events.setdefault(job_id, []).append(event)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            events = self._events[job_id]
            events.remove(event)
            if not events:
                del self._events[job_id]

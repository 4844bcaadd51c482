"""Fan-out of job statuses to the tasks watching them, in one event loop."""

from __future__ import annotations

import asyncio
from collections import deque

from asyncjob._models import JobStatus

__all__ = ("StatusHub", "Subscription")


class Subscription:
    """One watcher's mailbox: statuses in the order they were published.

    It holds at most ``backlog`` statuses; a watcher that falls that far
    behind loses the oldest ones. The final status is published last, so it
    is never the one lost.
    """

    __slots__ = ("_event", "_pending", "job_id")

    def __init__(self, job_id: str, backlog: int) -> None:
        self.job_id = job_id
        self._pending: deque[JobStatus] = deque(maxlen=backlog)
        self._event = asyncio.Event()

    def put(self, status: JobStatus) -> None:
        self._pending.append(status)
        self._event.set()

    async def get(self) -> JobStatus:
        """The next status published for this job, waiting for one if needed."""
        while not self._pending:
            self._event.clear()
            await self._event.wait()
        return self._pending.popleft()


class StatusHub:
    """Keeps who watches which job, and hands each of them every change.

    Not thread-safe: use it from its loop only. Publishing to a job nobody
    watches costs one dict lookup, so stores may publish unconditionally,
    but should check :meth:`watched` before building a status just for it.
    """

    def __init__(self, backlog: int = 1000) -> None:
        self._backlog = backlog
        self._subs: dict[str, list[Subscription]] = {}

    def subscribe(self, job_id: str) -> Subscription:
        sub = Subscription(job_id, self._backlog)
        self._subs.setdefault(job_id, []).append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.job_id)
        if subs is None:
            return
        subs.remove(sub)
        if not subs:
            del self._subs[sub.job_id]

    def watched(self, job_id: str) -> bool:
        return job_id in self._subs

    def publish(self, status: JobStatus) -> None:
        for sub in self._subs.get(status.id, ()):
            sub.put(status)

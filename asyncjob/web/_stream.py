"""The live stream of one or many jobs: what a browser's ``EventSource``
reads, built on :meth:`Runner.watch <asyncjob.Runner.watch>`.

Every event's ``data`` is the job's status (see :func:`status_json`), its
``id`` a number that grows along the stream. A job's first event is its
status as it is now: a browser that reconnects (sending ``Last-Event-ID``)
gets a full snapshot first, then the changes, and never has to know what it
missed. Each job's final status is its last event; the stream ends after the
last job's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

from sse_starlette import ServerSentEvent

from asyncjob._core.errors import JobNotFound
from asyncjob._core.log import logger
from asyncjob._core.models import JobStatus
from asyncjob._core.views import dumps, status_json
from asyncjob._runner.runner import Runner

__all__ = ("COALESCE", "Feeds", "job_events")

#: Of a job whose progress changes faster, one event per this many seconds
#: at most, with the latest status: the bar moves a few times a second, and
#: a job reporting in a tight loop does not flood the browser. Its final
#: status is sent at once.
COALESCE = 0.2


#: What a feed tells a stream: ``(job_id, status, its JSON)``, or
#: ``(job_id, None, None)`` once it has nothing more to say of the job.
Tell = Callable[[str, JobStatus | None, str | None], None]


class _Feed:
    __slots__ = ("followers", "latest", "task")

    def __init__(self) -> None:
        self.followers: set[Tell] = set()
        self.latest: tuple[JobStatus, str] | None = None
        self.task: asyncio.Task[None] | None = None


class Feeds:
    """One watch of each job per dashboard, however many streams follow it:
    each status is read once, encoded once, and handed to every stream that
    follows the job. (A watch per stream cost 1,000 watches, 2,000 task
    wake-ups and 3,000 JSON encodings per change for a job a thousand
    browsers follow: bench/sse.py.)"""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._feeds: dict[str, _Feed] = {}

    @contextlib.contextmanager
    def follow(self, job_id: str, tell: Tell) -> Iterator[None]:
        """Tell ``tell`` of the job's status now (or as soon as it is read),
        then of each change, then that it ended, while the block runs."""
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = _Feed()
            feed.task = asyncio.get_running_loop().create_task(self._watch(job_id, feed))
        feed.followers.add(tell)
        if feed.latest is not None:
            tell(job_id, *feed.latest)
        try:
            yield
        finally:
            feed.followers.discard(tell)
            if not feed.followers and self._feeds.get(job_id) is feed:
                del self._feeds[job_id]
                if feed.task is not None:
                    feed.task.cancel()

    async def _watch(self, job_id: str, feed: _Feed) -> None:
        try:
            async for status in self._runner.watch(job_id):
                feed.latest = (status, dumps(status_json(status)))
                for tell in list(feed.followers):
                    tell(job_id, *feed.latest)
        except JobNotFound:
            pass  # forgotten (purged) while watched: nothing more to say
        except Exception:  # noqa: BLE001 - the client reconnects, and reads it anew
            logger.exception("could not watch job %s; its streams end", job_id)
        finally:
            if self._feeds.get(job_id) is feed:
                del self._feeds[job_id]
            for tell in list(feed.followers):
                tell(job_id, None, None)


async def job_events(
    feeds: Feeds,
    job_ids: Sequence[str],
    *,
    last_event_id: int = 0,
    coalesce: float = COALESCE,
) -> AsyncIterator[ServerSentEvent]:
    """The events of ``job_ids``, until every one of them has ended (or been
    forgotten by the store meanwhile).

    Each job's feed puts the latest status it saw into a table that this
    generator drains: a slow client skips intermediate statuses, never a
    final one, and holds no growing buffer.
    """
    latest: dict[str, tuple[JobStatus, str]] = {}
    changed = asyncio.Event()
    watching = set(job_ids)

    def tell(job_id: str, status: JobStatus | None, encoded: str | None) -> None:
        if status is None or encoded is None:
            watching.discard(job_id)
        else:
            latest[job_id] = (status, encoded)
        changed.set()

    sent_at: dict[str, float] = {}
    number = last_event_id
    with contextlib.ExitStack() as following:
        for job_id in dict.fromkeys(job_ids):
            following.enter_context(feeds.follow(job_id, tell))
        while latest or watching:
            # Cleared before the table is read, not after: a status recorded
            # while an event was being sent would otherwise never wake us.
            changed.clear()
            wake_in: float | None = None
            now = time.monotonic()
            for job_id, (status, encoded) in list(latest.items()):
                due = sent_at.get(job_id, -coalesce) + coalesce
                if not status.is_final and due > now:
                    wake_in = due - now if wake_in is None else min(wake_in, due - now)
                    continue
                del latest[job_id]
                sent_at[job_id] = now
                number += 1
                yield ServerSentEvent(data=encoded, id=str(number))
            if not latest and not watching:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wake_in):
                    await changed.wait()

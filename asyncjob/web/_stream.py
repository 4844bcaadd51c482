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
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

from sse_starlette import ServerSentEvent

from asyncjob._core.errors import JobNotFound
from asyncjob._core.log import logger
from asyncjob._core.models import JobStatus
from asyncjob._core.views import dumps, status_json
from asyncjob._runner.runner import Runner

__all__ = ("COALESCE", "job_events")

#: Of a job whose progress changes faster, one event per this many seconds
#: at most, with the latest status: the bar moves a few times a second, and
#: a job reporting in a tight loop does not flood the browser. Its final
#: status is sent at once.
COALESCE = 0.2


async def job_events(
    runner: Runner,
    job_ids: Sequence[str],
    *,
    last_event_id: int = 0,
    coalesce: float = COALESCE,
) -> AsyncIterator[ServerSentEvent]:
    """The events of ``job_ids``, until every one of them has ended (or been
    forgotten by the store meanwhile).

    One watch per job, each feeding the latest status it saw into a table
    that this generator drains: a slow client skips intermediate statuses,
    never a final one, and holds no growing buffer.
    """
    latest: dict[str, JobStatus] = {}
    changed = asyncio.Event()
    watching = set(job_ids)

    async def watch(job_id: str) -> None:
        try:
            async for status in runner.watch(job_id):
                latest[job_id] = status
                changed.set()
        except JobNotFound:
            pass  # forgotten (purged) while watched: nothing more to say
        except Exception:  # noqa: BLE001 - the client reconnects, and reads it anew
            logger.exception("could not watch job %s; its stream ends", job_id)
        finally:
            watching.discard(job_id)
            changed.set()

    sent_at: dict[str, float] = {}
    number = last_event_id
    async with _tasks([watch(job_id) for job_id in dict.fromkeys(job_ids)]):
        while latest or watching:
            # Cleared before the table is read, not after: a status recorded
            # while an event was being sent would otherwise never wake us.
            changed.clear()
            wake_in: float | None = None
            now = time.monotonic()
            for job_id, status in list(latest.items()):
                due = sent_at.get(job_id, -coalesce) + coalesce
                if not status.is_final and due > now:
                    wake_in = due - now if wake_in is None else min(wake_in, due - now)
                    continue
                del latest[job_id]
                sent_at[job_id] = now
                number += 1
                yield ServerSentEvent(data=dumps(status_json(status)), id=str(number))
            if not latest and not watching:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wake_in):
                    await changed.wait()


@contextlib.asynccontextmanager
async def _tasks(coroutines: list[Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Run the watches while the stream lasts; cancel what is left when it
    ends (the client went away, the server stops)."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

"""Lease renewal in a thread of its own, so that a busy loop keeps its jobs.

A coroutine job that computes for a minute without awaiting blocks its
event loop; if leases were renewed on that loop, they would run out, and
another worker would run the job again while the first still runs it: the
duplicate that job queues are most blamed for. So the leases are renewed
by a thread with an event loop and a connection of its own, which runs
whatever the store's loop is doing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager

from asyncjob._core import defaults
from asyncjob._core.log import logger

__all__ = ("LeaseThread", "Renew")

#: ``await renew(job_ids)``: extend the leases of ``job_ids``; return those
#: among them that are no longer held, and those whose cancel was requested.
Renew = Callable[[list[str]], Awaitable[tuple[list[str], list[str]]]]


class LeaseThread:
    """Every ``interval`` seconds, renews the leases of the jobs ``held()``
    returns, and collects for :meth:`take` those no longer held and those
    whose cancel was requested.

    Args:
        interval: seconds between two renewals (a third of the lease, say).
        held: the jobs held now, each id with what tells its attempt apart
            (the attempt): called from the thread, so it must be
            thread-safe (a copy of a dict is). A job found no longer held
            is told of with it, for the store to tell whether it is still
            the attempt it holds: one retried and claimed again between the
            copy and the renewal was found lost, and its next attempt
            stopped, cancelled, by nobody's wish.
        connect: opens, in the thread's own loop, what renews: an async
            context manager that gives a :data:`Renew` function, and
            closes its connection on exit.
    """

    def __init__(
        self,
        interval: float,
        held: Callable[[], Mapping[str, object]],
        connect: Callable[[], AbstractAsyncContextManager[Renew]],
    ) -> None:
        self._interval = interval
        self._held = held
        self._connect = connect
        self._lost: list[tuple[str, object]] = []
        self._cancelled: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="asyncjob-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop renewing; returns once the thread has ended (or ``timeout``)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """True while the thread renews."""
        return self._thread.is_alive()

    def take(self) -> tuple[list[tuple[str, object]], list[str]]:
        """The jobs found no longer held (each id with its attempt, as
        ``held()`` gave it), and those found with their cancel requested,
        since the last call."""
        with self._lock:
            found = self._lost, self._cancelled
            self._lost, self._cancelled = [], []
        return found

    def _run(self) -> None:
        asyncio.run(self._renew_forever())

    async def _renew_forever(self) -> None:
        """Renew every ``interval``; a renewal that failed, again within a
        second. A renewal unanswered for half an interval is given up and
        sent again on a new connection: one sent on a connection whose other
        end vanished without a word (a NAT or a firewall that forgot it, a
        server failed over) waited for TCP to give up, a quarter of an hour,
        while the leases ran out and other workers ran the jobs again.
        Half an interval, as giving one up takes time of its own (asyncpg
        waits 2 s to cancel the statement), and the next must be answered
        before the lease runs out: a lease of 6 s or more leaves room."""
        pause = self._interval
        try:
            async with self._connect() as renew:
                while not self._stop.wait(pause):
                    pause = self._interval
                    held = self._held()
                    if not held:
                        continue
                    try:
                        async with asyncio.timeout(self._interval / 2):
                            lost, cancelled = await renew(list(held))
                    except TimeoutError:
                        logger.error(
                            "renewing leases had no answer within %.2f s (half the time between "
                            "two renewals); trying again on a new connection. Should none answer "
                            "before the lease runs out, another worker would run the jobs again "
                            "while they run here (a longer lease gives more room)",
                            self._interval / 2,
                        )
                        pause = 0
                        continue
                    except Exception:  # noqa: BLE001 - the database may come back
                        logger.exception("could not renew leases; trying again")
                        pause = min(defaults.RETRY_AFTER, self._interval)
                        continue
                    if lost or cancelled:
                        with self._lock:
                            self._lost.extend((job_id, held[job_id]) for job_id in lost)
                            self._cancelled.extend(cancelled)
        except Exception:  # noqa: BLE001 - a thread has nobody to raise to
            logger.exception("the lease thread stopped")

"""Lease renewal in a thread of its own, so that a busy loop keeps its jobs.

A coroutine job that computes for a minute without awaiting blocks its
event loop; if leases were renewed on that loop, they would run out, and
another worker would run the job again while the first still runs it: the
duplicate that job queues are most blamed for. So the leases are renewed
by a thread with an event loop and a database connection of its own, which
runs whatever the main loop is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from asyncjob._execution import logger

from . import _claims
from ._engine import Database
from ._schema import Tables

__all__ = ("LeaseKeeper",)


class LeaseKeeper:
    """Renews, every ``interval`` seconds, the leases of the jobs ``held()``
    returns, and collects those no longer held for :meth:`take_lost`."""

    def __init__(
        self,
        url: str,
        tables: Tables,
        owner: str,
        lease: float,
        held: Callable[[], frozenset[str]],
    ) -> None:
        self._url = url
        self._tables = tables
        self._owner = owner
        self._lease = lease
        self._held = held
        self._lost: list[str] = []
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

    def take_lost(self) -> list[str]:
        """The jobs found no longer held since the last call."""
        with self._lock:
            lost, self._lost = self._lost, []
        return lost

    def _run(self) -> None:
        asyncio.run(self._renew_forever())

    async def _renew_forever(self) -> None:
        db = Database(self._url)
        try:
            while not self._stop.wait(self._lease / 3):
                held = list(self._held())
                if not held:
                    continue
                try:
                    lost = await _claims.renew(db, self._tables, self._owner, held, self._lease)
                except Exception:  # noqa: BLE001 - the database may come back
                    logger.exception("could not renew leases; trying again")
                    continue
                if lost:
                    with self._lock:
                        self._lost.extend(lost)
        finally:
            with contextlib.suppress(Exception):
                await db.dispose()

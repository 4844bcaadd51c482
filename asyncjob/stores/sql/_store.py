"""A store in an SQL database: SQLite on one machine, PostgreSQL for many."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import bindparam, select, update

from asyncjob._errors import JobNotFound
from asyncjob._models import Claimed, JobState, JobStatus, Outcome
from asyncjob._serialization import dumps
from asyncjob.stores._base import Store

from . import _claims
from ._batch import GroupCommit
from ._beginnings import JobBeginnings
from ._endings import JobEndings
from ._engine import Database
from ._keeper import LeaseKeeper
from ._listen import Listener
from ._progress import ProgressBuffer, Report
from ._rows import BadRecord, json_column, state_of, status_of
from ._schema import Tables, channels, ensure_schema
from ._signals import Signals, wait_for
from ._writes import Ending, Writes, writes_for

__all__ = ("BadRecord", "SQLStore")

#: It goes into table, index, trigger and channel names, unquoted.
_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,30}")


class SQLStore(JobBeginnings, JobEndings, Store):
    """Jobs in SQL tables, readable from every process that opens the store.

    Args:
        url: an SQLAlchemy async URL: ``sqlite+aiosqlite:///path/jobs.db``
            or ``postgresql+asyncpg://user@host/db``.
        table_prefix: the tables are ``<prefix>jobs`` and ``<prefix>meta``.
        poll_interval: how often a watcher reads a job that another process
            may change, and a worker looks for queued jobs (seconds);
            changes made here wake them at once.
        lease: how long a worker holds a claimed job without renewing
            (seconds): a dead worker's jobs run again elsewhere this long
            after it last renewed. Workers renew at a third of it.
        keep_finished: seconds a finished job stays readable (default a
            week); older ones are deleted by the workers, a few hundred at
            a time.
    """

    durable = True

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = "asyncjob_",
        poll_interval: float = 0.25,
        lease: float = 30.0,
        keep_finished: float = 7 * 24 * 3600.0,
    ) -> None:
        if not _PREFIX.fullmatch(table_prefix):
            raise ValueError(
                f"table_prefix must be lower-case letters, digits and underscores, "
                f"starting with a letter or underscore, not {table_prefix!r}"
            )
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, not {poll_interval!r}")
        if not lease > 0:
            raise ValueError(f"lease must be > 0 seconds, not {lease!r}")
        if not keep_finished >= 0:
            raise ValueError(f"keep_finished must be >= 0 seconds, not {keep_finished!r}")
        self.keep_finished = keep_finished
        self.url = url
        self.poll_interval = poll_interval
        self.lease = lease
        #: The jobs this store object holds, under a lease it renews: the
        #: registered jobs it claimed, and the others it was given to run.
        self.held: set[str] = set()
        self.tables = Tables(table_prefix)
        self._writes: Writes | None = None
        self._signals = Signals()
        #: Identifies this process as the owner of the jobs it runs itself.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._progress = ProgressBuffer(self._write_progress)
        # Jobs performed, and jobs ended, at the same time share a statement.
        self._enqueues: GroupCommit[dict[str, Any], None] = GroupCommit(self._insert)
        self._finishes: GroupCommit[Ending, bool] = GroupCommit(self._finish)
        self._listener: Listener | None = None
        self._keeper: LeaseKeeper | None = None
        self._queued_channel, self._changed_channel = channels(self.tables)
        jobs = self.tables.jobs
        by_id = jobs.c.id == bindparam("id")
        self._get = select(jobs).where(by_id)
        self._outcome = select(jobs.c.state, jobs.c.result, jobs.c.error, jobs.c.traceback).where(
            by_id
        )

    @property
    def writes(self) -> Writes:
        if self._writes is None:
            raise RuntimeError("the store is not open: a Runner opens it when it starts")
        return self._writes

    @property
    def db(self) -> Database:
        return self.writes.db

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        db = Database(self.url)
        try:
            async with db.write() as conn:
                await conn.run_sync(ensure_schema, self.tables)
        except BaseException:
            await db.dispose()  # nothing is left open by a store that cannot open
            raise
        self._writes = writes_for(db, self.tables, self.owner)
        self._progress.start()
        self._keeper = LeaseKeeper(
            self.url, self.tables, self.owner, self.lease, lambda: frozenset(self.held)
        )
        self._keeper.start()
        if not db.is_sqlite:
            self._listener = Listener(self.url, self._notified)
            if self.on_queued is not None:  # a worker: it wants to hear of new jobs
                await self._listener.listen(self._queued_channel)

    async def close(self) -> None:
        if self._keeper is not None:
            await asyncio.to_thread(self._keeper.stop)
        if self._listener is not None:
            await self._listener.stop()
        await self._progress.stop()
        if self._writes is not None:
            await self._writes.close()
            await self._writes.db.dispose()

    def _notified(self, channel: str, payload: str) -> None:
        if channel == self._changed_channel:
            for job_id in payload.split(","):
                self._signals.notify(job_id)
        elif self.on_queued is not None:
            self.on_queued()

    def report_progress(self, job_id: str, value: float, data: Any) -> None:
        encoded = None if data is None else dumps(data, "the progress data")
        self._progress.report(job_id, (value, encoded))

    async def cancel(self, job_id: str) -> JobState | None:
        jobs = self.tables.jobs
        self.held.discard(job_id)
        async with self.db.write() as conn:
            found = await conn.scalar(
                select(jobs.c.state).where(jobs.c.id == job_id).with_for_update()
            )
            if found is None:
                return None
            before = state_of(job_id, found)
            if not before.is_final:
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        state=JobState.cancelled.value,
                        finished_at=time.time(),
                        locked_by=None,
                        lease_expires_at=None,
                    )
                )
        if not before.is_final:
            self._signals.notify(job_id)
        return before

    async def claim(self, limit: int) -> list[Claimed]:
        claimed = await self.writes.claim(limit, self.lease)
        self.held.update(c.id for c in claimed)
        for c in claimed:
            self._signals.notify(c.id)
        return claimed

    async def release(self, job_ids: list[str]) -> None:
        await _claims.release(self.db, self.tables, self.owner, job_ids)
        self.held.difference_update(job_ids)
        for job_id in job_ids:
            self._signals.notify(job_id)

    async def renew(self) -> list[str]:
        # The renewing itself is the keeper thread's (see _keeper): here,
        # only what it found lost is taken.
        lost = self._keeper.take_lost() if self._keeper is not None else []
        self.held.difference_update(lost)
        return lost

    async def recover(self) -> int:
        return await _claims.recover(self.db, self.tables)

    async def forget_finished(self) -> int:
        return await _claims.purge(self.db, self.tables, self.keep_finished)

    async def get(self, job_id: str) -> JobStatus | None:
        row = (await self.db.fetch(self._get, {"id": job_id})).first()
        return None if row is None else status_of(row)

    async def outcome(self, job_id: str) -> Outcome | None:
        row = (await self.db.fetch(self._outcome, {"id": job_id})).first()
        if row is None:
            return None
        state = state_of(job_id, row.state)
        return Outcome(state, json_column(job_id, "result", row.result), row.error, row.traceback)

    async def watch(self, job_id: str) -> AsyncIterator[JobStatus]:
        if self._listener is not None:  # the first watcher here starts hearing of changes
            await self._listener.listen(self._changed_channel)
        with self._signals.subscribe(job_id) as changed:
            status = await self.get(job_id)
            if status is None:
                raise JobNotFound(job_id)
            yield status
            while not status.is_final:
                await wait_for(changed, self.poll_interval)
                changed.clear()
                now = await self.get(job_id)
                if now is None:
                    return  # forgotten meanwhile
                if now != status:
                    status = now
                    yield status

    # -- helpers ------------------------------------------------------------

    async def _finish(self, endings: list[Ending]) -> list[bool]:
        return await self.writes.finish(endings)

    async def _write_progress(self, pending: dict[str, Report]) -> None:
        await self.writes.progress(pending)
        for job_id in pending:
            self._signals.notify(job_id)

"""A store in an SQL database: SQLite on one machine, PostgreSQL for many."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Float,
    Integer,
    Row,
    Select,
    Update,
    and_,
    bindparam,
    case,
    delete,
    event,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from asyncjob._core import defaults
from asyncjob._core.errors import JobLost, JobNotFound
from asyncjob._core.log import logger
from asyncjob._core.models import (
    A_MICROSECOND,
    COUNT_CAP,
    MAX_LISTED,
    MAX_NAME_LENGTH,
    Claimed,
    Job,
    JobPage,
    JobQuery,
    JobState,
    JobStatus,
    Outcome,
    Overview,
    ScheduleStatus,
    WorkerStatus,
    made,
    minutes_of_the_last_hour,
    timestamp_to_datetime,
)
from asyncjob._core.spec import JobOptions
from asyncjob.stores._base import DurableStore, TransactionalStore, unknown_store
from asyncjob.stores.kit import (
    GroupCommit,
    LeaseThread,
    ProgressBuffer,
    Renew,
    Report,
    Watchers,
    dumps,
    loads,
    storable_text,
)

from ._database import Database, refused, same_database
from ._dialect import Dialect, Ending, Listener
from ._rows import BadRecord, json_column, state_of, status_of
from ._schema import DUE, HOLDS_KEY, RUNNING, SCHEDULED, Tables, ensure_schema

__all__ = ("WORKER_LOST", "SQLStore")

#: It goes into table, index, trigger and channel names, unquoted.
_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,30}")

_QUEUED = JobState.queued.value
#: The states of a job queued, in the table (see ``SCHEDULED``).
_WAITING = (_QUEUED, SCHEDULED)
#: The options of a job performed without any.
_DEFAULTS = JobOptions()
_RUNNING = JobState.running.value
_CANCELLED = JobState.cancelled.value

#: The error of a job that was not registered and whose process died.
WORKER_LOST = (
    "worker lost: the process that performed this job stopped renewing it (it died "
    "or lost the database); a job that is not registered with @asyncjob.job runs "
    "only in the process that performed it, so no other worker could take it over"
)

#: Finished jobs deleted per statement: small, so that no lock is held long.
PURGE_BATCH = 500

#: Of the jobs that ended over the last hour, the overview counts the last
#: this many at most: at a higher rate, its chart shows the latest minutes.
ENDED_CAP = 200_000

#: A page of a listing filtered by state, name or queue looks at this many
#: jobs at most (see SQLStore.list_page): 5 ms on PostgreSQL, 12.5 on SQLite
#: at a million jobs (bench/listing.py).
LIST_WINDOW = 20_000

#: Seconds a worker that stopped sending heartbeats (it crashed) stays listed.
WORKERS_KEPT = 86_400.0

_ENDED = [JobState.succeeded.value, JobState.failed.value, JobState.cancelled.value]

#: The longest error kept when the database refused the real one.
_ERROR_LENGTH = 2000

_GONE = object()


def _duplicate_key(exc: DBAPIError) -> bool:
    """True for the error of a key the table holds already (on PostgreSQL
    its SQLSTATE, on SQLite the name of its constraint error)."""
    orig = exc.orig
    return getattr(orig, "sqlstate", None) == "23505" or getattr(
        orig, "sqlite_errorname", None
    ) in ("SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE")


#: The SQL stores' URLs, by driver: the one list of them, with each one's
#: dialect (its module and class), imported when a store uses it: a worker
#: on PostgreSQL does not load ``sqlite3`` (a megabyte of its memory).
DIALECTS: dict[str, tuple[str, str]] = {
    "sqlite+aiosqlite": ("._sqlite", "SQLiteDialect"),
    "postgresql+asyncpg": ("._postgres", "PostgresDialect"),
}


def dialect_for(url: str, tables: Tables, owner: str) -> Dialect:
    """The dialect of an SQLAlchemy URL: the one list of the SQL stores' URLs.

    Raises:
        ValueError: no SQL store takes this URL.
    """
    try:
        driver = make_url(url).drivername
    except Exception:  # noqa: BLE001 - SQLAlchemy raises several kinds for a bad URL
        driver = None
    found = DIALECTS.get(driver or "")
    if found is None:
        raise ValueError(unknown_store(url))
    module, name = found
    dialect: type[Dialect] = getattr(importlib.import_module(module, __package__), name)
    return dialect(url, tables, owner)


#: Where commits are announced but not what they changed (SQLite), the
#: cancels of the jobs held here are read at most this often (seconds).
CANCELS_READ_EVERY = 0.05


class SQLStore(DurableStore, TransactionalStore):
    """Jobs in SQL tables, readable from every process that opens the store.

    What differs between the databases is its dialect's (see ``_dialect``):
    this class says what each step of a job's life writes.

    Args:
        url: an SQLAlchemy async URL: ``sqlite+aiosqlite:///path/jobs.db``
            or ``postgresql+asyncpg://user@host/db``.
        table_prefix: the tables are ``<prefix>jobs`` and ``<prefix>meta``.
        poll_interval: how often a watcher reads a job that another process
            may change, and a worker looks for queued jobs (seconds), for
            changes nobody announced: those made here, and on PostgreSQL
            and on SQLite under Linux those made anywhere, wake them at
            once. Default: 1 s where other processes' changes are heard
            of, 0.25 s where they are not.
        lease: how long a worker holds a claimed job without renewing
            (seconds): a dead worker's jobs run again elsewhere this long
            after it last renewed. Workers renew at a third of it, and learn
            then of cancels made in other processes.
        keep_finished: seconds a finished job stays readable (default a
            week); older ones are deleted by the workers, a few hundred at
            a time.

    Raises:
        ValueError: the URL is not one of an SQL store, or an option is out
            of range.
    """

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = defaults.TABLE_PREFIX,
        poll_interval: float | None = None,
        lease: float = defaults.LEASE,
        keep_finished: float = defaults.KEEP_FINISHED,
    ) -> None:
        if not _PREFIX.fullmatch(table_prefix):
            raise ValueError(
                f"table_prefix must be lower-case letters, digits and underscores, "
                f"starting with a letter or underscore, not {table_prefix!r}"
            )
        if table_prefix.startswith("sqlite_"):
            raise ValueError(
                f"table_prefix {table_prefix!r} is reserved: SQLite keeps the names that "
                "begin with sqlite_ for itself"
            )
        for option, value in (("poll_interval", poll_interval), ("lease", lease)):
            # Not infinite either: a lease that never runs out leaves a dead
            # worker's jobs running for good.
            if value is not None and not 0 < value < float("inf"):
                raise ValueError(f"{option} must be a finite number of seconds > 0, not {value!r}")
        if not keep_finished >= 0:
            raise ValueError(f"keep_finished must be >= 0 seconds, not {keep_finished!r}")
        self.url = url
        self.keep_finished = float(keep_finished)
        self._poll_given = None if poll_interval is None else float(poll_interval)
        self._lease = float(lease)
        self.tables = Tables(table_prefix)
        #: Identifies this store object as the holder of the jobs it runs.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._opened_at = time.time()
        self._dialect: Dialect = dialect_for(url, self.tables, self.owner)
        #: The jobs this store object holds, under a lease it renews, with the
        #: attempt it holds: the registered jobs it claimed, and the others
        #: it was given to run (attempt ``None``: only this process runs
        #: them). A job is held until its end is written.
        self.held: dict[str, int | None] = {}
        # The jobs of the last claim that were held here already (their
        # lease taken back while the worker was late): the producer hands
        # them back (release); their attempt then counts, and stays held
        # until the end of the attempt that ran here is written.
        self._claimed_again: set[str] = set()
        #: enqueue_sql's statements, compiled, by the shape of the job.
        self._dbapi_inserts: dict[
            tuple[bool, bool], tuple[str, list[str], str | None, list[str]]
        ] = {}
        # Held jobs whose cancel request was handed to the runner already.
        self._stopping: set[str] = set()
        self._db: Database | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_queued: Callable[[], None] | None = None
        self._on_cancel: Callable[[], None] | None = None
        # Held jobs whose cancel was heard of, for the next renew().
        self._cancels_heard: list[str] = []
        self._hearing_cancels = False
        self._watching_cancels: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        # What bare announcements (SQLite's) ask to read, and the task
        # reading it, channel by channel; the watched jobs as last read.
        self._to_look: set[str] = set()
        self._looking: dict[str, asyncio.Task[None]] = {}
        self._seen: dict[str, tuple[Any, ...]] = {}
        self._leases: LeaseThread | None = None
        # Watchers re-read the job on any change: a bare "it changed" each.
        self._watchers: Watchers[None] = Watchers(1)
        self._progress = ProgressBuffer(self._write_progress)
        # Jobs performed, and jobs ended, at the same time share a statement.
        self._enqueues: GroupCommit[dict[str, Any], str] = GroupCommit(self._insert)
        self._finishes: GroupCommit[Ending, str | None] = GroupCommit(self._finish)
        self._channels = self._dialect.channels()
        jobs = self.tables.jobs
        by_id = jobs.c.id == bindparam("id")
        self._get = select(jobs).where(by_id)
        self._outcome = select(jobs.c.state, jobs.c.result, jobs.c.error, jobs.c.traceback).where(
            by_id
        )

    @property
    def lease(self) -> float:
        return self._lease

    @property
    def poll_interval(self) -> float:
        if self._poll_given is not None:
            return self._poll_given
        if self._listener is None:
            return defaults.POLL_INTERVAL
        return defaults.POLL_INTERVAL_LISTENING

    @property
    def db(self) -> Database:
        """The store's database (once it is open)."""
        if self._db is None:
            raise RuntimeError("the store is not open: a Runner opens it when it starts")
        return self._db

    # -- life cycle -------------------------------------------------------------

    async def open(
        self,
        on_queued: Callable[[], None] | None = None,
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_queued, self._on_cancel = on_queued, on_cancel
        await self._dialect.prepare()
        db = Database(self._dialect)
        try:
            async with db.write() as conn:
                await conn.run_sync(ensure_schema, self.tables, self._dialect)
        except BaseException:
            await db.dispose()  # nothing is left open by a store that cannot open
            raise
        self._db = db
        await self._dialect.open(db.write_lock)
        self._progress.start()
        self._leases = LeaseThread(self._lease / 3, self.held.copy, self._renewer)
        self._leases.start()
        self._listener = self._dialect.listener(self._notified)
        if self._listener is not None and on_queued is not None:
            await self._listener.listen(self._channels.queued)  # a worker hears of new jobs
            await self._hear_cancels()
        elif self._listener is None and on_cancel is not None:
            self._watching_cancels = asyncio.get_running_loop().create_task(self._watch_cancels())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watching_cancels is not None:
            self._watching_cancels.cancel()
            await asyncio.gather(self._watching_cancels, return_exceptions=True)
        if self._listener is not None:
            await self._listener.stop()
        if self._looking:
            # Left to finish their reads (a query cancelled halfway loses its
            # connection): nothing asks for another now.
            self._to_look.clear()
            await asyncio.gather(*self._looking.values(), return_exceptions=True)
        await self._finishes.flushed()  # the ends handed over by finish_soon, still held
        if self._leases is not None:
            await asyncio.to_thread(self._leases.stop)
        await self._progress.stop()
        if self._db is not None:
            await self._dialect.close()
            await self._db.dispose()

    def _notified(self, channel: str, payload: str) -> None:
        if not payload:
            self._watchers.announce()  # something changed; the ids come otherwise
        if channel == self._channels.queued:
            if self._on_queued is not None:
                self._on_queued()
        elif not payload:  # "something changed": which jobs, it does not say
            # Only if something here may be concerned: jobs held, or watched.
            if self.held if channel == self._channels.cancel else self._watchers:
                self._look(channel)
        elif channel == self._channels.changed:
            for job_id in payload.split(","):
                self._changed(job_id)
        elif channel == self._channels.cancel:
            self._heard_cancels([job_id for job_id in payload.split(",") if job_id in self.held])

    def _look(self, channel: str) -> None:
        """Read what a bare announcement on ``channel`` may be about: once,
        for however many arrive while it is read."""
        self._to_look.add(channel)
        if channel not in self._looking:
            task = asyncio.get_running_loop().create_task(self._look_around(channel))
            self._looking[channel] = task

    async def _look_around(self, channel: str) -> None:
        # Other processes commit as often as they perform or end jobs, and
        # say no more: cancels are read at most every CANCELS_READ_EVERY
        # while jobs run.
        cancels = channel == self._channels.cancel
        try:
            while channel in self._to_look:
                self._to_look.discard(channel)
                try:
                    if not cancels:
                        await self._look_at_watched()
                    elif self.held:
                        self._heard_cancels(await self._cancels_requested())
                        await asyncio.sleep(CANCELS_READ_EVERY)  # a pace, not a wait
                except Exception:  # noqa: BLE001 - the next poll reads it all the same
                    logger.exception("could not read what other processes changed")
        finally:
            del self._looking[channel]

    async def _look_at_watched(self) -> None:
        """Wake the watchers of the jobs that changed since last read."""
        jobs = self.tables.jobs
        watched = self._watchers.job_ids()
        self._seen = {job_id: self._seen[job_id] for job_id in watched if job_id in self._seen}
        for part in range(0, len(watched), MAX_LISTED):
            ids = watched[part : part + MAX_LISTED]
            rows = await self.db.fetch(
                select(
                    jobs.c.id,
                    jobs.c.state,
                    jobs.c.attempts,
                    jobs.c.progress,
                    jobs.c.data,
                    jobs.c.cancel_requested,
                ).where(jobs.c.id.in_(ids))
            )
            for row in rows:
                job_id, seen = row[0], tuple[Any, ...](row[1:])
                if self._seen.get(job_id) != seen:
                    self._seen[job_id] = seen
                    self._changed(job_id)

    async def _hear_cancels(self) -> None:
        """Listen for cancels of the jobs held here, from the first one held."""
        if self._listener is not None and not self._hearing_cancels:
            self._hearing_cancels = True
            await self._listener.listen(self._channels.cancel)

    async def _watch_cancels(self) -> None:
        """Where nothing announces changes (SQLite off Linux): look for
        cancels of the jobs held here every ``poll_interval``."""
        while True:
            await asyncio.sleep(self.poll_interval)  # a poll, not a wait for something
            if not self.held:
                continue
            try:
                self._heard_cancels(await self._cancels_requested())
            except Exception:  # noqa: BLE001 - renewals tell all the same
                logger.exception("could not look for cancelled jobs; trying again")

    async def _cancels_requested(self) -> list[str]:
        """The jobs held here whose cancel was requested, not handed over
        yet: through the index of leased jobs (as many rows as jobs run,
        whatever the table holds)."""
        jobs = self.tables.jobs
        requested = select(jobs.c.id).where(
            jobs.c.lease_expires_at.is_not(None),
            jobs.c.locked_by == self.owner,
            jobs.c.cancel_requested.is_(True),
        )
        found = (await self.db.fetch(requested)).scalars().all()
        return [job_id for job_id in found if job_id not in self._stopping]

    def _heard_cancels(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        self._cancels_heard.extend(job_ids)
        if self._on_cancel is not None:
            self._on_cancel()

    def _changed(self, job_id: str) -> None:
        """Wake the job's watchers in this process, and those of all changes."""
        self._watchers.changed(job_id, _nothing)

    # -- a job comes in ------------------------------------------------------------

    async def enqueue(self, job: Job) -> str:
        recorded = await self._enqueues.submit(self._row(job))
        self._watchers.announce()
        if recorded == job.id and not job.registered:
            self.held[job.id] = None
            await self._hear_cancels()
        return recorded

    async def enqueue_many(self, jobs: list[Job]) -> list[str]:
        rows = []
        for place, job in enumerate(jobs):
            try:
                rows.append(self._row(job))
            except TypeError as exc:
                raise TypeError(f"job {place} of {len(jobs)}: {exc}") from None
        # One statement, not the group commit's batches: all of them, or none.
        try:
            recorded = await self._dialect.insert(rows, self._lease)
        except IntegrityError:
            raise ValueError("a job id of the batch exists already: nothing was recorded") from None
        mine = [
            job.id
            for job, job_id in zip(jobs, recorded, strict=True)
            if job_id == job.id and not job.registered
        ]
        self.held.update((job_id, None) for job_id in mine)
        if mine:
            await self._hear_cancels()
        self._watchers.announce()
        return recorded

    async def enqueue_in(self, session: Any, job: Job) -> str:
        if not job.registered:
            raise TypeError(
                f"{job.name} is not registered with @asyncjob.job: only registered "
                "jobs can be performed in your transaction, as any worker may run them"
            )
        insert, key = self._insert_of(job)
        if key is None:
            await session.execute(insert)
        else:
            jobs, holds_key = self.tables.jobs, text(HOLDS_KEY)
            insert = insert.on_conflict_do_nothing(
                index_elements=[jobs.c.unique_key], index_where=holds_key
            )
            if (await session.execute(insert.returning(jobs.c.id))).first() is None:
                holder = await session.scalar(
                    select(jobs.c.id).where(jobs.c.unique_key == key, holds_key)
                )
                if holder is not None:
                    return str(holder)
                raise RuntimeError(
                    f"the job holding the unique key {key!r} is not visible "
                    "to your transaction (its isolation level is above READ COMMITTED): "
                    "perform it again in a new transaction"
                )
        on_queued = self._on_queued
        if on_queued is not None:  # wake this process's worker once it commits
            event.listen(session.sync_session, "after_commit", lambda _: on_queued(), once=True)
        return job.id

    def _insert_of(self, job: Job) -> tuple[Any, str | None]:
        """An SQLAlchemy insert of ``job`` (for a session or a connection of
        the store's), and its unique key."""
        row = self._row(job)
        at, delay = row.pop("at"), row.pop("delay")
        jobs, now = self.tables.jobs, self.db.now()
        due = literal(at) if at is not None else now + (delay or 0.0)
        insert = self._dialect.insert_construct(jobs).values(
            **row,
            state=case((due > now, SCHEDULED), else_=_QUEUED),
            attempts=0,
            run_after=due,
        )
        return insert, row["unique_key"]

    def _row(self, job: Job) -> dict[str, Any]:
        """The job as :meth:`Dialect.insert` takes it.

        Raises:
            ValueError: its name is longer than the store keeps, or holds NUL.
            TypeError: its arguments are not JSON.
        """
        if len(job.name) > MAX_NAME_LENGTH or "\x00" in job.name:
            raise ValueError(
                f"a job's name has at most {MAX_NAME_LENGTH} characters and no NUL to be "
                f"stored, not {job.name!r:.80}: register the function with a shorter "
                "name, @asyncjob.job(name=...)"
            )
        # No arguments is common: no encoder needed.
        args = dumps(list(job.args), f"the arguments of {job.name}") if job.args else "[]"
        kwargs = (
            dumps(dict(job.kwargs), f"the keyword arguments of {job.name}") if job.kwargs else "{}"
        )
        options = job.options or _DEFAULTS
        return {
            "id": job.id,
            "name": job.name,
            "registered": job.registered,
            # Not registered: only this process may run it (see recover).
            "owner": None if job.registered else self.owner,
            "args": args,
            "kwargs": kwargs,
            "enqueued_at": job.enqueued_at,
            "queue": options.queue,
            "priority": options.priority,
            "unique_key": options.unique,
            # When it comes due is the database's to say (see Dialect.insert).
            "at": options.at,
            "delay": options.delay,
            "trace": None if job.trace is None else dumps(dict(job.trace), "the trace context"),
        }

    async def _insert(self, rows: list[dict[str, Any]]) -> list[str | Exception]:
        """Write performed jobs, one batch at a time; a batch the database
        refuses is split, so that only the job at fault fails."""
        try:
            return [*await self._dialect.insert(rows, self._lease)]
        except DBAPIError as exc:
            if not refused(exc):
                raise
            if len(rows) > 1:
                return [result for row in rows for result in await self._insert([row])]
            job_id = rows[0]["id"]
            why = (
                f"a job with id {job_id!r} exists already"
                if _duplicate_key(exc)
                else f"the database refused job {job_id} ({rows[0]['name']!r:.80}): {exc.orig}"
            )
            refusal = ValueError(why)
            refusal.__cause__ = exc
            return [refusal]

    async def start(self, job_id: str) -> bool:  # a job not registered, run here
        jobs = self.tables.jobs
        now = time.time()
        # Found running with this very start time, it was this very start,
        # sent again after its answer was lost (see Database.execute).
        this_start = and_(jobs.c.state == _RUNNING, jobs.c.started_at == now)
        try:
            done = await self.db.execute(
                update(jobs)
                .where(jobs.c.id == job_id, or_(jobs.c.state.in_(_WAITING), this_start))
                .values(
                    state=_RUNNING,
                    started_at=now,
                    attempts=case(
                        (jobs.c.state.in_(_WAITING), jobs.c.attempts + 1), else_=jobs.c.attempts
                    ),
                    locked_by=self.owner,
                )
            )
        except BaseException:
            # It will not run: no longer renewed, it ends as "worker lost".
            self.held.pop(job_id, None)
            raise
        started = bool(done.rowcount)
        if started:
            self._changed(job_id)
        return started

    # -- a job runs --------------------------------------------------------------

    def report_progress(self, job_id: str, value: float, data: Any) -> None:
        encoded = None if data is None else dumps(data, "the progress data")
        self._progress.report(job_id, (value, encoded))

    async def _write_progress(self, pending: dict[str, Report]) -> None:
        """Write reports; a batch the database refuses is split, and only the
        report at fault is dropped (the job's next report, or its end,
        carries its progress on)."""
        try:
            await self._dialect.progress(pending)
        except DBAPIError as exc:
            if not refused(exc):
                raise
            if len(pending) == 1:
                logger.error(
                    "the database refused the progress of job %s, which is dropped: %s",
                    next(iter(pending)),
                    exc.orig,
                )
                return
            for job_id, report in pending.items():
                await self._write_progress({job_id: report})
            return
        for job_id in pending:
            self._changed(job_id)

    async def claim(
        self,
        limit: int,
        queues: frozenset[str] | None = None,
        limits: Mapping[str, int] | None = None,
    ) -> list[Claimed]:
        claimed = await self._dialect.claim(limit, self._lease, queues, limits)
        held = self.held
        self._claimed_again = {c.id for c in claimed if c.id in held}
        held.update((c.id, c.attempts) for c in claimed)
        if claimed:
            await self._hear_cancels()
        for c in claimed:
            self._changed(c.id)
        return claimed

    async def next_due(
        self, queues: frozenset[str] | None = None, limits: Mapping[str, int] | None = None
    ) -> float | None:
        return await self._dialect.next_due(queues, limits)

    async def release(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        jobs = self.tables.jobs
        requested = jobs.c.cancel_requested
        # Handed back, not failed: this attempt does not count. A job whose
        # cancel was requested is not handed back: it ends cancelled. A job
        # claimed while an attempt of it ran here: the end of that attempt
        # is made with the attempt claimed (held since), so the number is
        # not given out again, for that end not to end the next attempt.
        again = self._claimed_again.intersection(job_ids)
        counts = requested if not again else requested | jobs.c.id.in_(again)
        await self.db.execute(
            update(jobs)
            .where(jobs.c.id.in_(job_ids), jobs.c.locked_by == self.owner, jobs.c.state == _RUNNING)
            .values(
                state=case((requested, _CANCELLED), else_=_QUEUED),
                finished_at=case((requested, self.db.now()), else_=None),
                started_at=case((requested, jobs.c.started_at), else_=None),
                attempts=case((counts, jobs.c.attempts), else_=jobs.c.attempts - 1),
                # The attempt is taken back, and its progress with it.
                progress=case((requested, jobs.c.progress), else_=None),
                data=case((requested, jobs.c.data), else_=None),
                cancel_requested=False,
                locked_by=None,
                lease_expires_at=None,
            )
        )
        self._let_go(job_ids)
        for job_id in job_ids:
            self._changed(job_id)

    async def renew(self) -> list[str]:
        # The renewing itself is the lease thread's: here, only what it found.
        if self._leases is None:
            return []
        found_lost, cancelled = self._leases.take()
        cancelled += self._cancels_heard
        self._cancels_heard = []
        lost = []
        for job_id, attempt in found_lost:
            # Lost only if still held at the attempt the renewal asked for:
            # since then it may have ended here, or failed, been retried and
            # claimed again here (that attempt is held, and must run on).
            if self.held.get(job_id, _GONE) == attempt:
                del self.held[job_id]
                lost.append(job_id)
        new = [job_id for job_id in cancelled if job_id in self.held]
        new = [job_id for job_id in dict.fromkeys(new) if job_id not in self._stopping]
        self._stopping.update(new)
        return [*dict.fromkeys(lost), *new]

    @contextlib.asynccontextmanager
    async def _renewer(self) -> AsyncIterator[Renew]:
        """What the lease thread renews with: a database of its own, on its
        loop, whose commits do not wait for the disk (a renewal lost in a
        crash does no harm), so that a slow disk does not stall renewals."""
        db = Database(self._dialect, durable=False)
        try:
            yield functools.partial(self._renew_leases, db)
        finally:
            with contextlib.suppress(Exception):
                await db.dispose()

    async def _renew_leases(self, db: Database, held: list[str]) -> tuple[list[str], list[str]]:
        """Extend this store's leases (in the lease thread); the ids among
        ``held`` it lost, and those whose cancel was requested."""
        jobs = self.tables.jobs
        renewed = await db.execute(
            update(jobs)
            .where(
                jobs.c.id.in_(held),
                jobs.c.locked_by == self.owner,
                jobs.c.state.in_((*_WAITING, _RUNNING)),
            )
            .values(lease_expires_at=db.now() + self._lease)
            .returning(jobs.c.id, jobs.c.cancel_requested)
        )
        rows = renewed.all()
        still = {row.id for row in rows}
        lost = [job_id for job_id in held if job_id not in still]
        return lost, [row.id for row in rows if row.cancel_requested]

    async def recover(self) -> int:
        jobs = self.tables.jobs
        now = self.db.now()
        expired = jobs.c.lease_expires_at < now
        requested = jobs.c.cancel_requested.is_(True)
        gone = {"locked_by": None, "lease_expires_at": None}
        async with self.db.write() as conn:
            requeued = await conn.execute(
                update(jobs)
                .where(jobs.c.state == _RUNNING, jobs.c.registered.is_(True), expired, ~requested)
                .values(state=_QUEUED, run_after=now, **gone)
            )
            cancelled = await conn.execute(
                update(jobs)
                .where(jobs.c.state == _RUNNING, expired, requested)
                .values(state=_CANCELLED, finished_at=now, cancel_requested=False, **gone)
            )
            lost = await conn.execute(
                update(jobs)
                .where(
                    jobs.c.state.in_((*_WAITING, _RUNNING)), jobs.c.registered.is_(False), expired
                )
                .values(state=JobState.failed.value, error=WORKER_LOST, finished_at=now, **gone)
            )
        return int(requeued.rowcount) + int(cancelled.rowcount) + int(lost.rowcount)

    async def forget_finished(self) -> int:
        return await self._delete_ended(_ENDED, self.keep_finished)

    async def _delete_ended(self, states: list[str], older_than: float) -> int:
        """Delete a batch of the jobs in ``states`` that ended more than
        ``older_than`` seconds ago; how many."""
        jobs = self.tables.jobs
        old = (
            select(jobs.c.id)
            .where(jobs.c.finished_at < self.db.now() - older_than, jobs.c.state.in_(states))
            # Oldest first, through the index of ended jobs: without it, a
            # planner short of statistics scans the whole table each time.
            .order_by(jobs.c.finished_at)
            .limit(PURGE_BATCH)
            .scalar_subquery()
        )
        done = await self.db.execute(delete(jobs).where(jobs.c.id.in_(old)))
        return int(done.rowcount)

    # -- what operators do ------------------------------------------------------

    async def requeue(self, job_id: str) -> bool:
        if not _keepable(job_id):
            return False
        jobs = self.tables.jobs
        ended = [JobState.failed.value, _CANCELLED]
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    select(jobs.c.error, jobs.c.errors, jobs.c.unique_key)
                    .where(jobs.c.id == job_id, jobs.c.registered.is_(True))
                    .where(jobs.c.state.in_(ended))
                    .with_for_update()
                )
            ).first()
            if row is None:
                return False
            errors = _errors_of(job_id, row.errors) + ([row.error] if row.error else [])
            try:
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        state=_QUEUED,
                        run_after=self.db.now(),
                        errors=dumps(errors, "the errors") if errors else None,
                        error=None,
                        traceback=None,
                        result=None,
                        progress=None,
                        data=None,
                        started_at=None,
                        finished_at=None,
                        cancel_requested=False,
                        locked_by=None,
                    )
                )
            except IntegrityError:
                raise ValueError(
                    f"job {job_id} cannot run again now: its unique key {row.unique_key!r} "
                    "is held by another job, queued or running"
                ) from None
        self._changed(job_id)
        return True

    async def delete(self, job_ids: list[str]) -> int:
        job_ids = [job_id for job_id in job_ids if _keepable(job_id)]
        jobs = self.tables.jobs
        total = 0
        for first in range(0, len(job_ids), PURGE_BATCH):
            done = await self.db.execute(
                delete(jobs).where(
                    jobs.c.id.in_(job_ids[first : first + PURGE_BATCH]), jobs.c.state.in_(_ENDED)
                )
            )
            total += int(done.rowcount)
        return total

    async def purge(self, states: frozenset[JobState], older_than: float) -> int:
        chosen = sorted(state.value for state in states if state.is_final)
        total = 0
        while chosen:
            done = await self._delete_ended(chosen, older_than)
            total += done
            if done < PURGE_BATCH:
                break
            await asyncio.sleep(0)  # between two statements, the loop's other work
        return total

    async def heartbeat(
        self, *, queues: frozenset[str] | None, concurrency: int, running: int
    ) -> None:
        workers = self.tables.workers
        seen = {
            "queues": None if queues is None else dumps(sorted(queues), "the queues"),
            "concurrency": concurrency,
            "running": running,
            "last_seen": self.db.now(),
        }
        beat = self._dialect.insert_construct(workers).values(
            id=self.owner, host=socket.gethostname(), pid=os.getpid(),
            started_at=self._opened_at, **seen,
        )  # fmt: skip
        async with self.db.write() as conn:
            await conn.execute(beat.on_conflict_do_update(index_elements=["id"], set_=seen))
            # Workers gone for a day are forgotten (a crash leaves its row).
            await conn.execute(
                delete(workers).where(workers.c.last_seen < self.db.now() - WORKERS_KEPT)
            )

    async def leave(self) -> None:
        workers = self.tables.workers
        await self.db.execute(delete(workers).where(workers.c.id == self.owner))

    async def workers(self) -> list[WorkerStatus]:
        workers = self.tables.workers
        rows = (
            await self.db.fetch(
                select(workers, (workers.c.last_seen >= self.db.now() - self._lease).label("alive"))
                .where(workers.c.last_seen >= self.db.now() - WORKERS_KEPT)
                .order_by(workers.c.id)
            )
        ).all()
        return [
            WorkerStatus(
                id=row.id,
                host=row.host,
                pid=row.pid,
                queues=None if row.queues is None else tuple(loads(row.queues)),
                concurrency=row.concurrency,
                running=row.running,
                started_at=datetime.fromtimestamp(row.started_at, UTC),
                last_seen=datetime.fromtimestamp(row.last_seen, UTC),
                alive=bool(row.alive),
            )
            for row in rows
        ]

    # -- a job ends --------------------------------------------------------------

    async def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        recorded = await self.finish_as(
            job_id, state, result=result, error=error, traceback=traceback
        )
        return recorded is not None

    async def finish_as(
        self,
        job_id: str,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> JobState | None:
        ending = self._ending(job_id, state, result, error, traceback)
        try:
            recorded = await self._finishes.submit(ending)
        finally:
            # Held, and so renewed, until the end is written (or could not
            # be: its lease then runs out, and the job runs again).
            self._let_go_of(job_id, ending.attempt)
        if recorded is None:
            return None
        self._changed(job_id)
        return JobState(recorded)

    def finish_soon(
        self,
        job_id: str,
        state: JobState,
        then: Callable[[], None],
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> None:
        ending = self._ending(job_id, state, result, error, traceback)

        def written(recorded: str | BaseException | None) -> None:
            self._let_go_of(job_id, ending.attempt)  # as in finish()
            if isinstance(recorded, str):
                self._changed(job_id)
            elif isinstance(recorded, BaseException):
                logger.error(
                    "could not record how job %s ended; it runs again once its lease runs out: %s",
                    job_id,
                    recorded,
                )
            then()

        self._finishes.submit_soon(ending, written)

    def _ending(
        self, job_id: str, state: JobState, result: Any, error: str | None, traceback: str | None
    ) -> Ending:
        encoded = None
        if state is JobState.succeeded:
            try:
                encoded = dumps(result, "the result")
            except TypeError as exc:
                state, error = JobState.failed, f"TypeError: {exc}"
        # The last report is stored with the final state.
        return made(Ending, (
            job_id,
            state._value_,  # .value is a Python descriptor: a call at every end
            encoded,
            None if error is None else storable_text(error),
            None if traceback is None else storable_text(traceback),
            time.time(),
            self._progress.take(job_id),
            self.held.get(job_id),
        ))  # fmt: skip

    async def _finish(self, endings: list[Ending]) -> list[str | Exception | None]:
        """Write ends, one batch at a time; a batch the database refuses is
        split, and an end it refuses alone is written again as a plain
        failure that says so, so that the job ends all the same."""
        try:
            return [*await self._dialect.finish(endings)]
        except DBAPIError as exc:
            if not refused(exc):
                raise
            if len(endings) > 1:
                return [result for ending in endings for result in await self._finish([ending])]
            (ending,) = endings
            plain = ending._replace(
                state=JobState.failed.value,
                result=None,
                traceback=None,
                progress=None,
                error=storable_text(
                    f"the database refused to record how this job ended: {exc.orig}"
                )[:_ERROR_LENGTH],
            )
            if plain == ending:
                return [exc]
            try:
                return [*await self._dialect.finish([plain])]
            except DBAPIError as again:
                if not refused(again):
                    raise
                return [again]

    async def retry(self, job_id: str, *, error: str, delay: float) -> bool:
        attempt = self.held.get(job_id)
        try:
            return await self._retry(job_id, storable_text(error), delay, attempt)
        finally:
            # As in finish: held until written; if the write fails, the
            # lease runs out and the job runs again, rather than being
            # renewed for ever and never ending.
            self._let_go_of(job_id, attempt)

    async def _retry(self, job_id: str, error: str, delay: float, attempt: int | None) -> bool:
        jobs = self.tables.jobs
        held = [jobs.c.state == _RUNNING, jobs.c.locked_by == self.owner]
        if attempt is not None:
            held.append(jobs.c.attempts == attempt)
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    select(jobs.c.errors, jobs.c.cancel_requested)
                    .where(jobs.c.id == job_id, *held)
                    .with_for_update()
                )
            ).first()
            if row is None:
                return False
            if row.cancel_requested:
                values: dict[str, Any] = {
                    "state": _CANCELLED,
                    "finished_at": time.time(),
                    "cancel_requested": False,
                }
            else:
                earlier = _errors_of(job_id, row.errors)
                values = {
                    "state": SCHEDULED if delay > 0 else _QUEUED,
                    "errors": dumps([*earlier, error], "the errors"),
                    "run_after": self.db.now() + delay,
                    "locked_by": None,
                }
            await conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(**values, lease_expires_at=None)
            )
        self._changed(job_id)
        return not row.cancel_requested

    async def cancel(self, job_id: str) -> JobState | None:
        if not _keepable(job_id):
            return None
        jobs = self.tables.jobs
        async with self.db.write() as conn:
            found = await conn.scalar(
                select(jobs.c.state).where(jobs.c.id == job_id).with_for_update()
            )
            if found is None:
                return None
            before = state_of(job_id, found)
            if before is JobState.queued:
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        state=_CANCELLED,
                        finished_at=time.time(),
                        locked_by=None,
                        lease_expires_at=None,
                    )
                )
            elif before is JobState.running:
                # Its holder stops it, and ends it, once it learns of this.
                await conn.execute(
                    update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True)
                )
        if before is JobState.queued:
            self.held.pop(job_id, None)  # a job not registered, performed here
        if not before.is_final:
            self._changed(job_id)
        return before

    def _let_go(self, job_ids: list[str]) -> None:
        """No longer hold the jobs (handed back), but those claimed again
        while an attempt of them runs here: held until its end is written."""
        for job_id in job_ids:
            if job_id in self._claimed_again:
                self._claimed_again.discard(job_id)
            else:
                self.held.pop(job_id, None)
                self._stopping.discard(job_id)

    def _let_go_of(self, job_id: str, attempt: int | None) -> None:
        """No longer hold the job at this attempt (its end is written): a
        later attempt of it, claimed here meanwhile, is held on."""
        if self.held.get(job_id, _GONE) == attempt:
            del self.held[job_id]
            self._stopping.discard(job_id)

    # -- in the application's transaction ------------------------------------------

    def enqueue_sql(self, job: Job) -> tuple[str, list[Any], str | None, list[Any]]:
        """The statements that write ``job`` through a DB-API connection of
        the application's own on the store's database (Django's, say), so
        that it is written in that connection's transaction, committed or
        rolled back with it: ``(insert, its parameters, holder, its
        parameters)``, with ``%s`` placeholders.

        The insert returns the job's id when it wrote it, and no row when
        its unique key is held by another job; ``holder`` (``None`` for a job
        without a key) then returns that job's id. Workers hear of the job
        at commit (PostgreSQL: the table's trigger; SQLite: the file). The
        store need not be open, but its tables must exist (a runner on the
        store makes them).

        Raises:
            TypeError: the job is not registered, or its arguments are not JSON.
            ValueError: its name cannot be stored.
        """
        if not job.registered:
            raise TypeError(
                f"{job.name} is not registered with @asyncjob.job: only registered "
                "jobs can be performed in your transaction, as any worker may run them"
            )
        row = self._row(job)
        at, delay = row.pop("at"), row.pop("delay")
        shape = (row["unique_key"] is not None, at is not None)
        compiled = self._dbapi_inserts.get(shape)
        if compiled is None:  # compiled once per shape: 700 us a call otherwise
            compiled = self._dbapi_inserts[shape] = self._dbapi_insert(*shape)
        insert, names, holder, holder_names = compiled
        values = {**row, "due_at": at, "delay": delay or 0.0}
        return (
            insert,
            [values[name] for name in names],
            holder,
            [values[name] for name in holder_names],
        )

    def _dbapi_insert(self, unique: bool, at: bool) -> tuple[str, list[str], str | None, list[str]]:
        """The statements of :meth:`enqueue_sql` for jobs of one shape (with
        a unique key or not, due at a time or after a delay), with the
        names of their parameters in order."""
        jobs = self.tables.jobs
        now = literal_column(self._dialect.now_sql, Float)  # Database.now(), unopened
        due = bindparam("due_at", type_=Float) if at else now + bindparam("delay", type_=Float)
        # The columns a job's row fills, as _row names them (less at/delay).
        columns = self._row(Job("", "", print, (), {}, False, 0.0, True))
        del columns["at"], columns["delay"]
        insert = self._dialect.insert_construct(jobs).values(
            **{name: bindparam(name) for name in columns},
            state=case(
                (due > now, literal_column(f"'{SCHEDULED}'")), else_=literal_column(f"'{_QUEUED}'")
            ),
            attempts=literal_column("0"),
            run_after=due,
        )
        holder = None
        if unique:
            holds_key = text(HOLDS_KEY)
            insert = insert.on_conflict_do_nothing(
                index_elements=[jobs.c.unique_key], index_where=holds_key
            )
            holder = select(jobs.c.id).where(
                jobs.c.unique_key == bindparam("unique_key"), holds_key
            )
        sql, names = self._for_dbapi(insert.returning(jobs.c.id))
        if holder is None:
            return sql, names, None, []
        return (sql, names, *self._for_dbapi(holder))

    def _for_dbapi(self, statement: Any) -> tuple[str, list[str]]:
        """``statement`` as SQL with ``%s`` placeholders, in the store's
        dialect, and the names of its parameters in order."""
        # The dialect of the store's URL, not of its engine: the statements
        # are made without opening the store (a web process that only
        # enqueues need not).
        dialect: Any = make_url(self._dialect.url).get_dialect()
        dialect = dialect(paramstyle="format")
        compiled = statement.compile(dialect=dialect)
        return str(compiled), list(compiled.positiontup or ())

    def shares_database_with(self, engine: Any) -> bool:
        return same_database(str(engine.url.render_as_string(hide_password=False)), self.url)

    async def finish_in(self, session: Any, job_id: str, result: Any) -> None:
        done = await session.execute(self._success_in_session(job_id, result))
        self._succeeded_in(session.sync_session, job_id, done.rowcount)

    def finish_in_sync(self, session: Any, job_id: str, result: Any) -> None:
        done = session.execute(self._success_in_session(job_id, result))
        self._succeeded_in(session, job_id, done.rowcount)

    def _success_in_session(self, job_id: str, result: Any) -> Update:
        encoded = dumps(result, "the result")
        values: dict[str, Any] = {
            "state": JobState.succeeded.value,
            "result": encoded,
            "finished_at": time.time(),
            "lease_expires_at": None,
        }
        last = self._progress.take(job_id)
        if last is not None:
            values["progress"], values["data"] = last
        jobs = self.tables.jobs
        held = [
            jobs.c.id == job_id,
            jobs.c.state == _RUNNING,
            jobs.c.locked_by == self.owner,
            jobs.c.cancel_requested.is_(False),
        ]
        attempt = self.held.get(job_id)
        if attempt is not None:
            held.append(jobs.c.attempts == attempt)
        return update(jobs).where(*held).values(**values)

    def _succeeded_in(self, sync_session: Any, job_id: str, rowcount: int) -> None:
        """After the job's success was written in its session (from the
        loop, or from a sync job's thread)."""
        if not rowcount:
            raise JobLost(job_id)
        self.held.pop(job_id, None)  # one dict operation: safe from a thread too
        loop = self._loop
        assert loop is not None
        event.listen(
            sync_session,
            "after_commit",
            lambda _: loop.call_soon_threadsafe(self._changed, job_id),
            once=True,
        )

    # -- reading -------------------------------------------------------------------

    async def get(self, job_id: str) -> JobStatus | None:
        if not _keepable(job_id):
            return None
        row = (await self.db.fetch(self._get, {"id": job_id})).first()
        return None if row is None else status_of(row)

    async def outcome(self, job_id: str) -> Outcome | None:
        if not _keepable(job_id):
            return None
        row = (await self.db.fetch(self._outcome, {"id": job_id})).first()
        if row is None:
            return None
        state = state_of(job_id, row.state)
        return Outcome(state, json_column(job_id, "result", row.result), row.error, row.traceback)

    async def list_jobs(self, query: JobQuery) -> list[JobStatus]:
        listing = await self._listing(query)
        filters = _filters(query, self.tables.jobs.c)
        rows = await self.db.fetch(listing.where(*filters).limit(query.limit))
        return _readable(rows)

    async def list_page(self, query: JobQuery) -> JobPage:
        """Filtered by state, name or queue, a page looks at the next
        :data:`LIST_WINDOW` jobs at most (through the listing's index), and
        keeps those that match: a filter that no index serves costs the same
        however rare its jobs, where the whole index would be walked for a
        page that cannot fill (bench/listing.py: 163 ms on PostgreSQL, 317 ms
        on SQLite, for 5 jobs in a million)."""
        listing = await self._listing(query)
        if not _filters(query, self.tables.jobs.c):  # the listing's index answers it
            rows = (await self.db.fetch(listing.limit(query.limit))).all()
            # The last row read, readable or not, is where the next page starts.
            return _page(_readable(rows), rows[-1] if len(rows) == query.limit else None)
        window = listing.limit(LIST_WINDOW).subquery()
        kept = select(window).where(*_filters(query, window.c))
        if self._dialect.name != "sqlite":
            # SQLite reads the window in its order and stops at the limit;
            # told to order it again, it would sort the whole window first.
            kept = kept.order_by(window.c.enqueued_at.desc(), window.c.id.desc())
        rows = (await self.db.fetch(kept.limit(query.limit))).all()
        jobs = _readable(rows)
        if len(rows) == query.limit:
            return _page(jobs, rows[-1])
        # Short: the window ran out of jobs (none left), or was full (look
        # on from its last job, found through the listing's index alone).
        ids = listing.with_only_columns(self.tables.jobs.c.id, self.tables.jobs.c.enqueued_at)
        last = ids.offset(LIST_WINDOW - 1).limit(1)
        return _page(jobs, (await self.db.fetch(last)).first())

    async def _listing(self, query: JobQuery) -> Select[Any]:
        """Every column of the jobs ``query`` lists, newest first, within
        its times and after its ``before``: a range of the listing's index."""
        jobs = self.tables.jobs
        statement = select(jobs).order_by(jobs.c.enqueued_at.desc(), jobs.c.id.desc())
        if query.since is not None:
            statement = statement.where(jobs.c.enqueued_at >= query.since)
        if query.until is not None:
            statement = statement.where(jobs.c.enqueued_at < query.until)
        if query.before is not None:
            if not _keepable(query.before):
                raise JobNotFound(query.before)  # never a page's next
            anchor = (
                await self.db.fetch(
                    select(jobs.c.enqueued_at, jobs.c.id).where(jobs.c.id == query.before)
                )
            ).first()
            if anchor is not None:
                listed = tuple_(jobs.c.enqueued_at, jobs.c.id)
                statement = statement.where(listed < tuple_(anchor.enqueued_at, anchor.id))
            elif query.before_at is not None:
                # Deleted since: on from where it stood (JobQuery.listed_after).
                at = query.before_at
                statement = statement.where(
                    or_(
                        jobs.c.enqueued_at < at - A_MICROSECOND,
                        and_(jobs.c.enqueued_at < at + A_MICROSECOND, jobs.c.id < query.before),
                    )
                )
            else:
                raise JobNotFound(query.before)
        return statement

    async def overview(self) -> Overview:
        jobs = self.tables.jobs
        active: list[dict[str, int]] = []
        # Each through its own partial index, at most COUNT_CAP rows read:
        # the registered jobs due (queue by queue, so that a crowded queue
        # hides no other), those not registered (leased to the process that
        # performed them) queued, the delayed, the running.
        waiting_here = [jobs.c.lease_expires_at.is_not(None), jobs.c.state == _QUEUED]
        # Word for word as the index says it, so that it is read alone.
        scheduled = text(f"state = '{SCHEDULED}'")
        now = self.db.now()
        kinds: list[list[list[Any]]] = [
            # Delayed jobs past their time wait too: due, not claimed yet.
            [waiting_here, [scheduled, jobs.c.run_after <= now]],
            [[scheduled, jobs.c.run_after > now]],
            [[text(RUNNING)]],
        ]
        due = await self._due_by_queue()
        capped = any(n >= COUNT_CAP for n in due.values())
        for kind in kinds:
            counts: dict[str, int] = {} if active else dict(due)
            for where in kind:
                some = select(jobs.c.queue).where(*where).limit(COUNT_CAP).subquery()
                by_queue = select(some.c.queue, func.count()).group_by(some.c.queue)
                rows: Sequence[Any] = (await self.db.fetch(by_queue)).all()
                for queue, n in rows:
                    counts[queue] = counts.get(queue, 0) + int(n)
                capped = capped or sum(int(n) for _, n in rows) >= COUNT_CAP
            active.append(counts)
        minute = literal_column(self._dialect.minute_sql.format(column="finished_at"), Integer)
        since = self.db.now() - 3600
        ended = (
            select(minute.label("minute"), jobs.c.state)
            .where(jobs.c.finished_at >= since)  # through the index of ended jobs
            .order_by(jobs.c.finished_at.desc())
            .limit(ENDED_CAP)
            .subquery()
        )
        by_minute = select(ended.c.minute, ended.c.state, func.count()).group_by(
            ended.c.minute, ended.c.state
        )
        minutes: Sequence[Any] = (await self.db.fetch(by_minute)).all()
        counted = [(int(at), state, int(n)) for at, state, n in minutes]
        clock = (await self.db.fetch(select(self.db.now()))).scalar_one()
        return Overview(
            waiting=active[0],
            scheduled=active[1],
            running=active[2],
            capped=capped,
            due_since={
                queue: datetime.fromtimestamp(at, UTC)
                for queue, at in (await self._due_since(waiting_here)).items()
            },
            ended=minutes_of_the_last_hour(float(clock), counted),
        )

    async def _due_by_queue(self) -> dict[str, int]:
        """The registered jobs due in each queue, up to COUNT_CAP a queue:
        the queues found by skipping through the claim index by queue (one
        short read per queue in use), each counted through it."""
        queues_sql = f"""WITH RECURSIVE {_due_queues(self.tables.jobs.name)}
                         SELECT queue FROM queues WHERE queue IS NOT NULL"""
        queues = (await self.db.fetch(text(queues_sql))).scalars().all()
        counts = {}
        for queue in queues:
            some = select(literal(1)).where(text(DUE), self.tables.jobs.c.queue == queue)
            counted = select(func.count()).select_from(some.limit(COUNT_CAP).subquery())
            counts[str(queue)] = int((await self.db.fetch(counted)).scalar_one())
        return counts

    async def _due_since(self, waiting_here: list[Any]) -> dict[str, float]:
        """By queue, when the longest-waiting due job came due: of the
        registered ones, the head of each priority in the queue's claim
        index (which orders by priority, then by due time); of the others,
        the first due of those queued in their process."""
        jobs = self.tables.jobs
        here = select(jobs.c.queue, func.min(jobs.c.run_after)).where(*waiting_here)
        rows: Sequence[Any] = (await self.db.fetch(here.group_by(jobs.c.queue))).all()
        # Not a number: a due time edited by hand (SQLite keeps any value).
        oldest = {queue: float(at) for queue, at in rows if type(at) in (float, int)}
        # One statement walks the claim index, queue by queue and priority by
        # priority (a short probe each), to the head of every priority in use.
        jobs_name = self.tables.jobs.name
        probe = f"FROM {jobs_name} WHERE {DUE} AND queue = walk.queue"
        walk = f"""
            WITH RECURSIVE {_due_queues(jobs_name)},
            walk(queue, priority) AS (
                SELECT queue, (SELECT max(priority) FROM {jobs_name}
                               WHERE {DUE} AND queue = queues.queue)
                FROM queues WHERE queue IS NOT NULL
                UNION ALL
                SELECT queue, (SELECT max(priority) {probe} AND priority < walk.priority)
                FROM walk WHERE priority IS NOT NULL
            )
            SELECT queue, min((SELECT min(run_after) {probe} AND priority = walk.priority))
            FROM walk WHERE priority IS NOT NULL GROUP BY queue"""
        heads: Sequence[Any] = (await self.db.fetch(text(walk))).all()
        for queue, at in heads:
            if type(at) in (float, int):  # as above
                oldest[queue] = min(oldest.get(queue, float(at)), float(at))
        return oldest

    async def tick(self, schedule: ScheduleStatus, job: Job) -> bool:
        table = self.tables.schedules
        due = schedule.last_tick.timestamp() if schedule.last_tick else None
        values = {
            "cron": schedule.cron,
            "last_tick": due,
            "next_tick": schedule.next_tick.timestamp() if schedule.next_tick else None,
        }
        async with self.db.write() as conn:
            # Locked until the end of the transaction (SQLite: one writer
            # at a time): another runner's call for the same tick reads it
            # after this one has committed, and finds it performed.
            last = await conn.scalar(
                select(table.c.last_tick).where(table.c.name == schedule.name).with_for_update()
            )
            if last is None:
                # Its first run is its next tick; two runners may meet here.
                await conn.execute(
                    self._dialect.insert_construct(table)
                    .values(name=schedule.name, **values)
                    .on_conflict_do_nothing()
                )
                return False
            if due is None or due <= last:
                return False
            await conn.execute(update(table).where(table.c.name == schedule.name).values(values))
            await conn.execute(self._insert_of(job)[0])
        if self._on_queued is not None:
            self._on_queued()
        return True

    async def schedules(self) -> list[ScheduleStatus]:
        table = self.tables.schedules
        rows = await self.db.fetch(select(table).order_by(table.c.name))
        return [
            ScheduleStatus(
                row.name,
                row.cron,
                timestamp_to_datetime(row.last_tick),
                timestamp_to_datetime(row.next_tick),
            )
            for row in rows
        ]

    def changes(self) -> AsyncIterator[None]:
        return self._watchers.changes()

    async def watch(self, job_id: str) -> AsyncIterator[JobStatus]:
        if self._listener is not None:  # the first watcher here starts hearing of changes
            await self._listener.listen(self._channels.changed)
        with self._watchers.subscribe(job_id) as changes:
            status = await self.get(job_id)
            if status is None:
                raise JobNotFound(job_id)
            yield status
            while not status.is_final:
                await changes.wait(self.poll_interval)
                now = await self.get(job_id)
                if now is None:
                    return  # forgotten meanwhile
                if now != status:
                    status = now
                    yield status


def _due_queues(jobs: str) -> str:
    """``queues(queue)``, a recursive CTE of the queues that have jobs due
    (and a NULL last): found by skipping through the claim index by queue,
    one short probe a queue, where ``DISTINCT`` would read every due job."""
    return f"""queues(queue) AS (
        SELECT min(queue) FROM {jobs} WHERE {DUE}
        UNION ALL
        SELECT (SELECT min(queue) FROM {jobs} WHERE {DUE} AND queue > queues.queue)
        FROM queues WHERE queues.queue IS NOT NULL
    )"""


def _filters(query: JobQuery, c: Any) -> list[Any]:
    """The conditions of ``query`` that no index serves, on the columns ``c``
    (the table's, or a window's of it)."""
    found = []
    if query.states is not None:
        states = [state.value for state in sorted(query.states)]
        if JobState.queued in query.states:
            states.append(SCHEDULED)
        found.append(c.state.in_(states))
    if query.name is not None:
        found.append(c.name == query.name if _keepable(query.name) else false())
    if query.queue is not None:
        found.append(c.queue == query.queue)
    return found


def _keepable(text: str) -> bool:
    """Whether a database could keep ``text`` (an id or a name asked for):
    PostgreSQL refuses NUL and lone surrogates in any text, with an error
    that was a 500 of the web app for ``/api/jobs/%00``. A job id or a name
    asyncjob made never holds them: no job has such an id or name."""
    return storable_text(text) == text


def _readable(rows: Iterable[Row[Any]]) -> list[JobStatus]:
    """The statuses of ``rows``, but for those asyncjob cannot read, left
    out and logged: one row edited by hand into nonsense took every listing
    of the store with it, the dashboard's and the command line's. Its own
    status raises :class:`BadRecord`, naming the column."""
    statuses = []
    for row in rows:
        try:
            statuses.append(status_of(row))
        except BadRecord as exc:
            logger.warning("%s; left out of the listing", exc)
    return statuses


def _page(jobs: list[JobStatus], last: Row[Any] | None) -> JobPage:
    """A page whose next one starts after ``last`` (the last row read):
    its id, and its time if the row has one (it may be one of the rows
    :func:`_readable` left out)."""
    if last is None:
        return JobPage(jobs, None)
    try:
        at = timestamp_to_datetime(last.enqueued_at)
    except (TypeError, ValueError, OverflowError, OSError):
        at = None  # the next page then needs the row, as before_at came in
    return JobPage(jobs, last.id, at)


def _errors_of(job_id: str, raw: str | None) -> list[Any]:
    """The errors of a job's earlier attempts, as its row keeps them. A
    list edited by hand into something else is said to be unreadable, and
    the next error is kept all the same."""
    try:
        earlier = json_column(job_id, "errors", raw) or []
    except BadRecord as exc:
        return [f"(earlier errors unreadable: {exc})"]
    if not isinstance(earlier, list):
        return [f"(earlier errors unreadable: {earlier!r})"]
    return earlier


def _nothing() -> None:
    """What the store's watchers are handed at a change: nothing but the
    news (they read the job again)."""

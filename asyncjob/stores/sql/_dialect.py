"""The dialect seam: what differs between the SQL databases a store runs on.

:class:`~asyncjob.stores.sql.SQLStore` orchestrates: what a job's life
writes, and when. A :class:`Dialect` says how, in its database's SQL and
on connections of its own, for the writes that come by the thousand
(performs, claims, ends, progress: one statement per batch), and how its
engine, schema and announcements of changes work. Each dialect lives in
one module (``_postgres``, ``_sqlite``); a store on another database (MySQL,
say) is one more module here, not a fork of the store.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncjob._core.models import Claimed, JobState
from asyncjob.stores.kit import Report, loads

from ._schema import DUE, Tables

__all__ = (
    "NEW_COLUMNS",
    "Channels",
    "Dialect",
    "Ending",
    "Listener",
    "by_claim_order",
    "claimed",
    "ending_sql",
)

_QUEUED = JobState.queued.value
_RUNNING = JobState.running.value

#: The columns an insert fills, in this order.
NEW_COLUMNS = (
    "id, name, registered, owner, locked_by, lease_expires_at, state, args, kwargs, "
    "attempts, enqueued_at, run_after"
)


class Ending(NamedTuple):
    """How a job held by the store ended, as it is written."""

    job_id: str
    state: str
    result: str | None  # JSON
    error: str | None
    traceback: str | None
    finished_at: float
    #: The last progress report, if it was not written yet.
    progress: Report | None
    #: The attempt that ends (``None`` for a job that is not registered,
    #: which only its own process runs): a write late for an attempt must
    #: not end the next one, even in the same worker.
    attempt: int | None = None


class Channels(NamedTuple):
    """What a store announces, where the database can (payloads: job ids,
    separated by commas)."""

    #: A registered job may be waiting to be claimed (no payload).
    queued: str
    #: Jobs changed (for their watchers).
    changed: str
    #: Running jobs had their cancel requested (for their holders).
    cancel: str


class Listener(abc.ABC):
    """A connection that hears of changes other processes make, as they
    commit (PostgreSQL's LISTEN, say)."""

    #: How many times it has started listening (1 + reconnections).
    connections: int
    #: Set while it listens.
    listening: asyncio.Event

    @abc.abstractmethod
    async def listen(self, channel: str) -> None:
        """Listen on ``channel`` too, from now on; returns once listening."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop listening and close the connection."""


class Dialect(abc.ABC):
    """How one store talks to its database.

    Made with the store; its engine-level parts (:meth:`engine_options`,
    :meth:`prepare_engine`, the options) serve every
    :class:`~asyncjob.stores.sql._database.Database` on the URL, in any
    thread. :meth:`open` binds its own connections for the frequent
    writes, on the store's loop; :meth:`close` lets them go.
    """

    #: SQLAlchemy's name of the database.
    name: ClassVar[str]
    #: The database's clock, in seconds since the epoch, as SQL text. It
    #: stays the same for a whole statement, so that an index can be
    #: searched with it.
    now_sql: ClassVar[str]
    #: One writer at a time (SQLite): this process's writers take turns on
    #: the event loop rather than in the database's busy handler.
    one_writer: ClassVar[bool] = False
    #: Execution options of a connection on which each statement is a
    #: transaction of its own.
    autocommit_options: ClassVar[dict[str, Any]]
    #: Execution options of a connection for a transaction that will write.
    write_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, url: str, tables: Tables, owner: str) -> None:
        self.url = url
        self.tables = tables
        self.owner = owner

    # -- the engine ------------------------------------------------------------

    def engine_options(self, *, durable: bool = True) -> dict[str, Any]:
        """Keyword arguments of ``create_async_engine``; ``durable=False``
        for an engine whose commits may skip waiting for the disk (lease
        renewals: one lost in a crash does no harm)."""
        return {}

    @abc.abstractmethod
    def prepare_engine(self, engine: AsyncEngine) -> None:
        """Set up a new engine's connections (events, pragmas)."""

    # -- the schema --------------------------------------------------------------

    def lock_schema(self, conn: Connection) -> None:  # noqa: B027 - optional
        """Keep other processes from creating or migrating the schema until
        ``conn``'s transaction ends (they wait)."""

    def install_triggers(self, conn: Connection) -> None:  # noqa: B027 - optional
        """Create (or replace) what announces changes from the database itself."""

    # -- the frequent writes ---------------------------------------------------

    @abc.abstractmethod
    async def open(self, write_lock: Any) -> None:
        """Bind the dialect's own connections, on the store's loop;
        ``write_lock`` is the store's (see :attr:`one_writer`)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close what :meth:`open` bound."""

    @abc.abstractmethod
    async def claim(self, limit: int, lease: float) -> list[Claimed]:
        """Take up to ``limit`` queued registered jobs that are due, in the
        order they came due, for ``lease`` seconds (see
        :meth:`DurableStore.claim`).

        A claim lost with its connection is not sent again: its jobs, if
        the first was committed, come back when their lease runs out.
        """

    @abc.abstractmethod
    async def insert(self, rows: list[dict[str, Any]], lease: float) -> None:
        """Record new jobs (rows as ``SQLStore._row`` makes them); a job
        that is not registered is leased for ``lease`` seconds.

        A job comes due, and its lease starts, by the database's clock, as
        claims and recovery read them: a job performed by a process whose
        clock is ahead is not held back, nor one whose clock is behind
        taken for lost.
        """

    @abc.abstractmethod
    async def finish(self, endings: list[Ending]) -> list[bool]:
        """End the jobs this store still holds, at the attempt each ending
        names; for each, whether it did. A job whose cancel was requested
        ends ``cancelled``."""

    @abc.abstractmethod
    async def progress(self, reports: dict[str, Report]) -> None:
        """Store the latest progress of running jobs."""

    def listener(self, on_notify: Callable[[str, str], None]) -> Listener | None:
        """What hears of changes made by other processes, calling
        ``on_notify(channel, payload)`` on the loop; ``None`` where the
        database announces nothing (the store then polls)."""
        return None

    def channels(self) -> Channels:
        """The names of the store's announcements."""
        prefix = self.tables.prefix
        return Channels(f"{prefix}queued", f"{prefix}changed", f"{prefix}cancel")

    # -- SQL text both dialects share ---------------------------------------------

    def claim_sql(self, owner: str, lease: str, chosen: str) -> str:
        """The claim of the rows ``chosen`` (a condition, in which
        :meth:`due_sql` picks them), with the placeholders given."""
        jobs, now = self.tables.jobs.name, self.now_sql
        return f"""
            UPDATE {jobs}
            SET state = '{_RUNNING}', locked_by = {owner}, started_at = {now},
                lease_expires_at = {now} + {lease},
                -- A count edited past what the column holds must not fail
                -- the whole claim: the job fails alone (see claimed()).
                attempts = CASE WHEN attempts < {MAX_ATTEMPTS} THEN attempts + 1 ELSE attempts END
            WHERE {chosen} AND state = '{_QUEUED}'
            RETURNING id, name, args, kwargs, enqueued_at, attempts
            """

    def due_sql(self, column: str, limit: str) -> str:
        """``column`` of the first ``limit`` rows due, by their claim index."""
        jobs, now = self.tables.jobs.name, self.now_sql
        return f"""SELECT {column} FROM {jobs} WHERE {DUE} AND run_after <= {now}
                   ORDER BY run_after LIMIT {limit}"""


def ending_sql(flag: str, state: str, result: str, error: str, traceback: str) -> str:
    """The ``SET`` clauses that end a job with the values given, or, when its
    cancel was requested (the column ``flag``), ``cancelled`` with none of them."""
    cancelled = JobState.cancelled.value
    return f"""state = CASE WHEN {flag} THEN '{cancelled}' ELSE {state} END,
               result = CASE WHEN {flag} THEN NULL ELSE {result} END,
               error = CASE WHEN {flag} THEN NULL ELSE {error} END,
               traceback = CASE WHEN {flag} THEN NULL ELSE {traceback} END,
               cancel_requested = false"""


#: The most attempts a job's row can count (the column is a 32-bit integer).
MAX_ATTEMPTS = 2**31 - 1


def claimed(row: Sequence[Any]) -> Claimed:
    """A claimed job's row (id, name, args, kwargs, enqueued_at, attempts),
    decoded; a row it cannot decode says why, naming the column, so that
    the job fails alone and the others claimed with it run."""
    job_id, name, args_text, kwargs_text, enqueued_at, attempts = row
    if not isinstance(attempts, int) or not 0 < attempts < MAX_ATTEMPTS:
        problem = (
            f"job {job_id} has {attempts!r} in its attempts column, which asyncjob never writes"
        )
        # The attempts as they are: the worker's end of the job matches them.
        return Claimed(job_id, name, (), {}, enqueued_at, attempts, problem)
    try:
        # No arguments is the most common case: no decoder needed.
        args = [] if args_text == "[]" else loads(args_text)
        kwargs = {} if kwargs_text == "{}" else loads(kwargs_text)
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("arguments must be a JSON array and an object")
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with one row is its own
        problem = f"job {job_id} has stored arguments asyncjob cannot read: {exc}"
        return Claimed(job_id, name, (), {}, enqueued_at, attempts, problem)
    return Claimed(job_id, name, tuple(args), kwargs, enqueued_at, attempts)


def by_claim_order(jobs: list[Claimed]) -> list[Claimed]:
    """Claimed jobs in the order they came due (``RETURNING`` keeps none)."""
    return sorted(jobs, key=lambda job: job.enqueued_at)

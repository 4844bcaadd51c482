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
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, NamedTuple

from sqlalchemy import Connection, Table
from sqlalchemy.engine import Engine

from asyncjob._core.models import Claimed, JobState, made
from asyncjob.stores.kit import Report, loads

from ._rows import never_written
from ._schema import DUE, HOLDS_KEY, RUNNING, SCHEDULED, Tables

__all__ = (
    "NEW_COLUMNS",
    "Channels",
    "Dialect",
    "Ending",
    "Listener",
    "WriteLock",
    "by_claim_order",
    "claimed",
    "ending_sql",
    "new_job_sql",
    "unique_insert_sql",
)

_QUEUED = JobState.queued.value
_RUNNING = JobState.running.value

#: The columns an insert fills, in this order.
NEW_COLUMNS = (
    "id, name, registered, owner, locked_by, lease_expires_at, state, args, kwargs, "
    "attempts, enqueued_at, run_after, queue, priority, unique_key, trace"
)

#: Jobs come due in batches of at most this many per claim (see promote_sql).
PROMOTE_BATCH = 1000


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


class WriteLock(asyncio.Lock):
    """The turn to write of a store's writers in this process, where the
    database has one writer at a time (:attr:`Dialect.one_writer`); it
    says whether anybody waits for it: SQLite's writing thread keeps its
    turn for the next of its transactions only while nobody does."""

    def __init__(self) -> None:
        super().__init__()
        #: Writers waiting for their turn.
        self.waiting = 0

    async def acquire(self) -> Literal[True]:
        self.waiting += 1
        try:
            return await super().acquire()
        finally:
            self.waiting -= 1


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
        # Claims, and looks at when the next job is due, by how many queues
        # and limits they name.
        self._claims: dict[tuple[int, int], str] = {}
        self._next_dues: dict[tuple[int, int], str] = {}

    # -- the engine ------------------------------------------------------------

    def engine_options(self, *, durable: bool = True) -> dict[str, Any]:
        """Keyword arguments of ``create_async_engine``; ``durable=False``
        for an engine whose commits may skip waiting for the disk (lease
        renewals: one lost in a crash does no harm)."""
        return {}

    @abc.abstractmethod
    def prepare_engine(self, engine: Engine) -> None:
        """Set up a new engine's connections (events, pragmas)."""

    # -- the schema --------------------------------------------------------------

    def lock_schema(self, conn: Connection) -> None:  # noqa: B027 - optional
        """Keep other processes from creating or migrating the schema until
        ``conn``'s transaction ends (they wait)."""

    def install_triggers(self, conn: Connection) -> None:  # noqa: B027 - optional
        """Create (or replace) what announces changes from the database itself."""

    @abc.abstractmethod
    def insert_construct(self, table: Table) -> Any:
        """SQLAlchemy's ``insert(table)`` of this database, which can skip
        conflicting rows (``on_conflict_do_nothing``)."""

    async def prepare(self) -> None:  # noqa: B027 - most databases need nothing
        """Make the database ready for the store's first connection, before
        it is made (SQLite: its journal mode)."""

    # -- the frequent writes ---------------------------------------------------

    @abc.abstractmethod
    async def open(self, write_lock: WriteLock) -> None:
        """Bind the dialect's own connections, on the store's loop;
        ``write_lock`` is the store's (see :attr:`one_writer`)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close what :meth:`open` bound."""

    @abc.abstractmethod
    async def claim(
        self,
        limit: int,
        lease: float,
        queues: frozenset[str] | None,
        limits: Mapping[str, int] | None,
    ) -> list[Claimed]:
        """Take up to ``limit`` queued registered jobs that are due, of
        ``queues``, keeping to ``limits``, for ``lease`` seconds (see
        :meth:`DurableStore.claim`); and, first, move the jobs that came due
        since the last claim from ``scheduled`` to ``queued``.

        A claim lost with its connection is not sent again: its jobs, if
        the first was committed, come back when their lease runs out.
        """

    @abc.abstractmethod
    async def next_due(
        self, queues: frozenset[str] | None, limits: Mapping[str, int] | None
    ) -> float | None:
        """Seconds until a job that :meth:`claim` could take comes due (see
        :meth:`DurableStore.next_due`): the statement of
        :meth:`next_due_statement`, on a connection of the dialect's own."""

    @abc.abstractmethod
    async def insert(self, rows: list[dict[str, Any]], lease: float) -> list[str]:
        """Record new jobs (rows as ``SQLStore._row`` makes them), all or
        none; a job that is not registered is leased for ``lease`` seconds.
        Returns, for each row, the id of the job recorded for it: its own,
        or, when its unique key is held, the holder's (nothing is written
        for it then).

        Raises:
            IntegrityError: a job with one of the ids exists already.

        A job comes due, and its lease starts, by the database's clock, as
        claims and recovery read them: a job performed by a process whose
        clock is ahead is not held back, nor one whose clock is behind
        taken for lost.
        """

    @abc.abstractmethod
    async def finish(self, endings: list[Ending]) -> list[str | None]:
        """End the jobs this store still holds, at the attempt each ending
        names; for each, the state it recorded (the value of a
        :class:`JobState`), or ``None`` where it ended nothing. A job whose
        cancel was requested ends ``cancelled``."""

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

    #: The minute of a time (seconds since the epoch) in ``{column}``, as
    #: ``seconds // 60``.
    minute_sql: ClassVar[str]

    #: What addresses a row in a statement that found it a moment before.
    address: ClassVar[str] = "id"
    #: What a claim's choice of rows ends with: the lock that keeps two
    #: workers from choosing the same rows, where the database needs one.
    lock_rows: ClassVar[str] = ""

    def mark(self, n: int, sql_type: str) -> str:
        """The placeholder of a statement's ``n``-th value (from 1)."""
        return f":p{n}"

    def claim_statement(
        self,
        limit: int,
        lease: float,
        queues: frozenset[str] | None,
        limits: Mapping[str, int] | None,
    ) -> tuple[str, list[Any]]:
        """The claim (see :meth:`claim`), and its values in the order of
        their placeholders (:meth:`mark`). The statement depends only on
        how many queues and limits are given: it is made once for each."""
        names = sorted(queues or ())
        capped = sorted((limits or {}).items())
        values: list[Any] = [self.owner, lease, limit, *names]
        for pair in capped:
            values += pair
        sql = self._claims.get((len(names), len(capped)))
        if sql is None:
            mark, n = self.mark, itertools.count(4)
            sql = self.claim_sql(
                mark(1, "varchar"),
                mark(2, "float8"),
                mark(3, "int"),
                [mark(next(n), "varchar") for _ in names],
                [(mark(next(n), "varchar"), mark(next(n), "int")) for _ in capped],
            )
            self._claims[len(names), len(capped)] = sql
        return sql, values

    def next_due_statement(
        self, queues: frozenset[str] | None, limits: Mapping[str, int] | None
    ) -> tuple[str, list[Any]]:
        """When the next job is due (see :meth:`next_due`), and its values in
        the order of their placeholders: made once for each number of queues
        and limits, as claims are. A producer asks after every claim that
        left slots free: built and compiled by SQLAlchemy each time, this
        cost its worker several times what the claim did."""
        names, held_back = sorted(queues or ()), sorted(limits or ())
        sql = self._next_dues.get((len(names), len(held_back)))
        if sql is None:
            n = itertools.count(1)
            of = held = ""
            if names:
                of = f" AND queue IN ({', '.join(self.mark(next(n), 'varchar') for _ in names)})"
            if held_back:
                marks = ", ".join(self.mark(next(n), "varchar") for _ in held_back)
                held = f" AND name NOT IN ({marks})"
            jobs = self.tables.jobs.name
            # Both through their indexes: the first row of the claim index
            # that is not held back, and the first scheduled job of these queues.
            sql = f"""
                SELECT CASE
                    WHEN EXISTS (SELECT 1 FROM {jobs} WHERE {DUE}{of}{held}) THEN 0.0
                    ELSE (SELECT min(run_after) FROM {jobs}
                          WHERE state = '{SCHEDULED}' AND registered{of}) - {self.now_sql}
                END"""
            self._next_dues[len(names), len(held_back)] = sql
        return sql, [*names, *held_back]

    def claim_sql(
        self,
        owner: str,
        lease: str,
        limit: str,
        queues: Sequence[str],
        limits: Sequence[tuple[str, str]],
    ) -> str:
        """The claim, with the placeholders given: ``queues``, those of the
        queue names to take from (none: every queue); ``limits``, pairs of
        those of a name and its concurrency limit.

        The rows are chosen through a claim index, higher priority first,
        then in the order they came due; a name at its limit is left out
        before the choice (so that its jobs do not hold up the others), and
        trimmed to its limit after it (the count and the choice are one
        statement, and the claims of every worker take the limits' locks in
        turn first: see the dialects).
        """
        jobs, now = self.tables.jobs.name, self.now_sql
        ctes = [f"promoted AS ({self.promote_sql()} RETURNING 1)"] if self.promote_in_claim else []
        if limits:
            pairs = ", ".join(f"({name}, {cap})" for name, cap in limits)
            ctes += [
                f"limited(name, cap) AS (VALUES {pairs})",
                f"""free AS (
                    SELECT l.name, l.cap - (SELECT count(*) FROM {jobs} AS r
                                            WHERE {RUNNING} AND r.name = l.name) AS n
                    FROM limited AS l)""",
                f"""picked AS ({
                    self.due_sql(
                        queues, limit, "AND name NOT IN (SELECT name FROM free WHERE n <= 0)"
                    )
                })""",
                """ranked AS (
                    SELECT p.address, f.n,
                           row_number() OVER (PARTITION BY p.name
                                              ORDER BY p.priority DESC, p.run_after) AS place
                    FROM picked AS p LEFT JOIN free AS f ON f.name = p.name)""",
            ]
            chosen = self.chosen_sql("SELECT address FROM ranked WHERE n IS NULL OR place <= n")
        else:
            chosen = self.chosen_sql(f"SELECT address FROM ({self.due_sql(queues, limit)}) AS due")
        update = f"""
            UPDATE {jobs}
            SET state = '{_RUNNING}', locked_by = {owner}, started_at = {now},
                lease_expires_at = {now} + {lease},
                -- A count edited past what the column holds must not fail
                -- the whole claim: the job fails alone (see claimed()).
                attempts = CASE WHEN attempts < {MAX_ATTEMPTS} THEN attempts + 1 ELSE attempts END
            WHERE {chosen} AND state = '{_QUEUED}'
            RETURNING id, name, args, kwargs, enqueued_at, attempts, queue, priority, trace,
                      run_after
            """
        if not self.promote_in_claim:
            return f"WITH {', '.join(ctes)} {update}" if ctes else update
        # The jobs moved to queued are out of this statement's sight (it sees
        # the table as it began): say how many, so that the dialect claims
        # again for them at once. One row at least, then, claimed or not.
        ctes.append(f"claimed AS ({update})")
        return f"""
            WITH {", ".join(ctes)}
            SELECT c.*, (SELECT count(*) FROM promoted) AS promoted
            FROM (VALUES (1)) AS one (x) LEFT JOIN claimed AS c ON true
            """

    def due_sql(self, queues: Sequence[str], limit: str, held_back: str = "") -> str:
        """The first ``limit`` jobs due of ``queues`` (placeholders; none:
        every queue), in claim order, locked where the database locks
        rows, as ``address, priority, run_after``: read through a claim
        index, in its order. ``held_back`` leaves some out, by ``name``,
        which the rows then carry too (the limits' choice needs it; a name
        read for nothing cost SQLite a tenth of a claim of 2 queues).

        Of several queues, queue by queue, each through its own index in
        claim order, then the first of them all. Read through the index of
        every queue, the rows of the queues not taken would be read and
        skipped, more of them at each claim (measured on PostgreSQL: a
        worker of 2 queues out of 5 at 0.38 of a worker of all, with a
        million jobs queued); and where the statistics do not tell how
        many rows each queue has (SQLite, never analyzed), the planner read
        every row of the queues taken, and sorted them.
        """
        jobs = self.tables.jobs.name
        named = ", name" if held_back else ""

        def head(where: str) -> str:
            return f"""
                SELECT {self.address} AS address{named}, priority, run_after FROM {jobs}
                WHERE {DUE} {held_back}{where}
                ORDER BY priority DESC, run_after LIMIT {limit}{self.lock_rows}"""

        if len(queues) < 2:
            return head(f" AND queue = {queues[0]}" if queues else "")
        heads = " UNION ALL ".join(
            f"SELECT * FROM ({head(f' AND queue = {q}')}) AS q{n}" for n, q in enumerate(queues)
        )
        return f"""
            SELECT address{named}, priority, run_after FROM ({heads}) AS heads
            ORDER BY priority DESC, run_after LIMIT {limit}"""

    #: True where the claim statement itself moves the jobs come due (a
    #: common table expression; its rows then end with how many it moved,
    #: and a row of nulls stands for none claimed); else :meth:`claim` runs
    #: :meth:`promote_sql` before it, in its transaction.
    promote_in_claim: ClassVar[bool] = False

    def chosen_sql(self, addresses: str) -> str:
        """The condition that a row is among ``addresses`` (a subquery)."""
        return f"{self.address} IN ({addresses})"

    def promote_sql(self) -> str:
        """Move the jobs whose time has come from ``scheduled`` to ``queued``,
        a batch at a time, through their own index."""
        jobs, now = self.tables.jobs.name, self.now_sql
        return f"""
            UPDATE {jobs} SET state = '{_QUEUED}'
            WHERE {self.chosen_sql(f"SELECT {self.address} FROM {jobs} "
                                   f"WHERE state = '{SCHEDULED}' AND run_after <= {now} "
                                   f"ORDER BY run_after LIMIT {PROMOTE_BATCH}{self.lock_rows}")}
              AND state = '{SCHEDULED}'
            """  # fmt: skip


def new_job_sql(now: str, registered: str, lease: str, at: str, delay: str) -> tuple[str, str, str]:
    """A new job's ``lease_expires_at``, ``state`` and ``run_after``, in the
    database's SQL, from the placeholders given: a job not registered is
    leased (its process runs it), and a delayed one is ``scheduled`` until
    its time, by the database's clock."""
    due = f"COALESCE({at}, {now} + COALESCE({delay}, 0))"
    return (
        f"CASE WHEN {registered} THEN NULL ELSE {now} + {lease} END",
        f"CASE WHEN {due} > {now} THEN '{SCHEDULED}' ELSE '{_QUEUED}' END",
        due,
    )


def unique_insert_sql(insert: str) -> str:
    """``insert`` made to skip, with no error, a row whose unique key is held
    (by another row, or by one before it in the same statement), and to
    return the ids of the rows it wrote."""
    return f"{insert} ON CONFLICT (unique_key) WHERE {HOLDS_KEY} DO NOTHING RETURNING id"


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
    """A claimed job's row (as :meth:`Dialect.claim_sql` returns it),
    decoded; a row it cannot decode says why, naming the column, so that
    the job fails alone and the others claimed with it run."""
    job_id, name, args_text, kwargs_text, enqueued_at, attempts, queue, priority, trace, _ = row
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    problem = None
    if not isinstance(attempts, int) or not 0 < attempts < MAX_ATTEMPTS:
        # The attempts as they are: the worker's end of the job matches them.
        problem = never_written(job_id, attempts, "attempts column")
    elif type(priority) is not int:  # SQLite keeps what it is given: 'high', say
        problem = never_written(job_id, priority, "priority column")
        priority = 0  # it fails, for that: never queued here by it
    else:
        try:
            # No arguments is the most common case: no decoder needed.
            listed = [] if args_text == "[]" else loads(args_text)
            named = {} if kwargs_text == "{}" else loads(kwargs_text)
            if not isinstance(listed, list) or not isinstance(named, dict):
                raise ValueError("arguments must be a JSON array and an object")
            args, kwargs = tuple(listed), named
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with one row is its own
            problem = f"job {job_id} has stored arguments asyncjob cannot read: {exc}"
    return made(Claimed, (job_id, name, args, kwargs, enqueued_at, attempts, problem, queue,
                          priority, _trace_of(trace) if trace else None))  # fmt: skip


def _trace_of(text: str) -> dict[str, str] | None:
    """A stored trace context (not empty: most jobs have none, and are not
    called for); one that cannot be read is dropped (a job is not failed
    for its trace)."""
    try:
        found = loads(text)
    except (ValueError, TypeError):  # TypeError: not text (SQLite keeps a number as given)
        return None
    return found if isinstance(found, dict) else None


def by_claim_order(rows: Sequence[Sequence[Any]]) -> list[Claimed]:
    """Claimed rows, decoded, in claim order (``RETURNING`` keeps none):
    higher priority first, then in the order they came due."""
    return [claimed(row) for row in sorted(rows, key=_claim_order)]


def _claim_order(row: Sequence[Any]) -> tuple[int, float]:
    """A claimed row's place: what is not a number in its priority or due
    time (a row SQLite kept as edited by hand) sorts as 0, so that it does
    not fail the sort, and with it the claim of every job beside it (it
    fails alone, in :func:`claimed`)."""
    priority, due = row[7], row[9]
    return (
        -priority if type(priority) is int else 0,
        due if type(due) is float or type(due) is int else 0.0,
    )

"""SQLite: everything the SQL store does differently there.

- WAL mode (readers do not wait for the writer), a busy timeout, and a
  commit that does not wait for the disk (a power cut may lose the last
  commits, never corrupt the file), on every connection.
- The log is copied into the database (a checkpoint) by a thread of its
  own, once :data:`CHECKPOINT_ROWS` rows were written since the last one
  (or :data:`CHECKPOINT_LATEST` seconds passed) and at most every
  :data:`CHECKPOINT_EVERY` while writes come, not by
  the commit that fills it past SQLite's 1,000 pages, which then takes
  some 10 ms (two flushes to the disk) instead of 0.1: a perform, or the
  claim after it, waited for it (p99 of perform->start in one process:
  11 ms, against 3.5). But SQLite starts the log over only once all of it
  is copied, which a checkpoint beside writes that never pause does not
  achieve: once the log passes :data:`LOG_LIMIT` pages, the writing
  connection checkpoints in its commits again, as SQLite does by default,
  until the log is short again.
- One writer at a time: writes take the write lock when they begin
  (``BEGIN IMMEDIATE``), one at a time in each process, so that two
  processes writing the same file wait for each other instead of failing
  with "database is locked", and a process's own writers wait on its event
  loop rather than in SQLite's busy handler, which sleeps.
- The frequent writes (performs, claims, ends, progress) run on one
  ``sqlite3`` connection in a thread of its own (:class:`WriterThread`),
  a whole transaction per call: one hop between threads per batch, where
  aiosqlite makes one per statement, and one for ``BEGIN`` and ``COMMIT``
  each. A batch of performs or of ends is written by a few statements of
  many rows each, not by ``executemany`` (a statement a row): ``sqlite3``
  gives up the GIL at every statement it steps, and a statement that
  writes a row takes long enough for a busy event loop to take the GIL
  and keep it until its next turn, once a row.
- Nothing announces changes across processes by itself: the listener
  (:class:`SQLiteListener`) hears that another connection committed, from
  the kernel, the moment it writes the log (``_wakeup``), and the store
  then looks at what it cares about. Where that is not available (not
  Linux), the store polls. The commits of the writing thread's connection
  are not heard of: the store knows what it wrote, and a busy worker's
  own claims and ends, heard of, cost it a tenth of its time.

Errors come out as SQLAlchemy's, as from the rest of the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import chain
from typing import Any, ClassVar, TypeVar

from sqlalchemy import Table, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError

from asyncjob._core.log import logger
from asyncjob._core.models import Claimed, JobState
from asyncjob.stores.kit import Report

from ._dialect import (
    NEW_COLUMNS,
    Dialect,
    Ending,
    Listener,
    WriteLock,
    by_claim_order,
    ending_sql,
    unique_insert_sql,
)
from ._schema import HOLDS_KEY, SCHEDULED
from ._wakeup import CommitWatch

__all__ = ("PRAGMAS", "SQLiteDialect", "SQLiteListener", "WriterThread")

T = TypeVar("T")

_QUEUED = JobState.queued.value
_RUNNING = JobState.running.value

#: How long a writer waits for another process's write (seconds).
BUSY_TIMEOUT = 30.0

#: How often (seconds), at most, the log is checkpointed while writes come.
CHECKPOINT_EVERY = 0.2

#: Rows written by the store since the last checkpoint that call for the
#: next one, and the seconds after which a write calls for it anyway. A
#: checkpoint after every commit of a store that writes little (a delayed
#: job every 0.2 s) made the processes' next transactions slower: the
#: jobs started 0.6 ms later at the median, in another process.
CHECKPOINT_ROWS = 1000
CHECKPOINT_LATEST = 5.0

#: Pages in the log past which the writing connection checkpoints in its
#: commits (every 1,000 pages, SQLite's default), until it is under half.
LOG_LIMIT = 2000

#: Set on every connection of a store (see the module's docstring).
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA wal_autocheckpoint=0",  # the store's checkpoints are WriterThread's
)


class SQLiteDialect(Dialect):
    """The SQL store on an SQLite file, through aiosqlite and ``sqlite3``."""

    name = "sqlite"
    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"
    minute_sql = "CAST({column} / 60 AS INTEGER)"  # times are positive: a floor
    one_writer = True
    # The rows a claim chooses are found again by their rowid, which stays
    # the same within the statement: a look-up by the primary key instead
    # cost a claim 2.8 us a job of its 7.8 (a million jobs queued).
    address = "rowid"
    autocommit_options: ClassVar[dict[str, Any]] = {"asyncjob_autocommit": True}
    write_options: ClassVar[dict[str, Any]] = {"asyncjob_write": True}

    def __init__(self, url: str, tables: Any, owner: str) -> None:
        super().__init__(url, tables, owner)
        path = make_url(url).database
        if not path:
            raise ValueError(
                f"{url!r} names no file: an SQLite store lives in a file, as in "
                "sqlite+aiosqlite:///path/jobs.db"
            )
        self.path = path
        self._writer: WriterThread | None = None
        jobs = tables.jobs.name
        # One writer at a time: a claim is atomic as it is, its counts for
        # the limits included.
        self._promote = self.promote_sql()
        # Performs are bound by position, from new_row(): named parameters
        # and the due time and state computed in SQL cost a third of an
        # insert. A batch is a few statements of many rows (see insert()).
        self._inserts: dict[int, str] = {}
        self._insert_unique = unique_insert_sql(
            f"INSERT INTO {jobs} ({NEW_COLUMNS}) VALUES {_NEW_ROW}"
        )
        self._holder = f"SELECT id FROM {jobs} WHERE unique_key = ? AND {HOLDS_KEY}"
        # A batch of ends is one statement (see finish()).
        self._ends: dict[int, str] = {}
        self._progress = (
            f"UPDATE {jobs} SET progress = ?, data = ? WHERE id = ? AND state = '{_RUNNING}'"
        )

    # -- the engine ------------------------------------------------------------

    def engine_options(self, *, durable: bool = True) -> dict[str, Any]:
        return {"connect_args": {"timeout": BUSY_TIMEOUT}}  # commits skip the disk anyway

    def prepare_engine(self, engine: Engine) -> None:
        """SQLAlchemy's recipe for real transactions on pysqlite, with WAL."""

        @event.listens_for(engine, "connect")
        def connect(dbapi_connection: Any, record: Any) -> None:
            # Let SQLAlchemy, not the driver, say when a transaction begins.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in PRAGMAS:
                cursor.execute(pragma)
            cursor.close()

        @event.listens_for(engine, "begin")
        def begin(conn: Any) -> None:
            options = conn.get_execution_options()
            if options.get("asyncjob_autocommit", False):
                return  # each statement is its own transaction
            conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("asyncjob_write") else "BEGIN")

    async def prepare(self) -> None:
        await asyncio.to_thread(_use_wal, self.path)

    def listener(self, on_notify: Callable[[str, str], None]) -> Listener | None:
        writer = self._open_writer()
        try:
            return SQLiteListener(self.path, on_notify, writer)
        except OSError as exc:
            logger.warning(
                "other processes' changes to %s are seen at each poll, not at once: %s",
                self.path,
                exc,
            )
            return None

    def insert_construct(self, table: Table) -> Any:
        from sqlalchemy.dialects.sqlite import insert

        return insert(table)

    # -- the frequent writes ---------------------------------------------------

    async def open(self, write_lock: WriteLock) -> None:
        self._writer = WriterThread(self.path, PRAGMAS, write_lock)
        await self._writer.connect()  # before a watch reads its data_version

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()

    def _open_writer(self) -> WriterThread:
        if self._writer is None:
            raise RuntimeError("the store is not open: a Runner opens it when it starts")
        return self._writer

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._open_writer().write(work)

    async def claim(
        self,
        limit: int,
        lease: float,
        queues: frozenset[str] | None,
        limits: Mapping[str, int] | None,
    ) -> list[Claimed]:
        claim, values = self.claim_statement(limit, lease, queues, limits)
        params = {f"p{n}": value for n, value in enumerate(values, 1)}

        def write(conn: sqlite3.Connection) -> list[Any]:
            conn.execute(self._promote)
            return conn.execute(claim, params).fetchall()

        return by_claim_order(await self._write(write))

    async def next_due(
        self, queues: frozenset[str] | None, limits: Mapping[str, int] | None
    ) -> float | None:
        sql, values = self.next_due_statement(queues, limits)
        params = {f"p{n}": value for n, value in enumerate(values, 1)}
        wait = await self._open_writer().read(lambda conn: conn.execute(sql, params).fetchone()[0])
        return None if wait is None else max(0.0, float(wait))

    async def insert(self, rows: list[dict[str, Any]], lease: float) -> list[str]:
        now = sqlite_now()
        values = [new_row(row, now, lease) for row in rows]
        if all(row["unique_key"] is None for row in rows):

            def write_all(conn: sqlite3.Connection) -> None:
                # Statements of a power of two of rows, the largest that
                # fit (500 rows: 256, 128, 64, 32, 16 and 4), so that a
                # few prepared statements serve every batch.
                most = _rows_that_fit(conn, _NEW_VALUES)
                start = 0
                while start < len(values):
                    size = 1 << (min(len(values) - start, most).bit_length() - 1)
                    chunk = values[start : start + size]
                    conn.execute(self._insert_sql(size), list(chain.from_iterable(chunk)))
                    start += size

            await self._write(write_all)
            return [row["id"] for row in rows]

        def write(conn: sqlite3.Connection) -> list[str]:
            # One writer at a time: a key's holder cannot end meanwhile.
            recorded = []
            for row, bound in zip(rows, values, strict=True):
                found = conn.execute(self._insert_unique, bound).fetchone()
                if found is None:
                    found = conn.execute(self._holder, (row["unique_key"],)).fetchone()
                recorded.append(found[0])
            return recorded

        return await self._write(write)

    async def finish(self, endings: list[Ending]) -> list[str | None]:
        """A batch of ends in one statement, its values bound in rows of a
        ``VALUES`` list (see the module's docstring: a statement a job gave
        the GIL up at every row, and waited for the loop's next turn).
        Each statement has room for a power of two of rows (the rest are
        nulls, which end nothing), so that a few statements serve every
        batch from SQLite's cache of prepared statements."""
        rows = [end_values(e) for e in endings]

        def write(conn: sqlite3.Connection) -> dict[str, str]:
            most = _rows_that_fit(conn, _END_VALUES, others=1)  # and the owner
            ended: dict[str, str] = {}
            for start in range(0, len(rows), most):
                chunk = rows[start : start + most]
                room = min(1 << (len(chunk) - 1).bit_length(), most)
                values = list(chain.from_iterable(chunk))
                values += _NO_END * (room - len(chunk))
                values.append(self.owner)
                ended.update(conn.execute(self._end_sql(room), values))
            return ended

        ended = await self._write(write)
        return [ended.get(e.job_id) for e in endings]

    def _insert_sql(self, rows: int) -> str:
        """The statement that inserts ``rows`` new jobs, their values in
        the order of :func:`new_row`'s.

        ``OR FAIL``: a statement that writes several rows and may fail on
        one (a job id taken) otherwise first copies every page it changes,
        to undo itself alone (SQLite's statement journal). With random ids
        that was a page a row, and the statement of 256 rows cost more
        than 256 statements of one (11-15 against 6-10 us a row, growing
        with the table). With ``OR FAIL`` it keeps the rows written before
        the one that failed, and the transaction is rolled back whole
        (:meth:`WriterThread.write`): all or none."""
        sql = self._inserts.get(rows)
        if sql is None:
            jobs = self.tables.jobs.name
            marks = ", ".join([_NEW_ROW] * rows)
            sql = f"INSERT OR FAIL INTO {jobs} ({NEW_COLUMNS}) VALUES {marks}"
            self._inserts[rows] = sql
        return sql

    def _end_sql(self, rows: int) -> str:
        """The statement of ends with room for ``rows`` ends. A job whose
        lease ran out and that another worker took meanwhile is that
        worker's to finish; a later attempt of it, even here, is that
        attempt's: the statement's condition, and the ids it returns say
        which ends were written."""
        sql = self._ends.get(rows)
        if sql is None:
            jobs = self.tables.jobs.name
            ending = ending_sql("cancel_requested", "e.state", "e.result", "e.error", "e.traceback")
            marks = ", ".join([f"({', '.join('?' * _END_VALUES)})"] * rows)
            sql = self._ends[rows] = f"""
                WITH e (id, state, result, error, traceback, finished_at, reported,
                        progress, data, attempt) AS (VALUES {marks})
                UPDATE {jobs}
                SET {ending},
                    finished_at = e.finished_at, lease_expires_at = NULL,
                    progress = CASE WHEN e.reported THEN e.progress ELSE {jobs}.progress END,
                    data = CASE WHEN e.reported THEN e.data ELSE {jobs}.data END
                FROM e
                WHERE {jobs}.id = e.id AND {jobs}.state = '{_RUNNING}' AND locked_by = ?
                    AND (e.attempt IS NULL OR attempts = e.attempt)
                RETURNING {jobs}.id, {jobs}.state
                """
        return sql

    async def progress(self, reports: dict[str, Report]) -> None:
        rows = [(value, data, job_id) for job_id, (value, data) in reports.items()]
        await self._write(lambda conn: conn.executemany(self._progress, rows))


def sqlite_now() -> float:
    """``SQLiteDialect.now_sql`` as SQLite computes it, to the bit: its clock
    is this process's, read to the millisecond, through ``julianday``'s
    arithmetic. A due time computed from ``time.time()`` instead fell
    between two of SQLite's milliseconds, and a worker woke for it before
    its claim could see it due (delayed jobs started 1.3 ms later at the
    median, ``bench/scheduling.py``)."""
    julian_day = (time.time_ns() // 1_000_000 + _UNIX_EPOCH_JULIAN_MS) / 86_400_000.0
    return (julian_day - 2440587.5) * 86400.0


#: The Unix epoch as a Julian day number, in milliseconds (SQLite's ``iJD``).
_UNIX_EPOCH_JULIAN_MS = 210_866_760_000_000


def new_row(row: dict[str, Any], now: float, lease: float) -> tuple[Any, ...]:
    """A performed job's values, in the order of the insert's columns.

    Its due time and state are the database's to say (``new_job_sql``), by
    its clock: ``now`` is :func:`sqlite_now`. A job not registered is leased
    (its process runs it); a delayed one is ``scheduled`` until its time."""
    at, delay = row["at"], row["delay"]
    due = at if at is not None else now + (delay or 0.0)
    registered, owner = row["registered"], row["owner"]
    return (
        row["id"],
        row["name"],
        registered,
        owner,
        owner,
        None if registered else now + lease,
        SCHEDULED if due > now else _QUEUED,
        row["args"],
        row["kwargs"],
        row["enqueued_at"],
        due,
        row["queue"],
        row["priority"],
        row["unique_key"],
        row["trace"],
    )


def end_values(ending: Ending) -> tuple[Any, ...]:
    """An end's values, in the order of a row of the statement of ends."""
    reported = ending.progress is not None
    progress, data = ending.progress or (None, None)
    return (
        ending.job_id,
        ending.state,
        ending.result,
        ending.error,
        ending.traceback,
        ending.finished_at,
        reported,
        progress,
        data,
        ending.attempt,
    )


def _rows_that_fit(conn: sqlite3.Connection, values_per_row: int, others: int = 0) -> int:
    """How many rows of ``values_per_row`` bound values one statement holds
    beside ``others`` more, within SQLite's limit of bound values (at
    least one: past the limit, SQLite says so)."""
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, (limit - others) // values_per_row)


#: A new job's row in an insert (its attempts are 0), and its bound values.
_NEW_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)"
_NEW_VALUES = _NEW_ROW.count("?")

#: The values of a row of the statement of ends, and a row that ends nothing.
_END_VALUES = 10
_NO_END = [None] * _END_VALUES


class SQLiteListener(Listener):
    """Hears that other connections committed, and tells each channel
    listened on with an empty payload: something may have changed there,
    the store looks what (SQLite says no more).

    Raises:
        OSError: commits cannot be heard of here (see
            :class:`~asyncjob.stores.sql._wakeup.CommitWatch`).
    """

    def __init__(
        self, path: str, on_notify: Callable[[str, str], None], writer: WriterThread
    ) -> None:
        self._on_notify = on_notify
        self._channels: list[str] = []
        self._watch = CommitWatch(path, self._committed, writer)
        self._watch.start()
        self.connections = 1
        self.listening = asyncio.Event()
        self.listening.set()

    async def listen(self, channel: str) -> None:
        if channel not in self._channels:
            self._channels.append(channel)

    async def stop(self) -> None:
        self._watch.stop()
        self.listening.clear()

    def _committed(self) -> None:
        for channel in self._channels:
            self._on_notify(channel, "")


def _use_wal(path: str) -> None:
    """Put the file in WAL mode, if it is not yet: the mode is the file's,
    kept once set. Setting it takes the file to itself for a moment, and
    SQLite does not wait for that (its busy timeout does not apply): a
    store opening a file that another process writes in the default mode
    (the application creating its tables, say) got "database is locked".
    Tried again then, for up to BUSY_TIMEOUT."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT)) as conn:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)  # in a thread of its own: a pace, not a wait for something


class WriterThread:
    """One ``sqlite3`` connection, in a thread of its own, for transactions
    that write (see the module's docstring); the versions of the database
    that a :class:`CommitWatch` reads.

    Args:
        path: the database file.
        setup: statements run once on the new connection (pragmas).
        lock: held while transactions of the thread are under way, with
            the store's other writers in this process, so that they take
            turns on the event loop rather than in SQLite's busy handler.
            The thread keeps it for the transactions that come meanwhile,
            while nobody else waits for it: the thread takes them one after
            the other, so the next need not wait for the loop to see the
            last one end (a busy SQLite worker's claims waited so behind
            its ends, its loop idle meanwhile: 28 % more jobs a second
            without that wait).
    """

    def __init__(self, path: str, setup: Sequence[str], lock: WriteLock) -> None:
        self._path = path
        self._setup = setup
        self._lock = lock
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="asyncjob-sqlite")
        self._busy = 0  # calls handed to the thread and not returned
        self._writing = 0  # transactions of write() under way, holding the lock
        self._ask_again: Callable[[], None] | None = None
        self._watch: CommitWatch | None = None
        # Checkpoints: asked for by the writing thread, run by this one.
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="asyncjob-sqlite-log")
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._checkpointing = False
        self._last_checkpoint = 0.0  # time.monotonic() when it was asked for
        self._rows_checkpointed = 0  # the connection's total_changes then
        # Whether the writing connection is to checkpoint in its commits
        # (the checkpointing thread's wish), and whether it does.
        self._log_full = self._in_commits = False
        #: Checkpoints made (for the tests).
        self.checkpoints = 0

    def data_version(self, ask_again: Callable[[], None]) -> int | None:
        """The connection's ``PRAGMA data_version``, which moves only with
        the commits of other connections (see ``_wakeup.Versions``); read
        here, on the loop, while the thread has nothing of ours to do.
        While it has, None, and ``ask_again()`` once it is done."""
        if self._busy or self._conn is None:
            self._ask_again = ask_again
            return None
        try:
            version: int = self._conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            self._ask_again = ask_again  # busy for a moment (a checkpoint): at the next call
            return None
        return version

    def watched_by(self, watch: CommitWatch | None) -> None:
        self._watch = watch

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` in one ``BEGIN IMMEDIATE`` transaction,
        committed when it returns and rolled back when it raises.

        Raises:
            sqlalchemy.exc.OperationalError: SQLite could not (the file is
                locked by another process for longer than the busy timeout,
                say).
            sqlalchemy.exc.IntegrityError: a statement broke a constraint.
            sqlalchemy.exc.DatabaseError: SQLite refused a statement otherwise.
        """
        if not self._writing or self._lock.waiting:
            await self._lock.acquire()
        # else the turn is this thread's already, for the transactions handed
        # to it: this one follows them there, without waiting for the loop.
        self._writing += 1
        watch = self._watch
        if watch is not None:
            watch.writing()
        version = None
        try:
            transaction = partial(self._transaction, work, watch is not None)
            result, version = await self._in_thread(transaction)
        finally:
            if watch is not None:
                watch.written(version)
            self._writing -= 1
            if not self._writing:
                self._lock.release()
        return result

    async def connect(self) -> None:
        """Open the connection now (it opens at the first call otherwise)."""
        await self._in_thread(self._connection)

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` outside any transaction of ours (a read of
        one statement, which takes no lock that writers wait for), between
        the transactions of :meth:`write`.

        Raises:
            as :meth:`write` does.
        """
        return await self._in_thread(partial(self._errors_translated, work))

    async def close(self) -> None:
        async with self._lock:
            await self._in_thread(self._close)
        self._thread.shutdown(wait=False)
        # After the checkpoint under way, if any: the last connection to
        # close checkpoints the rest.
        await asyncio.get_running_loop().run_in_executor(
            self._checkpointer, self._close_checkpoints
        )
        self._checkpointer.shutdown(wait=False)

    async def _in_thread(self, call: Callable[[], T]) -> T:
        """``call()`` in the thread; the connection is the thread's alone
        meanwhile (:meth:`data_version` waits for it)."""
        loop = asyncio.get_running_loop()
        self._busy += 1
        try:
            return await loop.run_in_executor(self._thread, call)
        finally:
            self._busy -= 1
            if not self._busy and self._ask_again is not None:
                loop.call_soon(self._ask_again)
                self._ask_again = None

    def _transaction(
        self, work: Callable[[sqlite3.Connection], T], watched: bool
    ) -> tuple[T, int | None]:
        """``work`` in a transaction; with ``watched``, the ``data_version``
        read after its commit too (see ``CommitWatch.writing``)."""

        def transaction(conn: sqlite3.Connection) -> tuple[T, int | None]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            version = None
            if watched:
                with contextlib.suppress(sqlite3.Error):  # the watch reads it again later
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
            wanted = self._log_full  # the checkpointing thread's to change
            if wanted is not self._in_commits:
                # Committed already: the work succeeded, whatever this does
                # (on an error, it is tried again after the next commit).
                pages = 1000 if wanted else 0  # SQLite's default, or never
                with contextlib.suppress(sqlite3.Error):
                    conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
                    self._in_commits = wanted
            if not self._checkpointing:
                self._ask_for_checkpoint(conn.total_changes)
            return result, version

        return self._errors_translated(transaction)

    def _errors_translated(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)``, its errors SQLAlchemy's, as the store's
        other connections raise them."""
        try:
            return work(self._connection())
        except sqlite3.OperationalError as exc:
            raise OperationalError(None, None, exc) from exc
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(None, None, exc) from exc
        except (sqlite3.Error, ValueError, OverflowError) as exc:
            # ValueError, OverflowError: a value sqlite3 cannot bind (text
            # that is not UTF-8, an integer past 64 bits).
            raise DatabaseError(None, None, exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # Used by the loop's thread too, never at once: data_version().
            self._conn = self._connect(check_same_thread=False)
        return self._conn

    def _connect(self, *, check_same_thread: bool = True) -> sqlite3.Connection:
        """A new connection, set up; autocommit as the driver sees it: the
        transactions are ours."""
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=check_same_thread
        )
        for statement in self._setup:
            conn.execute(statement)
        return conn

    def _ask_for_checkpoint(self, rows: int) -> None:
        """After a commit of the writing thread, whose connection has
        written ``rows`` rows in all: a checkpoint, if it is time."""
        now = time.monotonic()
        since = now - self._last_checkpoint
        if since >= CHECKPOINT_EVERY and (
            rows - self._rows_checkpointed >= CHECKPOINT_ROWS or since >= CHECKPOINT_LATEST
        ):
            self._checkpointing = True
            self._last_checkpoint, self._rows_checkpointed = now, rows
            self._checkpointer.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        """Copy what the log holds into the database, as far as readers let
        it (``PASSIVE``: it waits for nobody, and nobody for it); in the
        checkpointing thread."""
        try:
            if self._checkpoint_conn is None:
                self._checkpoint_conn = self._connect()
            _, pages, _ = self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if pages >= LOG_LIMIT:
                self._log_full = True
            elif pages < LOG_LIMIT // 2:
                self._log_full = False
            self.checkpoints += 1
        except sqlite3.Error as exc:
            logger.warning("could not checkpoint the log of %s (again soon): %s", self._path, exc)
        finally:
            self._checkpointing = False

    def _close_checkpoints(self) -> None:
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

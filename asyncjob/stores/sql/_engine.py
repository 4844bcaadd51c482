"""The database connection of an SQL store, and what differs by dialect.

Round trips are what a job queue in SQL pays for most, so each kind of
work here takes as few as its guarantees allow:

- :meth:`Database.execute`: one statement, which is its own transaction.
  On PostgreSQL it runs in autocommit: one round trip, with no ``BEGIN``
  and ``COMMIT`` around it. Writes are made idempotent by the store so
  that one lost to a dead connection is sent again, once.
- :meth:`Database.write`: a transaction of several statements, for the
  writes that read first (a cancel, a retry).
- :meth:`Database.fetch`: one query, in autocommit too, sent again on a
  new connection if the first was dead.

On PostgreSQL the store's most frequent statements skip even this, and go
straight to the driver (see ``_lanes``).

PostgreSQL: the pool checks that a connection is still open as it hands
it out, without a round trip (asyncpg sees the server close it); the
defaults otherwise (READ COMMITTED). SQLite: WAL mode, a busy timeout, and
writes that take the write lock when they begin (``BEGIN IMMEDIATE``), one
at a time in each process, so that two processes writing the same file
wait for each other instead of failing with "database is locked", and a
process's own writers wait on its event loop rather than in SQLite's busy
handler, which sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, Executable, Float, event, literal_column
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ("SQLITE_PRAGMAS", "Database", "same_database")

#: How long a SQLite writer waits for another process's write (seconds).
SQLITE_BUSY_TIMEOUT = 30.0

#: Set on every SQLite connection of a store: the write-ahead log (readers
#: do not wait for writers), the busy timeout, and a commit that does not
#: wait for the disk (a power cut may lose the last commits, never corrupt
#: the file).
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}",
    "PRAGMA synchronous=NORMAL",
)


class Database:
    """An async engine, and transactions shaped for the store's work.

    Args:
        url: an SQLAlchemy async URL (``sqlite+aiosqlite:///jobs.db``,
            ``postgresql+asyncpg://...``).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url, **_engine_options(url))
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if self.is_sqlite:
            _configure_sqlite(self.engine)
            self._autocommit = self.engine.execution_options(asyncjob_autocommit=True)
        else:
            _check_on_checkout(self.engine)
            self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        #: SQLite has one writer at a time: this process's wait their turn here.
        self.write_lock = asyncio.Lock()
        #: The SQLite file (``None`` on PostgreSQL).
        self.path = make_url(url).database if self.is_sqlite else None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that will write: committed on exit, rolled back on error."""
        if self.is_sqlite:
            async with self.write_lock, self.engine.connect() as conn:
                conn = await conn.execution_options(asyncjob_write=True)
                async with conn.begin():
                    yield conn
            return
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    async def execute(self, statement: Executable, params: Any = None) -> CursorResult[Any]:
        """Run one statement that writes, in a transaction of its own; the
        result is buffered.

        On PostgreSQL, in autocommit: one round trip. If the connection
        turns out dead (the server restarted, the connection was killed),
        the statement is sent once more on a new one: give only statements
        that do no harm when run twice, since the first may have been
        committed before its answer was lost.
        """
        if self.is_sqlite:
            async with self.write() as conn:
                return await conn.execute(statement, params)
        return await self._autocommitted(statement, params)

    async def fetch(self, statement: Executable, params: Any = None) -> CursorResult[Any]:
        """Run one query, which sees what was committed when it began; the
        result is buffered. Sent again on a new connection if the first
        turns out dead, as :meth:`execute` does."""
        return await self._autocommitted(statement, params)

    async def _autocommitted(self, statement: Executable, params: Any) -> CursorResult[Any]:
        try:
            async with self._autocommit.connect() as conn:
                return await conn.execute(statement, params)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        async with self._autocommit.connect() as conn:
            return await conn.execute(statement, params)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads that need no snapshot across statements:
        each statement sees what was committed when it began."""
        async with self._autocommit.connect() as conn:
            yield conn

    def now(self) -> ColumnElement[float]:
        """The database's clock, in seconds since the epoch.

        Leases are stamped and compared with it, not with each worker's own
        clock, so that workers on machines whose clocks disagree still agree
        on when a lease has run out. It stays the same for the whole
        statement, so that an index can be searched with it.
        """
        return literal_column(self.now_sql, Float)

    @property
    def now_sql(self) -> str:
        """:meth:`now`, as SQL text."""
        if self.is_sqlite:
            return "((julianday('now') - 2440587.5) * 86400.0)"
        return "CAST(EXTRACT(EPOCH FROM statement_timestamp()) AS float8)"

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
    return {}


def _check_on_checkout(engine: AsyncEngine) -> None:
    """Never hand out a connection that the server has closed.

    asyncpg reads every open connection all the time, so it learns at once
    when the server closes one (a restart, ``pg_terminate_backend``): a
    connection it knows closed is replaced as the pool hands it out, with
    no round trip, unlike ``pool_pre_ping``. One that dies unnoticed fails
    its statement, which :meth:`Database.execute` sends again.
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise DisconnectionError("the server closed this connection")

    broken = engine.dialect.loaded_dbapi.InternalClientError

    @event.listens_for(engine.sync_engine, "handle_error")
    def handle_error(context: Any) -> None:
        # Killed while idle, a connection has read the server's last message
        # and not yet its end: asyncpg then refuses to use it with an
        # "internal client error". It is as good as disconnected.
        if isinstance(context.original_exception, broken):
            context.is_disconnect = True


def _configure_sqlite(engine: AsyncEngine) -> None:
    """SQLAlchemy's recipe for real transactions on pysqlite, with WAL."""

    @event.listens_for(engine.sync_engine, "connect")
    def connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy, not the driver, say when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get("asyncjob_autocommit", False):
            return  # each statement is its own transaction
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("asyncjob_write") else "BEGIN")


def same_database(a: str, b: str) -> bool:
    """True when two URLs name the same database, whatever their drivers
    (``postgresql+psycopg://`` and ``postgresql+asyncpg://`` alike)."""
    first, second = make_url(a), make_url(b)

    def where(url: URL) -> tuple[object, ...]:
        return (url.get_backend_name(), url.host, url.port, url.database, url.username)

    return where(first) == where(second)

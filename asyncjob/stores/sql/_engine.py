"""The database connection of an SQL store, and what differs by dialect.

SQLite: WAL mode, a busy timeout, and writes that take the write lock when
they begin (``BEGIN IMMEDIATE``), so that two processes writing the same
file wait for each other instead of failing with "database is locked".
PostgreSQL: the defaults (READ COMMITTED).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import ColumnElement, Float, cast, event, func, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ("Database", "same_database")

#: How long a SQLite writer waits for another process's write (seconds).
SQLITE_BUSY_TIMEOUT = 30.0


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

    @asynccontextmanager
    async def write(self, *, durable: bool = True) -> AsyncIterator[AsyncConnection]:
        """A transaction that will write: committed on exit, rolled back on error.

        ``durable=False`` lets PostgreSQL report the commit before the disk
        has it: for writes whose loss in a crash does no harm (a claim, which
        then stays queued; a lease renewal; progress), it saves a flush of
        the log (milliseconds on ordinary disks) from every one of them.
        """
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                conn = await conn.execution_options(asyncjob_write=True)
            async with conn.begin():
                if not durable and not self.is_sqlite:
                    await conn.execute(text("SET LOCAL synchronous_commit = off"))
                yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that only reads."""
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    def now(self) -> ColumnElement[float]:
        """The database's clock, in seconds since the epoch.

        Leases are stamped and compared with it, not with each worker's own
        clock, so that workers on machines whose clocks disagree still agree
        on when a lease has run out.
        """
        if self.is_sqlite:
            return (func.julianday("now") - 2440587.5) * 86400.0
        return cast(func.extract("epoch", func.clock_timestamp()), Float)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
    return {"pool_pre_ping": True}


def _configure_sqlite(engine: AsyncEngine) -> None:
    """SQLAlchemy's recipe for real transactions on pysqlite, with WAL."""

    @event.listens_for(engine.sync_engine, "connect")
    def connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy, not the driver, say when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def begin(conn: Any) -> None:
        write = conn.get_execution_options().get("asyncjob_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def same_database(a: str, b: str) -> bool:
    """True when two URLs name the same database, whatever their drivers
    (``postgresql+psycopg://`` and ``postgresql+asyncpg://`` alike)."""
    first, second = make_url(a), make_url(b)

    def where(url: URL) -> tuple[object, ...]:
        return (url.get_backend_name(), url.host, url.port, url.database, url.username)

    return where(first) == where(second)

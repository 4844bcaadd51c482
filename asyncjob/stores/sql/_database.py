"""The database of an SQL store, through SQLAlchemy's Core and its asyncio
drivers (asyncpg, aiosqlite).

Round trips are what a job queue in SQL pays for most, so each kind of
work here takes as few as its guarantees allow:

- :meth:`Database.execute`: one statement, which is its own transaction.
  Where the database allows it (PostgreSQL) it runs in autocommit: one
  round trip, with no ``BEGIN`` and ``COMMIT`` around it. Writes are made
  idempotent by the store so that one lost to a dead connection is sent
  again, once.
- :meth:`Database.write`: a transaction of several statements, for the
  writes that read first (a cancel, a retry).
- :meth:`Database.fetch`: one query, in autocommit too, sent again on a
  new connection if the first was dead, and again for a while when the
  database is away (a restart): a wait or a watch rides it out.

The store's most frequent statements skip even this, and go straight to
the driver on its dialect's own connections (see ``_dialect``). What
differs between databases here (the engine's set-up, how a write begins)
is the dialect's to say.

Not through ``sqlalchemy.ext.asyncio``: importing it imports SQLAlchemy's
ORM too, 5 MB of an idle worker's memory (``bench/README.md``, "Idle worker
memory"), for a layer the store uses none of but its awaiting. A plain
``Engine`` on an asyncio driver runs its calls inside
``greenlet_spawn``, as ``AsyncConnection`` does (:class:`Connection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, overload

from sqlalchemy import ColumnElement, CursorResult, Executable, Float, create_engine, literal_column
from sqlalchemy import engine as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.util import greenlet_spawn

from asyncjob._core.log import logger

from ._dialect import Dialect, WriteLock

if TYPE_CHECKING:
    from sqlalchemy.sql.selectable import TypedReturnsRows

__all__ = ("RIDE_OUT", "Connection", "Database", "away", "refused", "same_database")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: Seconds a read keeps trying while the database is away (a restart takes
#: a second or two), before it raises.
RIDE_OUT = 15.0
#: Seconds between two tries meanwhile.
RETRY_EVERY = 0.2


class Connection:
    """A connection of the store's engine, its calls awaited: each runs in
    ``greenlet_spawn``, where the asyncio driver's awaits can happen."""

    def __init__(self, sync: sa.Connection) -> None:
        self.sync = sync

    @overload
    async def execute(
        self, statement: TypedReturnsRows[*Ts], params: Any = None
    ) -> CursorResult[*Ts]: ...

    @overload
    async def execute(
        self, statement: Executable, params: Any = None
    ) -> CursorResult[*tuple[Any, ...]]: ...

    async def execute(self, statement: Executable, params: Any = None) -> CursorResult[Any]:
        """The statement's result, its rows read already (the asyncio
        drivers' cursors hold them all)."""
        return await greenlet_spawn(self.sync.execute, statement, params)

    async def scalar(self, statement: Executable, params: Any = None) -> Any:
        return await greenlet_spawn(self.sync.scalar, statement, params)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(the sync connection, *args)``, for code written for one."""
        return await greenlet_spawn(fn, self.sync, *args)


class Database:
    """An engine, and transactions shaped for the store's work.

    One per store, on the store's loop; the lease thread makes one of its
    own, on its loop.
    """

    def __init__(self, dialect: Dialect, *, durable: bool = True) -> None:
        self.dialect = dialect
        self.url = dialect.url
        self.engine = create_engine(self.url, **dialect.engine_options(durable=durable))
        dialect.prepare_engine(self.engine)
        self._autocommit = self.engine.execution_options(**dialect.autocommit_options)
        #: Where the database has one writer at a time, this process's
        #: writers wait their turn here (see :attr:`Dialect.one_writer`).
        self.write_lock = WriteLock()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Connection]:
        """A transaction that will write: committed on exit, rolled back on error."""
        turn = self.write_lock if self.dialect.one_writer else contextlib.nullcontext()
        async with turn, _connected(self.engine) as conn:
            if self.dialect.write_options:
                conn = conn.execution_options(**self.dialect.write_options)
            await greenlet_spawn(conn.begin)
            try:
                yield Connection(conn)
            except BaseException:
                await _to_the_end(greenlet_spawn(conn.rollback))
                raise
            await greenlet_spawn(conn.commit)

    async def execute(self, statement: Executable, params: Any = None) -> CursorResult[Any]:
        """Run one statement that writes, in a transaction of its own; the
        result is buffered.

        Where it runs in autocommit, if the connection turns out dead (the
        server restarted, the connection was killed), the statement is sent
        once more on a new one: give only statements that do no harm when
        run twice, since the first may have been committed before its
        answer was lost.
        """
        if self.dialect.one_writer:
            async with self.write() as conn:
                return await conn.execute(statement, params)
        return await self._autocommitted(statement, params)

    async def fetch(self, statement: Executable, params: Any = None) -> CursorResult[Any]:
        """Run one query, which sees what was committed when it began; the
        result is buffered. Sent again on a new connection if the first
        turns out dead, as :meth:`execute` does, and while the database is
        away (restarting, shutting down, refusing connections), for up to
        :data:`RIDE_OUT` seconds."""
        given_up_at = None
        while True:
            try:
                return await self._autocommitted(statement, params)
            except (DBAPIError, OSError) as exc:
                if not away(exc):
                    raise
                now = time.monotonic()
                if given_up_at is None:
                    given_up_at = now + RIDE_OUT
                    logger.warning("the database is away (%s); trying again", exc)
                elif now >= given_up_at:
                    raise
            await asyncio.sleep(RETRY_EVERY)

    async def _autocommitted(self, statement: Executable, params: Any) -> CursorResult[Any]:
        try:
            async with _connected(self._autocommit) as conn:
                return await greenlet_spawn(conn.execute, statement, params)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        async with _connected(self._autocommit) as conn:
            return await greenlet_spawn(conn.execute, statement, params)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        """A connection for reads that need no snapshot across statements:
        each statement sees what was committed when it began."""
        async with _connected(self._autocommit) as conn:
            yield Connection(conn)

    def now(self) -> ColumnElement[float]:
        """The database's clock, in seconds since the epoch.

        Leases are stamped and compared with it, not with each worker's own
        clock, so that workers on machines whose clocks disagree still agree
        on when a lease has run out. It stays the same for the whole
        statement, so that an index can be searched with it.
        """
        return literal_column(self.dialect.now_sql, Float)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await greenlet_spawn(self.engine.dispose)


@asynccontextmanager
async def _connected(engine: sa.Engine) -> AsyncIterator[sa.Connection]:
    """A connection of ``engine``, back in its pool at the end, whatever
    cancels the caller meanwhile (as ``AsyncConnection`` does it)."""
    conn = await greenlet_spawn(engine.connect)
    try:
        yield conn
    finally:
        await _to_the_end(greenlet_spawn(conn.close))


async def _to_the_end(cleanup: Coroutine[Any, Any, None]) -> None:
    """Await ``cleanup`` to its end, even if the caller is cancelled
    meanwhile (the cancellation is raised after): a connection's close or
    rollback abandoned halfway would go back to its pool in a state of its
    own, or after the pool was disposed of."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


def away(exc: BaseException) -> bool:
    """True when the database is away for now, not refusing the statement:
    the connection was lost, or the server is starting up, shutting down,
    or does not answer (SQLSTATE classes 08 and 57P; a connection refused
    comes out of the driver as an OSError)."""
    if isinstance(exc, OSError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return sqlstate.startswith(("08", "57P"))


def refused(exc: BaseException) -> bool:
    """True when the database refused a statement for what it holds (a value
    it cannot keep, a constraint, a trigger's veto), not for a connection
    lost: sent again as it is, it would be refused again, so a batch that
    holds it is split to find the item at fault."""
    return isinstance(exc, DBAPIError) and not away(exc)


def same_database(a: str, b: str) -> bool:
    """True when two URLs name the same database, whatever their drivers
    (``postgresql+psycopg://`` and ``postgresql+asyncpg://`` alike)."""
    first, second = make_url(a), make_url(b)

    def where(url: URL) -> tuple[object, ...]:
        return (url.get_backend_name(), url.host, url.port, url.database, url.username)

    return where(first) == where(second)

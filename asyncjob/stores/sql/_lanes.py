"""Connections held for the statements a store sends most: *lanes*.

A perform, a claim, a batch of ends: each is one statement, and on the path
from ``perform`` to the job's first line there are two of them. Through
SQLAlchemy's pool and execution each costs about four times a bare round
trip on the driver (a checkout, an isolation level set and reset, events,
a result), so these go straight to the driver, on connections the store
holds open. Everything else (reads, cancels, retries, the schema) goes
through SQLAlchemy.

- :class:`PostgresLane`: one asyncpg connection, one statement at a time.
  It opens its connection when first used, and again when it is found dead
  (the server restarted, the connection was killed); a statement that is
  harmless when run twice is then sent again, once.
- :class:`SQLiteLane`: one ``sqlite3`` connection in a thread of its own,
  which runs a whole transaction for each call: one hop between threads
  per batch, where aiosqlite makes one per statement, and one for ``BEGIN``
  and ``COMMIT`` each.

Errors come out as SQLAlchemy's, as from the rest of the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError

T = TypeVar("T")

__all__ = ("PostgresLane", "SQLiteLane", "asyncpg_args")


def asyncpg_args(url: str) -> dict[str, Any]:
    """``asyncpg.connect()``'s arguments for an SQLAlchemy URL."""
    parsed = make_url(url)
    args: dict[str, Any] = parsed.translate_connect_args(username="user")
    args.update(parsed.query)
    return args


class PostgresLane:
    """One connection, for statements sent one after the other.

    Args:
        url: the store's SQLAlchemy URL (``postgresql+asyncpg://...``).
        durable: False lets the server report a commit before its log
            reaches the disk (``synchronous_commit=off``): for writes whose
            loss in a crash does no harm (a claim, whose job then stays
            queued; progress), it saves a flush of the log from each.
    """

    def __init__(self, url: str, *, durable: bool = True) -> None:
        self._args = asyncpg_args(url)
        if not durable:
            self._args["server_settings"] = {"synchronous_commit": "off"}
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def fetch(self, sql: str, *args: Any, retry: bool | str = True) -> list[Any]:
        """Run ``sql`` (its own transaction) and return its rows.

        Sent again on a new connection if the first turns out dead, unless
        ``retry`` is false: only for statements that do no harm when run
        twice, since the first may have been committed before its answer
        was lost. ``retry`` may also be the statement to send the second
        time (one made harmless to run after the first, at a cost the first
        need not pay).

        Raises:
            sqlalchemy.exc.OperationalError: the connection was lost (and
                could not be replaced, or ``retry`` is false).
            sqlalchemy.exc.IntegrityError: the statement broke a constraint.
            sqlalchemy.exc.DatabaseError: the database refused it otherwise.
        """
        async with self._lock:
            try:
                return await self._fetch(sql, args)
            except OperationalError:
                if retry is False:
                    raise
            return await self._fetch(sql if retry is True else retry, args)

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=1)

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        import asyncpg

        try:
            if self._conn is None or self._conn.is_closed():
                self._drop()
                self._conn = await asyncpg.connect(**self._args)
            rows: list[Any] = await self._conn.fetch(sql, *args)
            return rows
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
        ) as exc:
            if _is_disconnect(exc, self._conn):
                self._drop()
                raise OperationalError(sql, args, exc, connection_invalidated=True) from exc
            if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
                raise IntegrityError(sql, args, exc) from exc
            raise DatabaseError(sql, args, exc) from exc

    def _drop(self) -> None:
        """Let go of a connection that is dead, or as good as."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()


def _is_disconnect(exc: BaseException, conn: Any) -> bool:
    import asyncpg

    if conn is None or conn.is_closed():
        return True
    return isinstance(
        exc,
        OSError
        | asyncpg.InternalClientError  # killed while idle: see _engine._check_on_checkout
        | asyncpg.PostgresConnectionError
        | asyncpg.exceptions.OperatorInterventionError,  # the server is going down
    )


class SQLiteLane:
    """One ``sqlite3`` connection, in a thread of its own, for transactions
    that write (see the module's docstring).

    Args:
        path: the database file.
        setup: statements run once on the new connection (pragmas).
        lock: held around each transaction, with the store's other writers
            in this process, so that they take turns on the event loop
            rather than in SQLite's busy handler.
    """

    def __init__(self, path: str, setup: Sequence[str], lock: asyncio.Lock) -> None:
        self._path = path
        self._setup = setup
        self._lock = lock
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="asyncjob-sqlite")

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
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(
                self._thread, self._transaction, work
            )

    async def close(self) -> None:
        async with self._lock:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=False)

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.OperationalError as exc:
            raise OperationalError(None, None, exc) from exc
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(None, None, exc) from exc
        except sqlite3.Error as exc:
            raise DatabaseError(None, None, exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # Autocommit as the driver sees it: the transactions are ours.
            conn = sqlite3.connect(self._path, isolation_level=None)
            for statement in self._setup:
                conn.execute(statement)
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

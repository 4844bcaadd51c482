"""PostgreSQL connections held for the statements a store sends most.

A perform, a claim, a batch of ends: each is one statement, and on the path
from ``perform`` to the job's first line there are two of them. Through
SQLAlchemy's pool and execution each costs about four times a bare round
trip on the driver (a checkout, an isolation level set and reset, events,
a result); so these go straight to asyncpg, on connections the store holds
open, one statement at a time each: a *lane*. Everything else (reads,
cancels, retries, the schema) goes through SQLAlchemy.

A lane opens its connection when first used, and opens it again when it is
found dead (the server restarted, the connection was killed); a statement
that is harmless when run twice is then sent again, once. Errors come out
as SQLAlchemy's, as from the rest of the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, OperationalError

__all__ = ("Lane", "asyncpg_args")


def asyncpg_args(url: str) -> dict[str, Any]:
    """``asyncpg.connect()``'s arguments for an SQLAlchemy URL."""
    parsed = make_url(url)
    args: dict[str, Any] = parsed.translate_connect_args(username="user")
    args.update(parsed.query)
    return args


class Lane:
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

    async def fetch(self, sql: str, *args: Any, retry: bool = True) -> list[Any]:
        """Run ``sql`` (its own transaction) and return its rows.

        Sent again on a new connection if the first turns out dead, unless
        ``retry`` is false: only for statements that do no harm when run
        twice, since the first may have been committed before its answer
        was lost.

        Raises:
            sqlalchemy.exc.OperationalError: the connection was lost (and
                could not be replaced, or ``retry`` is false).
            sqlalchemy.exc.DatabaseError: the database refused the statement.
        """
        async with self._lock:
            try:
                return await self._fetch(sql, args)
            except OperationalError:
                if not retry:
                    raise
            return await self._fetch(sql, args)

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

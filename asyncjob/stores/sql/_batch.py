"""Group commit: writes wanted at the same time share one transaction.

A durable commit costs a flush of the database's log, milliseconds on an
ordinary disk, whatever it holds. When fifty jobs end at once, fifty
transactions would cost fifty flushes; here they wait for one. Nothing is
delayed on purpose: the first write goes at once, and those asked for
while it commits go together in the next transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from ._engine import Database

__all__ = ("GroupCommit",)

In = TypeVar("In")
Out = TypeVar("Out")

#: At most this many writes in one transaction, so that none grows huge.
MAX_BATCH = 500


class GroupCommit(Generic[In, Out]):
    """Runs ``write(conn, items)`` for the items submitted meanwhile, in one
    transaction; ``write`` returns one result per item, in order.

    If the transaction fails, every item in it gets the error; items are
    never retried behind the caller's back.
    """

    def __init__(
        self,
        db: Callable[[], Database],
        write: Callable[[AsyncConnection, list[In]], Awaitable[list[Out]]],
    ) -> None:
        self._db = db
        self._write = write
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> Out:
        """Write ``item`` in the next transaction; return once it is committed."""
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                async with self._db().write() as conn:
                    results = await self._write(conn, [item for item, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

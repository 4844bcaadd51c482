"""Group commit: writes wanted at the same time share one statement.

A write costs a round trip to the database, and a durable commit a flush
of its log, whatever the write holds. When fifty jobs end at once, fifty
writes would cost fifty of each; here they share one. Nothing is delayed
on purpose: the first write goes at once, and those asked for while it is
on its way go together in the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ("MAX_BATCH", "GroupCommit")

In = TypeVar("In")
Out = TypeVar("Out")

#: At most this many items in one write, so that none grows huge.
MAX_BATCH = 500


class GroupCommit(Generic[In, Out]):
    """Calls ``write(items)`` with the items submitted meanwhile; ``write``
    writes them in one transaction and returns one result per item, in
    order: an exception in its place is raised to that item's caller alone
    (``write`` may split a batch that the database refuses, to find the
    item at fault).

    If the write itself fails, every item in it gets the error; items are
    never retried behind the caller's back.
    """

    def __init__(self, write: Callable[[list[In]], Awaitable[list[Out | Exception]]]) -> None:
        self._write = write
        # Each item, and where its result goes: the future its caller
        # awaits, or the function it is handed to (submit_soon).
        self._pending: list[
            tuple[In, asyncio.Future[Out] | Callable[[Out | BaseException], None]]
        ] = []
        self._flushing: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> Out:
        """Write ``item`` in the next batch; return once it is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        self._pending.append((item, future))
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        # A caller that gives up cancels its own future only: the batch,
        # and the others waiting for it, go on.
        return await future

    def submit_soon(self, item: In, then: Callable[[Out | BaseException], None]) -> None:
        """Write ``item`` in the next batch, and hand its result (or the
        exception in its place) to ``then`` once it is committed: for a
        caller with nothing to do until then, a future and a task's wake-up
        fewer per item. ``then`` runs on the loop, and must not raise."""
        self._pending.append((item, then))
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def flushed(self) -> None:
        """Wait until everything submitted so far is written."""
        while self._flushing is not None:
            await asyncio.wait({self._flushing})  # its errors are its items' own

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    results = await self._write([item for item, _ in batch])
                except BaseException as exc:
                    for _, sink in batch:
                        _hand(sink, exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, sink), result in zip(batch, results, strict=True):
                    _hand(sink, result)
        finally:
            self._flushing = None
            for _, sink in self._pending:  # only when cancelled: the loop is closing
                _hand(sink, asyncio.CancelledError())
            self._pending = []


def _hand(
    sink: asyncio.Future[Out] | Callable[[Out | BaseException], None], result: Out | BaseException
) -> None:
    if not isinstance(sink, asyncio.Future):
        sink(result)
    elif sink.done():
        pass  # its caller gave up
    elif isinstance(result, asyncio.CancelledError):
        sink.cancel()
    elif isinstance(result, BaseException):
        sink.set_exception(result)
    else:
        sink.set_result(result)

"""Calling into an event loop from another one.

A runner lives on one loop, but web frameworks, test clients and the
TurboGears2 layer may call it from others. These helpers carry a call over
to the runner's loop and bring the answer back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from asyncjob._core.errors import RunnerNotRunning

__all__ = ("call_on", "follow", "is_current", "relay")

T = TypeVar("T")


def is_current(loop: asyncio.AbstractEventLoop | None) -> bool:
    """True when the calling code runs on ``loop``."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def call_on(loop: asyncio.AbstractEventLoop | None, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` on ``loop``, from whichever loop calls.

    On ``loop`` itself (or with no loop yet) it is simply awaited.
    Cancelling the caller cancels the work on ``loop``.
    """
    if loop is None or is_current(loop):
        return await awaitable
    if loop.is_closed():
        raise RunnerNotRunning("this runner's event loop is closed")
    future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), loop)
    return await asyncio.wrap_future(future)


async def follow(
    loop_of: Callable[[], asyncio.AbstractEventLoop | None],
    source: Callable[[], AsyncIterator[T]],
    last: Callable[[T], bool],
) -> AsyncIterator[T]:
    """``source()``'s items, iterated on the loop ``loop_of()`` names when
    iteration begins: directly on it (or with no loop yet), else
    :func:`relay`-ed from it.

    The runner's streams (``Runner.watch``, ``Runner.changes``) are this,
    an async generator in a module of its own, so that the runner's module
    holds none (see ``bench/compiled.py``: mypyc compiles no async
    generator)."""
    loop = loop_of()
    if loop is None or is_current(loop):
        async for item in source():
            yield item
        return
    async for item in relay(loop, source, last):
        yield item


async def relay(
    loop: asyncio.AbstractEventLoop,
    source: Callable[[], AsyncIterator[T]],
    last: Callable[[T], bool],
) -> AsyncIterator[T]:
    """Iterate ``source()`` on ``loop`` and yield its items on the caller's loop.

    Stops after the item for which ``last`` is true, or when the source
    ends (a job forgotten while watched: it ended the source without a last
    item, and the caller waited for ever); an error raised by the source is
    raised here. Leaving early stops the source.
    """
    here = asyncio.get_running_loop()
    inbox: asyncio.Queue[T | BaseException | _End] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in source():
                here.call_soon_threadsafe(inbox.put_nowait, item)
        except BaseException as exc:  # noqa: BLE001 - handed over to the caller
            here.call_soon_threadsafe(inbox.put_nowait, exc)
        else:
            here.call_soon_threadsafe(inbox.put_nowait, _END)

    pumping = await call_on(loop, _start_task(pump()))
    try:
        while True:
            item = await inbox.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, _End):
                return
            yield item
            if last(item):
                return
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(pumping.cancel)


class _End:
    """What :func:`relay`'s source sends when it ends."""


_END = _End()


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _start_task(coro: Any) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(coro)

"""PostgreSQL's LISTEN/NOTIFY: workers and watchers woken at once.

The store's triggers notify the changes of jobs. One connection per store
listens, apart from the pool, on the channels asked of it: workers on the
channel of queued jobs, from the start; a process that watches jobs, on the
channel of changes, from its first watcher on (a worker that watches
nothing is spared a notification per change). When the connection is lost
(the server restarted, the connection was killed) it is opened again, and
meanwhile the store falls back on polling, as it does on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from asyncjob._execution import logger

from ._lanes import asyncpg_args

__all__ = ("Listener",)

#: Seconds between two tries to listen again after the connection was lost.
RECONNECT_AFTER = 1.0
#: Seconds the first listen() waits for the connection, at most.
CONNECT_WAIT = 5.0


class Listener:
    """Listens on the channels given to :meth:`listen`, calling
    ``on_notify(channel, payload)`` on the loop."""

    def __init__(self, url: str, on_notify: Callable[[str, str], None]) -> None:
        self._connect_args = asyncpg_args(url)
        self._on_notify = on_notify
        self._channels: list[str] = []
        self._conn: Any = None
        self._adding = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        #: How many times it has started listening (1 + reconnections).
        self.connections = 0

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def listen(self, channel: str) -> None:
        """Listen on ``channel`` too, from now on (and after reconnecting).

        The first call opens the connection. Returns once the server
        listens, so that no change made afterwards is missed; or, if the
        server cannot be reached within :data:`CONNECT_WAIT` seconds, without
        it (the store polls meanwhile, and the channel is listened on once
        the connection is made)."""
        async with self._adding:
            if channel not in self._channels:
                self._channels.append(channel)
                if self._task is None:
                    self._task = asyncio.get_running_loop().create_task(self._listen_forever())
                elif self._conn is not None:
                    with contextlib.suppress(Exception):  # lost meanwhile: the reconnection adds it
                        await self._conn.add_listener(channel, self._deliver)
        if self.connections == 0:  # not connected yet: the first connection is on its way
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONNECT_WAIT):
                    await self.listening.wait()

    async def _listen_forever(self) -> None:
        import asyncpg

        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(**self._connect_args)
            except (OSError, asyncpg.PostgresError) as exc:
                logger.warning("cannot listen for job changes (%s); polling meanwhile", exc)
                await asyncio.sleep(RECONNECT_AFTER)
                continue
            try:
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                async with self._adding:
                    for channel in self._channels:
                        await conn.add_listener(channel, self._deliver)
                    self._conn = conn
                self.connections += 1
                self.listening.set()
                await lost.wait()
                logger.warning("lost the connection that listens for job changes; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("stopped listening for job changes (%s); reconnecting", exc)
                await asyncio.sleep(RECONNECT_AFTER)
            finally:
                self._conn = None
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)

    def _deliver(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self._on_notify(channel, payload)

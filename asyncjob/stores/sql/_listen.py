"""PostgreSQL's LISTEN/NOTIFY: workers and watchers woken at once.

The store's trigger notifies every change of a job. One connection per
store listens, apart from the pool; when it is lost (the server restarted,
the connection was killed) it is opened again, and meanwhile the store
falls back on polling, as it does on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url

from asyncjob._execution import logger

__all__ = ("Listener",)

#: Seconds between two tries to listen again after the connection was lost.
RECONNECT_AFTER = 1.0


class Listener:
    """Listens on ``channels``, calling ``on_notify(channel, payload)`` on the loop."""

    def __init__(
        self, url: str, channels: tuple[str, ...], on_notify: Callable[[str, str], None]
    ) -> None:
        self._connect_args = _asyncpg_args(url)
        self._channels = channels
        self._on_notify = on_notify
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        #: How many times it has started listening (1 + reconnections).
        self.connections = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

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
                for channel in self._channels:
                    await conn.add_listener(channel, self._deliver)
                self.connections += 1
                self.listening.set()
                await lost.wait()
                logger.warning("lost the connection that listens for job changes; reconnecting")
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)

    def _deliver(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self._on_notify(channel, payload)


def _asyncpg_args(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    args: dict[str, Any] = parsed.translate_connect_args(username="user")
    args.update(parsed.query)
    return args

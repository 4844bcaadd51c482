"""The overview's broadcaster: one reader of the store per dashboard, however
many browsers follow it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from asyncjob._core.log import logger
from asyncjob._core.views import overview_json, worker_json
from asyncjob._runner.runner import Runner

__all__ = ("EVERY", "REFRESH", "Overviews")

#: The overview is read again at most this often (seconds), however fast
#: jobs change: a busy store costs the dashboard one read a second.
EVERY = 1.0

#: ... and at least this often, changed or not: workers' heartbeats and the
#: ages shown move without any job changing, and a store that announces
#: nothing (SQLite off Linux) is read this often.
REFRESH = 15.0


class Overviews:
    """Reads the overview and the workers when the store says jobs changed
    (:meth:`Runner.changes`), paced, and hands each reading to every
    browser that follows it. Reads only while someone follows."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._latest: dict[str, Any] | None = None
        self._version = 0
        self._newer = asyncio.Event()
        self._followers = 0
        self._reading: asyncio.Task[None] | None = None

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """The overview now, then each new reading, until the caller stops."""
        self._followers += 1
        if self._reading is None:
            self._reading = asyncio.get_running_loop().create_task(self._read())
        try:
            seen = 0
            while True:
                if self._version != seen and self._latest is not None:
                    seen = self._version
                    yield self._latest
                newer = self._newer
                if self._version == seen:
                    await newer.wait()
        finally:
            self._followers -= 1
            if not self._followers and self._reading is not None:
                self._reading.cancel()
                self._reading = None

    async def _read(self) -> None:
        changed = asyncio.Event()

        async def hear() -> None:
            async for _ in self._runner.changes():
                changed.set()

        hearing = asyncio.get_running_loop().create_task(hear())
        try:
            while True:
                changed.clear()
                try:
                    self._latest = {
                        "overview": overview_json(await self._runner.overview()),
                        "workers": [worker_json(w) for w in await self._runner.workers()],
                    }
                except Exception:  # noqa: BLE001 - the next reading may work
                    logger.exception("dashboard: could not read the overview")
                else:
                    self._version += 1
                    self._newer.set()
                    self._newer = asyncio.Event()
                await asyncio.sleep(EVERY)  # a pace, not a wait for something
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REFRESH):
                        await changed.wait()
        finally:
            hearing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hearing

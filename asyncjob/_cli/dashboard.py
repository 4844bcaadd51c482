"""``asyncjob dashboard``: the dashboard of a shared store, served over HTTP
(imported only by that command: it needs the ``web`` extra)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.routing import Mount

from asyncjob._core import defaults
from asyncjob._core.errors import AsyncJobError
from asyncjob.web import dashboard

from .operate import CommandError, producer_on

__all__ = ("run_dashboard",)


def run_dashboard(
    store: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8700,
    allow_actions: bool = False,
    table_prefix: str = defaults.TABLE_PREFIX,
) -> int:
    """Serve the dashboard of ``store`` until SIGINT or SIGTERM. Returns the
    exit code: 0 after a stop, 2 when the store cannot be used or the
    server cannot start."""
    try:
        runner = producer_on(store, table_prefix)
    except CommandError as exc:
        print(f"asyncjob dashboard: {exc}", file=sys.stderr)
        return 2

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with runner:
            yield

    app = Starlette(
        routes=[Mount("/", dashboard(runner, read_only=not allow_actions))], lifespan=lifespan
    )
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = _Server(uvicorn.Config(app, host=host, port=port, lifespan="on"))
    try:
        asyncio.run(server.serve())
    except (OSError, SQLAlchemyError, AsyncJobError) as exc:
        print(f"asyncjob dashboard: cannot open the store: {exc}", file=sys.stderr)
        return 2
    # uvicorn reports a failed start-up (the store unreachable, the port
    # taken) in its log, and returns.
    return 0 if server.started else 2


class _Server(uvicorn.Server):
    """uvicorn's server, whose stop on SIGINT or SIGTERM is a clean exit:
    uvicorn's own handlers raise the signal again once it has stopped, and
    the process would end killed by it (status -15), which a supervisor
    takes for a crash."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.handle_exit, signum, None)
        yield

"""A real ASGI server for the web tests: uvicorn on a free loopback port,
in the test's own event loop, with the runner started by the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

import asyncjob
import asyncjob.web

from .conftest import TIMEOUT


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Serve ``app`` on 127.0.0.1 (a port the system picks) until the block
    ends; yields the server's base URL (``http://127.0.0.1:PORT``) and the
    server, whose ``should_exit`` a test may set to stop it early."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:  # uvicorn offers no event for it
                if task.done():
                    task.result()  # its start-up failed: say why
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        async with asyncio.timeout(TIMEOUT):
            await task


def app_with_dashboard(
    runner: asyncjob.Runner,
    *,
    at: str = "/jobs",
    routes: list[BaseRoute] | None = None,
    **options: Any,
) -> Starlette:
    """An application that starts and stops ``runner``, with the dashboard
    mounted at ``at`` (and ``routes`` of its own before it)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with runner:
            yield

    return Starlette(
        routes=[*(routes or []), Mount(at, asyncjob.web.dashboard(runner, **options))],
        lifespan=lifespan,
    )

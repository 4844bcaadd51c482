"""``asyncjob dashboard``: the dashboard of a shared store, served over HTTP."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from asyncjob._core import defaults
from asyncjob._core.errors import AsyncJobError
from asyncjob._runner.runner import Runner
from asyncjob.stores import resolve_store
from asyncjob.stores._base import SHARED_STORES

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
    ``web`` extra is missing."""
    try:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Mount

        from asyncjob.web import dashboard
    except ImportError as exc:
        print(
            f"asyncjob dashboard: needs the web extra ({exc.name} is missing): "
            "pip install 'asyncjob-runner[web]'",
            file=sys.stderr,
        )
        return 2
    if "://" not in store:
        print(f"asyncjob dashboard: {store!r} is not a shared store: give {SHARED_STORES}",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        runner = Runner(resolve_store(store, table_prefix=table_prefix), producer_only=True)
    except (TypeError, ValueError) as exc:
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
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="on"))
    try:
        server.run()
    except (OSError, SQLAlchemyError, AsyncJobError) as exc:
        print(f"asyncjob dashboard: cannot open the store: {exc}", file=sys.stderr)
        return 2
    # uvicorn reports a failed start-up (the store unreachable, the port
    # taken) in its log, and returns.
    return 0 if server.started else 2

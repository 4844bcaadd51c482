"""``asyncjob worker``: a process that runs a shared store's registered jobs."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from ._errors import AsyncJobError
from ._execution import logger
from ._runner import Runner

__all__ = ("run_worker",)


def run_worker(
    store: str,
    modules: Sequence[str],
    *,
    concurrency: int = 10,
    grace_period: float = 10.0,
    lease: float = 30.0,
    poll_interval: float = 0.25,
    threads: int | None = None,
    keep_finished: float = 7 * 24 * 3600.0,
    table_prefix: str = "asyncjob_",
) -> int:
    """Import ``modules`` (which register jobs), then run the store's jobs
    until SIGINT or SIGTERM, and stop gracefully. Returns the exit code:
    0 after a graceful stop, 2 when a module cannot be imported or the
    store cannot be used."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - reported, with the module named
            print(f"asyncjob worker: cannot import {module}: {exc!r}", file=sys.stderr)
            return 2
    try:
        if not store.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                f"{store!r} is not a store that workers share: give an async database URL, "
                "sqlite+aiosqlite:///path/jobs.db or postgresql+asyncpg://user@host/db"
            )
        from .stores.sql import SQLStore

        shared = SQLStore(
            store,
            lease=lease,
            poll_interval=poll_interval,
            keep_finished=keep_finished,
            table_prefix=table_prefix,
        )
        runner = Runner(shared, concurrency=concurrency, threads=threads, grace_period=grace_period)
    except (TypeError, ValueError) as exc:
        print(f"asyncjob worker: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(runner))
    except _CannotOpen as exc:
        print(f"asyncjob worker: cannot open the store: {exc.__cause__}", file=sys.stderr)
        return 2
    return 0


class _CannotOpen(Exception):
    """The store could not be opened (its cause says why)."""


async def _serve(runner: Runner) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await runner.start()
    except (OSError, SQLAlchemyError, AsyncJobError) as exc:
        raise _CannotOpen from exc
    try:
        logger.info("worker running with concurrency %d", runner.options.concurrency)
        await stop.wait()
        logger.info("stopping: running jobs get %.0f s to finish", runner.options.grace_period)
    finally:
        await runner.stop()
    logger.info("worker stopped")

"""``asyncjob worker``: a process that runs a shared store's registered jobs."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from asyncjob._core import defaults
from asyncjob._core.errors import AsyncJobError
from asyncjob._core.log import logger
from asyncjob._runner.runner import Runner
from asyncjob.stores import resolve_store
from asyncjob.stores._base import SHARED_STORES

if TYPE_CHECKING:
    from asyncjob.metrics import JobMetrics

__all__ = ("run_worker",)


def run_worker(
    store: str,
    modules: Sequence[str],
    *,
    queues: Sequence[str] | None = None,
    concurrency: int = defaults.CONCURRENCY,
    grace_period: float = defaults.GRACE_PERIOD,
    lease: float = defaults.LEASE,
    poll_interval: float | None = None,
    threads: int | None = None,
    keep_finished: float = defaults.KEEP_FINISHED,
    table_prefix: str = defaults.TABLE_PREFIX,
    metrics: tuple[str, int] | None = None,
) -> int:
    """Import ``modules`` (which register jobs), then run the store's jobs
    until SIGINT or SIGTERM, and stop gracefully; with ``metrics=(host,
    port)``, serve the worker's :class:`~asyncjob.metrics.JobMetrics` there
    meanwhile. Returns the exit code: 0 after a graceful stop, 2 when a
    module cannot be imported or the store or the metrics port cannot be
    used."""
    # As uvicorn, celery and python -m do: the application's modules are
    # found from the directory the worker is started in.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for module in modules:
        try:
            importlib.import_module(module)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported, with the module named
            # SystemExit too: a module that exits (sys.exit(0) at import)
            # ended the worker with status 0 and not a word, for a process
            # manager to start again and again.
            print(
                f"asyncjob worker: cannot import {module}: {exc!r} (modules are imported "
                f"from the directory the worker runs in, {os.getcwd()}, and from PYTHONPATH)",
                file=sys.stderr,
            )
            return 2
    if "://" not in store:
        print(
            f"asyncjob worker: {store!r} is not a store that workers share: give {SHARED_STORES}",
            file=sys.stderr,
        )
        return 2
    counted = None
    if metrics is not None:
        try:
            counted = _job_metrics()
        except ImportError as exc:
            print(f"asyncjob worker: {exc}", file=sys.stderr)
            return 2
    try:
        shared = resolve_store(
            store,
            lease=lease,
            poll_interval=poll_interval,
            keep_finished=keep_finished,
            table_prefix=table_prefix,
        )
        runner = Runner(
            shared,
            concurrency=concurrency,
            threads=threads,
            grace_period=grace_period,
            queues=queues,
            hooks=() if counted is None else (counted,),
        )
    except (TypeError, ValueError) as exc:
        print(f"asyncjob worker: {exc}", file=sys.stderr)
        return 2
    serving = None
    if counted is not None and metrics is not None:
        try:
            serving = _serve_metrics(counted, *metrics)
        except OSError as exc:
            print(f"asyncjob worker: {exc}", file=sys.stderr)
            return 2
    try:
        asyncio.run(_serve(runner))
    except _CannotOpen as exc:
        print(f"asyncjob worker: cannot open the store: {exc.__cause__}", file=sys.stderr)
        return 2
    finally:
        if serving is not None:
            serving.shutdown()
    return 0


def _job_metrics() -> JobMetrics:
    try:
        from asyncjob.metrics import JobMetrics
    except ImportError as exc:
        raise ImportError(
            f"--metrics-port needs prometheus-client ({exc}): pip install "
            "'asyncjob-runner[metrics]'"
        ) from None
    return JobMetrics()


def _serve_metrics(counted: JobMetrics, host: str, port: int) -> Any:
    """Serve ``counted`` on ``host:port`` from a thread; returns the server."""
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(port, host, registry=counted.registry)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    return server


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
        logger.info(
            "worker running with concurrency %d, taking %s",
            runner.options.concurrency,
            "every queue"
            if runner.queues is None
            else "the queues " + ", ".join(sorted(runner.queues)),
        )
        await stop.wait()
        logger.info("stopping: running jobs get %.0f s to finish", runner.options.grace_period)
    finally:
        await runner.stop()
    logger.info("worker stopped")

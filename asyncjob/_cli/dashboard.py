"""``asyncjob dashboard``: the dashboard of a shared store, served over HTTP
(imported only by that command: it needs the ``web`` extra)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from asyncjob._core import defaults
from asyncjob._runner.runner import Runner
from asyncjob.web import dashboard

from .operate import STORE_ERRORS, CommandError, producer_on, why

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
    app = Starlette(routes=[Mount("/", dashboard(runner, read_only=not allow_actions))])
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # No lifespan: the store is opened before uvicorn starts. A start-up that
    # fails in uvicorn ends in its sys.exit(3), past the handling here, after
    # logging the store's error with a traceback.
    server = _Server(uvicorn.Config(app, host=host, port=port, lifespan="off"))
    try:
        asyncio.run(_serve(server, runner, host, port))
    except CommandError as exc:
        print(f"asyncjob dashboard: {exc}", file=sys.stderr)
        return 2
    return 0


async def _serve(server: _Server, runner: Runner, host: str, port: int) -> None:
    """Open the store, check that the address is free, then serve until
    stopped; the store is closed after.

    Raises:
        CommandError: the store cannot be opened, or the address used.
    """
    with server.capture_signals():  # a stop asked while the store opens ends it cleanly
        try:
            await runner.start()
        except STORE_ERRORS as exc:
            raise CommandError(f"cannot open the store: {why(exc)}") from None
        try:
            await _check_address(host, port)
            if server.should_exit:
                return
            try:
                await server.serve()
            except SystemExit:
                if server.started:
                    raise
                # The address taken since it was checked: uvicorn logged why.
                raise CommandError(f"cannot serve on {host}:{port} (logged above)") from None
        finally:
            await runner.stop()


async def _check_address(host: str, port: int) -> None:
    """Listen on ``host:port`` for a moment, as uvicorn then does, so that a
    port taken (or a host unknown) is an error said here: uvicorn's own is a
    line in its log and sys.exit(3).

    Raises:
        CommandError: it cannot be listened on.
    """
    loop = asyncio.get_running_loop()
    try:
        probe = await loop.create_server(asyncio.Protocol, host, port, start_serving=False)
    except OSError as exc:
        raise CommandError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    probe.close()
    await probe.wait_closed()


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

"""An event loop of its own, in a thread of its own, running one runner."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal

from asyncjob._core.log import logger
from asyncjob._runner.runner import Runner

__all__ = ("LoopThread",)


def _at_interpreter_exit(stop: Callable[[], None]) -> None:
    """Call ``stop`` when the main thread ends, before threads are joined.

    ``threading._register_atexit`` is what :mod:`concurrent.futures` uses
    for the same reason: its hooks run before the interpreter joins
    non-daemon threads (and before the thread pools refuse new work),
    newest first, so the runner stops while its jobs can still finish.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(stop)
        return

    def stop_after_main() -> None:  # pragma: no cover - for interpreters without it
        threading.main_thread().join()
        stop()

    threading.Thread(target=stop_after_main, daemon=True).start()


T = TypeVar("T")


def _at_interpreter_shutdown(exc: BaseException) -> bool:
    """True for what Python 3.12 raises when the runner, stopped at exit,
    needs a thread it can no longer start (the SQLite store's closing)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_at_interpreter_shutdown(inner) for inner in exc.exceptions)
    return isinstance(exc, RuntimeError) and "interpreter shutdown" in str(exc)


class LoopThread:
    """Runs ``runner`` on a new event loop in a background thread, and lets
    sync code call into it through an anyio :class:`BlockingPortal`.

    The thread is not a daemon: when the main thread ends, the runner is
    stopped gracefully (its ``grace_period`` applies) before the interpreter
    exits, so jobs already accepted are finished or, in a durable store,
    left queued for the next worker, never cut off in the middle.
    """

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._ready: Future[BlockingPortal] = Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="asyncjob-loop")

    def start(self, timeout: float = 30.0) -> None:
        """Start the thread and wait until the runner runs.

        Raises:
            Exception: whatever stopped the runner from starting.
        """
        self._thread.start()
        self._ready.result(timeout)
        _at_interpreter_exit(self.stop)

    def is_loop_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.current_thread() is self._thread

    @property
    def alive(self) -> bool:
        """True while the loop thread runs."""
        return self._thread.is_alive()

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await func(*args)`` on the loop and return its result, from
        any thread but the loop's own."""
        return self._ready.result().call(func, *args)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the runner gracefully and end the thread; idempotent."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: stopped already
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            if _at_interpreter_shutdown(exc):
                # Stopped at interpreter exit, on Python 3.12 or newer, which
                # starts no thread then: what needed one (an SQLite store's
                # closing) is left to the process's exit, which the file's
                # write-ahead log survives.
                return
            if not self._ready.done():
                self._ready.set_exception(exc)
            else:
                logger.exception("the asyncjob event loop thread failed")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with BlockingPortal() as portal, self.runner:
            self._ready.set_result(portal)
            await self._stop.wait()

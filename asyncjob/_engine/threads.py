"""The thread pool of sync jobs, and the way their outcomes come back to the loop."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ("ThreadPool",)

_Outcome = tuple[asyncio.Future[Any], bool, Any]


class ThreadPool:
    """Up to ``size`` threads, started as sync jobs first need them.

    A job runs in a copy of the context it is given, so that context
    variables (the running job's, an application's) reach its thread. Its
    outcome comes back to the loop in batches: one wake-up of the loop for
    every job that ended while the loop was busy.
    """

    def __init__(self, size: int) -> None:
        #: How many threads at most.
        self.size = size
        self._pool: ThreadPoolExecutor | None = None
        self._finished: deque[_Outcome] = deque()
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Hand outcomes back to the running loop."""
        self._loop = asyncio.get_running_loop()

    def run(
        self,
        context: contextvars.Context,
        call: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> asyncio.Future[Any]:
        """Run ``call(*args, **kwargs)`` in a thread, in ``context``; the
        future resolves on the loop."""
        assert self._loop is not None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.size, thread_name_prefix="asyncjob")
        future = self._loop.create_future()
        self._pool.submit(self._run, future, context, call, args, kwargs)
        return future

    def close(self) -> None:
        """Let the pool go without waiting for its threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(
        self,
        future: asyncio.Future[Any],
        context: contextvars.Context,
        call: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> None:
        try:
            outcome = (future, True, context.run(call, *args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the job's worker
            outcome = (future, False, exc)
        self._post(outcome)

    def _post(self, outcome: _Outcome) -> None:
        """Hand a finished job back to the loop, from its thread."""
        assert self._loop is not None
        self._finished.append(outcome)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        # Reset the flag first: an outcome posted from now on schedules
        # another drain, or is taken by this one; none is left behind.
        self._drain_scheduled = False
        finished = self._finished
        while finished:
            future, ok, value = finished.popleft()
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

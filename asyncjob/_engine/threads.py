"""The thread pool of sync jobs, and the way their outcomes come back to the loop."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ("ThreadPool",)

_Outcome = tuple[asyncio.Future[Any], bool, Any]
_Work = tuple[
    asyncio.Future[Any], contextvars.Context, Callable[..., Any], tuple[Any, ...], Mapping[str, Any]
]


class ThreadPool:
    """Up to ``size`` threads, started as sync jobs first need them.

    A job runs in a copy of the context it is given, so that context
    variables (the running job's, an application's) reach its thread. Its
    outcome comes back to the loop in batches: one wake-up of the loop for
    every job that ended while the loop was busy.

    The threads take their work from a ``queue.SimpleQueue`` (a C queue:
    a put is a tenth of ``ThreadPoolExecutor.submit``, which makes a
    future, takes a lock and counts its idle threads each time). How many
    threads are busy is counted on the loop alone: a job is handed over and
    handed back there.

    The threads are daemons: a process exits without waiting for them. By
    then the runner has stopped (given its running jobs their grace period)
    or was never stopped; a sync job that is still running does not keep
    the process alive, and a worker's job is run again elsewhere once its
    lease runs out.
    """

    def __init__(self, size: int) -> None:
        #: How many threads at most.
        self.size = size
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._in_flight = 0  # handed over, not yet handed back (on the loop)
        self._finished: deque[_Outcome] = deque()
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

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
        future = self._loop.create_future()
        self._in_flight += 1
        if self._in_flight > len(self._threads) and len(self._threads) < self.size:
            thread = threading.Thread(
                target=self._serve, name=f"asyncjob_{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._work.put((future, context, call, args, kwargs))
        return future

    def close(self) -> None:
        """Let the threads go without waiting for them: each ends after the
        job it runs, if any; work not yet taken is dropped."""
        self._closed = True
        for _ in self._threads:
            self._work.put(None)

    def _serve(self) -> None:
        """A thread's life: the jobs handed over, until the pool closes."""
        take = self._work.get
        while True:
            work = take()
            if work is None or self._closed:
                return
            future, context, call, args, kwargs = work
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
            self._in_flight -= 1
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

"""The thread pool of sync jobs, and the way their outcomes come back to the loop."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from asyncjob._core.log import logger
from asyncjob._core.models import Job

from .job_context import JobContext

__all__ = ("ThreadPool", "Work")


class Work:
    """One sync job as a thread runs it: the job, its call (in its scope),
    the context it runs in, and the future its worker waits for.

    The future resolves on the loop, as ``(work, ok, value)``, when the
    worker's job ends, unless its thread went on to a lined-up job: that
    job then takes the future over, and so on, so that the worker wakes
    once, with the last job of the run (``work``)."""

    __slots__ = ("call", "context", "ctx", "follows", "future", "job")

    def __init__(
        self, job: Job, call: Callable[..., Any], context: contextvars.Context, ctx: JobContext
    ) -> None:
        self.job = job
        #: Set when the job is handed to a thread, or taken over from the
        #: job its thread ran before.
        self.future: asyncio.Future[tuple[Work, bool, Any]] | None = None
        self.call = call
        self.context = context
        #: The job's context: a thread goes on to a lined-up job only after
        #: a success that nobody interrupted.
        self.ctx = ctx
        #: Whether its thread may go on to a lined-up job when it succeeds
        #: (its worker then waits for that job).
        self.follows = False


_Outcome = tuple[Work, bool, Any, "Work | None"]


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

    A thread whose job succeeded may also go on to the next *lined-up* job
    without waiting for the loop. The loop lines up (:meth:`line_up`) jobs
    it has taken from its queue but not started, while every thread is
    busy; a thread takes the oldest (:meth:`_end`), and the loop learns of
    it with the outcome of the job before, in the same batch: it records
    that job's end and the taken job's start, in that order, before
    anything the taken job reports. Until a thread takes it, a lined-up job
    can be withheld (:meth:`withhold`: cancelled, behind a job of a higher
    priority, wanted by an idle worker): both happen under the pool's lock,
    so a job is either withheld or run, never both.

    The threads are daemons: a process exits without waiting for them. By
    then the runner has stopped (given its running jobs their grace period)
    or was never stopped; a sync job that is still running does not keep
    the process alive, and a worker's job is run again elsewhere once its
    lease runs out.
    """

    def __init__(self, size: int) -> None:
        #: How many threads at most.
        self.size = size
        self._work: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._in_flight = 0  # handed over, not yet handed back (on the loop)
        self._finished: deque[_Outcome] = deque()
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_context = contextvars.Context()
        self._closed = False
        # Lining up a job, taking one, withholding one, and the outcome
        # that says a job was taken: one step each under this lock.
        self._lock = threading.Lock()
        self._on_taken: Callable[[Work, Any, Work], None] | None = None
        self._on_drained: Callable[[], None] | None = None
        self._ready: deque[Work] = deque()  # lined up, oldest first

    def start(
        self, on_taken: Callable[[Work, Any, Work], None], on_drained: Callable[[], None]
    ) -> None:
        """Hand outcomes back to the running loop. ``on_taken(work,
        result, next)`` is called there, in the batch, when a job succeeded
        and its thread went on to the lined-up ``next``; ``on_drained()``
        after a batch in which that happened."""
        self._loop = asyncio.get_running_loop()
        self._loop_context = contextvars.copy_context()
        self._on_taken = on_taken
        self._on_drained = on_drained

    def run(self, work: Work) -> asyncio.Future[tuple[Work, bool, Any]]:
        """Run ``work`` in a thread; returns the future of its outcome, or
        of the last job its thread goes on to."""
        assert self._loop is not None
        future = work.future = self._loop.create_future()
        self._in_flight += 1
        if self._in_flight > len(self._threads) and len(self._threads) < self.size:
            thread = threading.Thread(
                target=self._serve, name=f"asyncjob_{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._work.put(work)
        return future

    def line_up(self, work: Work) -> None:
        """Let the next thread that ends a job go on to ``work``."""
        with self._lock:
            self._ready.append(work)

    def withhold(self, work: Work) -> bool:
        """Take a lined-up ``work`` back before a thread takes it: True if
        it will never run; False if a thread took it (the outcome that says
        so is in the batch :meth:`drain` hands over)."""
        with self._lock:
            try:
                self._ready.remove(work)
            except ValueError:
                return False
            return True

    def withhold_all(self) -> list[Work]:
        """Take back every lined-up work no thread has taken, oldest first."""
        with self._lock:
            works = list(self._ready)
            self._ready.clear()
            return works

    def take_back(self) -> Work | None:
        """Take back the oldest lined-up work, if any (see :meth:`withhold`)."""
        with self._lock:
            return self._ready.popleft() if self._ready else None

    def close(self) -> None:
        """Let the threads go without waiting for them: each ends after the
        job it runs, if any; work not yet taken is dropped."""
        self._closed = True
        for _ in self._threads:
            self._work.put(None)

    def _serve(self) -> None:
        """A thread's life: the jobs handed over and those it goes on to,
        until the pool closes."""
        take = self._work.get
        while True:
            work = take()
            while work is not None:
                if self._closed:
                    return
                try:
                    job = work.job
                    if job.kwargs:  # unpacking the shared empty mapping costs 0.15 us
                        value = work.context.run(work.call, *job.args, **job.kwargs)
                    else:
                        value = work.context.run(work.call, *job.args)
                    ok = True
                except BaseException as exc:  # noqa: BLE001 - handed to the job's worker
                    ok, value = False, exc
                work = self._end(work, ok, value)
            if self._closed:
                return

    def _end(self, work: Work, ok: bool, value: Any) -> Work | None:
        """Hand a finished job back to the loop, from its thread, and take
        the oldest lined-up job if it succeeded (returned) and may."""
        ctx = work.ctx
        with self._lock:
            taken = None
            if (
                self._ready
                and ok
                and work.follows
                and not (ctx.cancelled or ctx.timed_out or inspect.iscoroutine(value))
            ):
                taken = self._ready.popleft()
            self._finished.append((work, ok, value, taken))
        if not self._drain_scheduled:
            self._drain_scheduled = True
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                self._loop.call_soon_threadsafe(self.drain, context=self._loop_context)
        return taken

    def drain(self) -> None:
        """Hand the outcomes posted so far to the loop (it calls this
        itself, and may call it earlier, to learn of a lined-up job taken)."""
        # Reset the flag first: an outcome posted from now on schedules
        # another drain, or is taken by this one; none is left behind.
        self._drain_scheduled = False
        finished = self._finished
        went_on = False
        while finished:
            work, ok, value, taken = finished.popleft()
            future = work.future
            if taken is None:
                self._in_flight -= 1
            if future is None or future.done():  # the loop is closing, or a bug below
                continue
            if taken is None:
                future.set_result((work, ok, value))
                continue
            taken.future = future  # its worker now waits for it
            went_on = True
            assert self._on_taken is not None
            try:
                self._on_taken(work, value, taken)
            except Exception as exc:  # noqa: BLE001 - the rest of the batch must go on
                logger.exception("internal error while a thread went on to a lined-up job")
                future.set_exception(exc)  # its worker logs it and goes on
        if went_on:
            assert self._on_drained is not None
            self._on_drained()

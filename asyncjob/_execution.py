"""Running one job: on the loop or in a thread, its outcome recorded in the store."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import traceback
from collections.abc import Callable
from typing import Any

from . import _context, _policy
from ._errors import JobLost
from ._models import Job, JobState
from ._sessions import JobScope
from ._threads import Threads
from .stores import Store

__all__ = ("Executor", "logger")

logger = logging.getLogger("asyncjob")


class Executor:
    """Runs jobs handed to it by the runner's workers, one call per job.

    Coroutine jobs are awaited in the calling worker task; sync jobs run in a
    thread pool of ``threads`` threads, with the job's context copied into
    the thread. A worker task is never left holding a cancellation that was
    meant for a job it no longer runs.
    """

    def __init__(self, store: Store, threads: int, scope: JobScope) -> None:
        self._store = store
        self._scope = scope
        self._threads = Threads(threads)
        # Only needed when fewer threads than workers could want them.
        self._thread_slots = asyncio.Semaphore(threads)
        self._limit_threads = True
        # The jobs running now: their context, and the worker task running them.
        self._active: dict[str, tuple[_context.JobContext, asyncio.Task[Any]]] = {}
        self._claimed: set[str] = set()
        #: Record a job's success in its own session, when the runner's
        #: sessions are on the store's database (see _policy).
        self.finish_in: _policy.FinishIn | None = None
        self.finish_in_sync: _policy.FinishInSync | None = None
        #: Runs a job again after a delay: the runner's worker pool sets it.
        self.resubmit: Callable[[Job, float], None] = _cannot_resubmit
        #: Told, with the job's id, when a job's code has ended and its
        #: outcome is about to be recorded: the worker pool sets it.
        self.ended: Callable[[str], None] = _ignore

    @property
    def running(self) -> int:
        """How many jobs are running now."""
        return len(self._active)

    def start(self, concurrency: int) -> None:
        """Bind to the running loop; ``concurrency`` workers will call :meth:`run`."""
        self._threads.start()
        self._limit_threads = self._threads.size < concurrency

    async def run(self, job: Job, task: asyncio.Task[Any]) -> None:
        """Run ``job`` in the worker ``task`` (the caller) to its end and
        record the outcome; never raises for anything the job does."""
        if job.claimed:
            self._claimed.add(job.id)
        try:
            if job.is_async:
                await self.run_async(job, task)
            elif self._limit_threads:
                # A sync job only counts as running once it has a thread.
                async with self._thread_slots:
                    await self._run_sync(job, task)
            else:
                await self._run_sync(job, task)
        finally:
            self._claimed.discard(job.id)

    def interrupt(self, job_id: str) -> None:
        """Stop a running job whose state the store has already made final.

        A coroutine job gets :class:`asyncio.CancelledError` at its current
        ``await``; a sync job gets :class:`JobCancelled` from its next
        ``set_progress``. Does nothing for a job that is not running here.
        """
        active = self._active.get(job_id)
        if active is None or active[0].cancelled:
            return
        ctx, task = active
        ctx.cancelled = True
        if ctx.is_async:
            task.cancel()

    def abandon_sync_jobs(self) -> None:
        """Stop waiting for sync jobs, whose threads cannot be stopped: their
        workers move on at once, and their threads end in the background,
        at the job's next ``set_progress`` or when it returns."""
        for ctx, task in list(self._active.values()):
            if not ctx.is_async:
                ctx.cancelled = True
                task.cancel()

    def active_ids(self) -> list[str]:
        """The ids of the jobs running now."""
        return list(self._active)

    def claimed_ids(self) -> set[str]:
        """The ids of the running jobs that were claimed from a durable store."""
        return set(self._claimed)

    def close(self) -> None:
        """Release the thread pool without waiting for its threads."""
        self._threads.close()

    async def run_async(self, job: Job, task: asyncio.Task[Any]) -> None:
        """:meth:`run` for a coroutine job."""
        if not job.claimed and not await self._store.start(job.id):
            return  # cancelled while it was queued
        ctx = _context.JobContext(job.id, True, self._store.report_progress)
        self._active[job.id] = (ctx, task)
        token = _context.current.set(ctx)
        try:
            if not job.registered and not self._scope.wraps_async:  # the fast path
                result = await job.func(*job.args, **job.kwargs)
            else:
                result = await _policy.call_async(
                    job, ctx, self._scope, _policy.timeout_of(job), self.finish_in
                )
        except asyncio.CancelledError as exc:
            if not ctx.cancelled:
                await self._not_cancelled_by_us(job, ctx, task, exc)
            return
        except JobLost:
            _taken(job)
            return
        except Exception as exc:  # noqa: BLE001 - any error of the job is its failure
            if not ctx.cancelled:
                await self._fail(job, exc)
            return
        finally:
            _context.current.reset(token)
            del self._active[job.id]
            if ctx.cancelled:
                # interrupt() cancelled this worker task for the job; the job
                # has ended, so the worker must not stay marked as cancelling.
                task.uncancel()
        if not ctx.cancelled and not ctx.finished:
            await self._succeed(job, result)

    async def _run_sync(self, job: Job, task: asyncio.Task[Any]) -> None:
        if not job.claimed and not await self._store.start(job.id):
            return
        ctx = _context.JobContext(job.id, False, self._store.report_progress)
        thread_context = contextvars.copy_context()
        thread_context.run(_context.current.set, ctx)
        self._active[job.id] = (ctx, task)
        timeout = _policy.timeout_of(job)
        deadline = None
        if timeout is not None:
            # A thread cannot be stopped: the job learns at its next report.
            deadline = asyncio.get_running_loop().call_later(timeout, _time_out, ctx)
        call = job.func
        if self._scope.wraps_sync:
            call = _policy.in_scope_sync(job, ctx, self._scope, self.finish_in_sync)
        try:
            result = await self._threads.run(thread_context, call, job.args, job.kwargs)
            if ctx.timed_out and timeout is not None and not ctx.finished:
                raise _policy.timed_out(job, timeout)
        except asyncio.CancelledError as exc:
            if ctx.cancelled:
                task.uncancel()  # abandon_sync_jobs(): the runner stopped waiting
            else:
                await self._not_cancelled_by_us(job, ctx, task, exc)
            return
        except JobLost:
            _taken(job)
            return
        except BaseException as exc:  # noqa: BLE001 - SystemExit in a job's thread is the job's failure
            if not ctx.cancelled:
                late = ctx.timed_out and timeout is not None
                await self._fail(job, _policy.timed_out(job, timeout or 0) if late else exc)
            return
        finally:
            del self._active[job.id]
            if deadline is not None:
                deadline.cancel()
        if ctx.cancelled or ctx.finished:
            return
        if inspect.iscoroutine(result):
            result.close()
            result = TypeError(
                f"{job.name} returned a coroutine instead of running it: perform "
                "the coroutine function itself, e.g. perform(func, arg), "
                "not a lambda or sync function that calls it"
            )
            await self._fail(job, result)
            return
        await self._succeed(job, result)

    async def _not_cancelled_by_us(
        self,
        job: Job,
        ctx: _context.JobContext,
        task: asyncio.Task[Any],
        exc: asyncio.CancelledError,
    ) -> None:
        """A CancelledError that :meth:`interrupt` did not cause.

        If the worker task itself is being cancelled (its loop is closing
        under a runner nobody stopped), the job is recorded as cancelled and
        the cancellation goes on up. Otherwise the job raised it on its own
        (say, it awaited a future that something else cancelled): that is
        the job's failure, like any other exception.
        """
        if task.cancelling():
            if not ctx.is_async:
                ctx.cancelled = True  # its thread stops at its next report
            await self._store.cancel(job.id)
            raise exc
        await self._fail(job, exc)

    async def _succeed(self, job: Job, result: Any) -> None:
        self.ended(job.id)
        await self._store.finish(job.id, JobState.succeeded, result=result)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("job %s (%s) succeeded", job.id, job.name)

    async def _fail(self, job: Job, exc: BaseException) -> None:
        self.ended(job.id)
        error = "".join(traceback.format_exception_only(exc)).strip()
        delay = _policy.retry_delay(job)
        if delay is not None and await self._store.retry(job.id, error=error, delay=delay):
            logger.warning(
                "job %s (%s) failed on attempt %d, trying again in %.1f s: %s",
                job.id, job.name, job.attempt, delay, error,
            )  # fmt: skip
            if not self._store.durable:  # else any worker of the store takes it
                self.resubmit(job._replace(attempt=job.attempt + 1), delay)
            return
        tb = "".join(traceback.format_exception(exc))
        logger.error("job %s (%s) failed: %s", job.id, job.name, error, exc_info=exc)
        await self._store.finish(job.id, JobState.failed, error=error, traceback=tb)


def _time_out(ctx: _context.JobContext) -> None:
    ctx.timed_out = True


def _taken(job: Job) -> None:
    logger.warning(
        "job %s (%s) was taken from this worker: its writes are rolled back", job.id, job.name
    )


def _ignore(job_id: str) -> None:
    pass


def _cannot_resubmit(job: Job, delay: float) -> None:
    raise RuntimeError("no worker pool to run the job again")  # pragma: no cover

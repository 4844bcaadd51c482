"""The engine: a queue of jobs, the worker tasks that run them, and the
recording of each job's outcome in the store."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, KeysView
from functools import partial
from typing import Any

from asyncjob._core import tracing
from asyncjob._core.errors import JobLost
from asyncjob._core.log import about, logger
from asyncjob._core.models import Job, JobState, ProgressValue
from asyncjob._core.registry import JobDefinition, lookup
from asyncjob.stores import DurableStore, ImmediateStore, Store
from asyncjob.stores.kit import MAX_BATCH

from .context import current
from .hooks import JobHooks, JobInfo, info, observe
from .job_context import JobContext
from .queue import JobQueue
from .sessions import JobScope, scoped
from .threads import ThreadPool, Work

__all__ = ("Engine", "FinishIn", "FinishInSync")

#: ``finish_in(session, job_id, result)``: record a job's success in its session.
FinishIn = Callable[[Any, str, Any], Awaitable[None]]
#: The same for a sync job, called in its thread.
FinishInSync = Callable[[Any, str, Any], None]

#: A worker that takes jobs from a full queue lets the loop run other tasks
#: at least this often (a few hundred microseconds of no-op jobs).
_YIELD_EVERY = 32
#: How many queued sync jobs may be lined up for the threads (see
#: :class:`ThreadPool`), per worker, when every worker is busy.
_LINE_UP = 16


class Engine:
    """Runs the jobs handed to it, at most ``concurrency`` at once, first in
    first out, and records how each ended.

    Each worker is a task that takes the next job from the queue and runs it
    to its end, so the number of workers is the concurrency limit: no
    semaphore, and no task created per job. Workers are started as jobs
    arrive, none idle, up to the limit, and live until :meth:`drain`.
    Coroutine jobs are awaited in the worker task; sync jobs run in a pool
    of ``threads`` threads, with the job's context copied into the thread.

    Each job starts from the context the engine was started in. A worker
    whose job set context variables retires after it and is replaced, so
    nothing a job sets leaks into the next one.

    A job's end is recorded once its code has stopped, however it stopped:
    a cancelled job keeps its worker (its place in the concurrency limit)
    until then. A worker task is never left holding a cancellation that was
    meant for a job it no longer runs.

    Args:
        store: where outcomes are recorded.
        concurrency: how many jobs run at once.
        threads: how many threads sync jobs share.
        scope: what wraps each job (a database session, a transaction).
        hooks: told of each job's progress and end.
        finish_in: records a coroutine job's success in the job's own
            session, with the job's writes (see :class:`TransactionalStore`).
        finish_in_sync: the same for a sync job, in its thread.
        on_free: called whenever a job's code has ended, so that more may be
            claimed for the free worker.
    """

    def __init__(
        self,
        store: Store,
        *,
        concurrency: int,
        threads: int,
        scope: JobScope,
        hooks: Iterable[JobHooks] = (),
        finish_in: FinishIn | None = None,
        finish_in_sync: FinishInSync | None = None,
        on_free: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        # Retries are the store's to hand out again when workers share it.
        self._durable = isinstance(store, DurableStore)
        self._hooks = tuple(hooks)
        #: The store, when it never waits and no hook must be told first: it
        #: is then called without a coroutine each (the runner's too).
        self.immediate = store if isinstance(store, ImmediateStore) and not self._hooks else None
        self._scope = scope
        # Decided once: a coroutine job is awaited directly, or in its scope.
        self._wraps_async = scope.wraps_async
        self._report = self._report_to_all if self._hooks else store.report_progress
        self._worker: str = getattr(store, "owner", "")  # for JobContext.worker
        self._finish_in = finish_in
        # Where the store can record an end with no one waiting, the worker
        # goes on to its next job meanwhile (no hooks to tell first).
        self._finish_soon = (
            store.finish_soon if isinstance(store, DurableStore) and not self._hooks else None
        )
        self._ends_quickly = self.immediate is not None or self._finish_soon is not None
        self._finish_in_sync = finish_in_sync
        self._on_free = on_free
        self._concurrency = concurrency
        self._threads = ThreadPool(threads)
        # Only needed when fewer threads than workers could want them.
        self._limit_threads = threads < concurrency
        self._thread_slots = asyncio.Semaphore(threads)
        # A thread may go on to a lined-up sync job itself when the store
        # records a start without waiting, and every worker has a thread.
        self._lines_up = self.immediate is not None and not self._limit_threads
        # Jobs lined up for the threads, oldest first, not started: their
        # work, and when each was taken from the queue (for put_back); the
        # lowest priority among them.
        self._lined_up: dict[str, tuple[Work, int]] = {}
        self._lined_up_floor = _NO_PRIORITY
        self._line_up_max = _LINE_UP * concurrency
        self._queue = JobQueue()
        # Jobs of a registered name with a concurrency limit: how many run
        # here, and those waiting for one of them to end (they hold no worker).
        self._running_of: dict[str, int] = {}
        # (when it was taken, job), for JobQueue.put_back.
        self._parked: dict[str, deque[tuple[int, Job]]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._unstarted: set[asyncio.Task[None]] = set()  # made, not at the queue yet
        self._wave = 1  # how many workers _take_in calls next
        self._outstanding = 0  # jobs submitted and not yet done
        self._all_done = asyncio.Event()
        self._all_done.set()
        self._context = contextvars.Context()
        self._draining = False
        self._closed = False
        self._delayed: dict[str, tuple[asyncio.TimerHandle, Job]] = {}
        # Jobs whose code has ended, and whose outcome is being recorded.
        self._recording: set[str] = set()
        # Of those, the ends handed to the store's finish_soon, not written
        # yet; and how many may wait with their slots freed.
        self._writing = 0
        self._ends_ahead = max(concurrency, MAX_BATCH)
        self._ends_written = asyncio.Event()
        self._ends_written.set()
        # The jobs running now: their context, and the worker task running them.
        self._active: dict[str, tuple[JobContext, asyncio.Task[Any]]] = {}
        # Jobs interrupted before they started here: a claimed job that waits
        # in the queue never starts then (any other is stopped by the store,
        # whose start() refuses it). Emptied whenever the queue is.
        self._interrupted_early: set[str] = set()
        #: Claimed jobs stopped as the runner stops, to be handed back (stop_late).
        self._handing_back: set[str] = set()
        #: Sync jobs taken from the queue, waiting for a thread (threads < concurrency).
        self._awaiting_thread: dict[str, Job] = {}
        # With hooks: when each running job's attempt started (perf_counter).
        self._began: dict[str, float] = {}
        #: How many jobs have been done, in all.
        self.done = 0

    # -- what the runner and the producer ask -------------------------------

    @property
    def concurrency(self) -> int:
        """How many jobs may run at once."""
        return self._concurrency

    @property
    def free(self) -> int:
        """How many more jobs could start now.

        A job whose code has ended no longer counts, though its worker is
        still recording its outcome: the jobs claimed meanwhile wait for the
        few milliseconds that takes, and the claim and the record overlap.
        """
        return self._concurrency - self._outstanding + len(self._recording)

    @property
    def running(self) -> int:
        """How many jobs are running now."""
        return len(self._active)

    @property
    def size(self) -> int:
        """How many worker tasks exist now."""
        return len(self._workers)

    def start(self) -> None:
        """Bind to the running loop, and take the calling context as the one
        every job starts from."""
        self._context = contextvars.copy_context()
        self._threads.start(self._taken_from_line, self._line_up)

    def submit(self, job: Job) -> None:
        """Queue ``job`` (after the jobs of a higher priority, and those of
        its own performed before it), starting a worker for it if none is free."""
        if self._outstanding == 0:
            self._all_done.clear()
        self._outstanding += 1
        self._queue.put(job)
        if self._lined_up and _priority(job) > self._lined_up_floor:
            self.release_lined_up()  # it goes before them
        self._take_in()

    def submit_later(self, job: Job, delay: float) -> None:
        """Queue ``job`` after ``delay`` seconds (a delayed job, a retry);
        :meth:`join` waits for it meanwhile. A timer each: waiting jobs cost
        no work."""
        if self._outstanding == 0:
            self._all_done.clear()
        self._outstanding += 1
        handle = asyncio.get_running_loop().call_later(delay, self._submit_delayed, job.id)
        self._delayed[job.id] = (handle, job)

    def forget(self, job_id: str) -> None:
        """Drop a delayed job that will not run (cancelled while it waited)."""
        delayed = self._delayed.pop(job_id, None)
        if delayed is not None:
            delayed[0].cancel()
            self._done(job_id)

    def _submit_delayed(self, job_id: str) -> None:
        _, job = self._delayed.pop(job_id)
        self._outstanding -= 1  # submit() counts it again
        self.submit(job)

    def _take_in(self) -> None:
        """Jobs are queued: see that workers come for them.

        Not a worker woken for each job: each wake-up is a future and a
        task's step, a tenth of a claimed no-op job's time, and a worker
        that ends its job takes the next itself, so that most of them found
        the queue empty. Workers come in waves instead: once the last of a
        wave has come and taken its job, if jobs are left, this wakes (or
        makes, up to the concurrency) twice as many as the wave before, from
        one; a worker finding the queue empty starts the waves over. A
        batch of short jobs costs two or three wake-ups; long ones all have
        a worker within a few of the loop's turns (six for 50 jobs)."""
        queue = self._queue
        if queue.coming or self._unstarted:
            return  # the wave on its way calls this again
        wave = min(len(queue), self._wave)
        self._wave = min(2 * wave, self._concurrency)
        while wave and queue.wake_one():
            wave -= 1
        while wave and len(self._workers) < self._concurrency:
            self._spawn()
            wave -= 1

    def settle(self, job_id: str) -> None:
        """Make the store's word on ``job_id`` true before it is cancelled:
        a job lined up for the threads goes back to the queue (it will not
        start), unless a thread took it, whose start is then recorded now."""
        lined_up = self._lined_up.pop(job_id, None)
        if lined_up is None:
            return
        work, taken = lined_up
        if self._threads.withhold(work):
            self._put_back(work.job, taken)
        else:
            self._threads.drain()

    def release_lined_up(self) -> None:
        """Put the jobs lined up for the threads back in the queue, in their
        places: a job of a higher priority came, or the runner stops."""
        self._lined_up_floor = _NO_PRIORITY
        for work in self._threads.withhold_all():
            self._put_back(work.job, self._lined_up[work.job.id][1])
        self._lined_up.clear()  # those not withheld run: recorded by the drain

    def interrupt(self, job_id: str) -> bool:
        """Stop the job if it runs here; True if it does.

        A coroutine job gets :class:`asyncio.CancelledError` at its current
        ``await``; a sync job gets :class:`JobCancelled` from its next
        ``set_progress``, since a thread cannot be stopped from outside. The
        job is recorded as ended once its code has stopped.
        """
        active = self._active.get(job_id)
        if active is None:
            self._interrupted_early.add(job_id)
            return False
        ctx, task = active
        if not ctx.cancelled:
            ctx.cancelled = True
            if ctx.is_async:
                task.cancel()
        return True

    @property
    def running_now(self) -> KeysView[str]:
        """The ids of the jobs running now, as they change (a view)."""
        return self._active.keys()

    def claimed_running(self) -> list[str]:
        """The ids of the running jobs that were claimed from a durable store."""
        return [job_id for job_id, (ctx, _) in self._active.items() if ctx.claimed]

    async def join(self) -> None:
        """Wait until every submitted job is done."""
        await self._all_done.wait()

    async def end(self, job: JobInfo, state: JobState, *, error: str | None = None) -> bool:
        """Record that a job that never ran here ended (a claimed job that
        cannot run, one cancelled before it started): hooks, then store."""
        await self._tell_ending(job)
        recorded = await self._store.finish_as(job.id, state, error=error)
        if recorded is not None:
            self._tell_finished(job, state, recorded, error)
        return recorded is not None

    # -- stopping ------------------------------------------------------------

    def take_queued(self) -> list[Job]:
        """Empty the queue and return the jobs that had not started."""
        self.release_lined_up()
        jobs = []
        for handle, delayed in self._delayed.values():
            handle.cancel()
            jobs.append(delayed)
            self._done(delayed.id)
        self._delayed.clear()
        for waiting in self._parked.values():
            for taken, job in waiting:
                self._queue.put_back(job, taken)  # in its place, for the order
        self._parked.clear()
        for job in [*self._awaiting_thread.values(), *self._queue.take_all()]:
            jobs.append(job)
            self._done(job.id)
        self._awaiting_thread.clear()
        return jobs

    async def drain(self, timeout: float) -> list[str]:
        """Let each worker finish its job and end, waiting ``timeout`` seconds.

        Call :meth:`take_queued` first, or the workers run what is queued.
        Returns the ids of the jobs still running when the time is up.
        """
        self._draining = True
        workers = set(self._workers)
        for _ in workers:
            self._queue.stop_one()
        if workers:
            await asyncio.wait(workers, timeout=timeout)
        self._threads.drain()  # the lined-up jobs threads took are running
        return list(self._active)

    async def stop_late(
        self, job_ids: list[str], timeout: float, hand_back: Iterable[str] = ()
    ) -> list[str]:
        """Stop the jobs still running after the grace period: interrupt
        them, and wait up to ``timeout`` seconds for the coroutine ones to
        unwind. Sync jobs are not waited for: their threads cannot be
        stopped, and end in the background (their jobs still running, with
        their cancel requested). Those of ``hand_back`` end without their
        cancel recorded: the runner hands them back once they have stopped.
        Returns the jobs still running."""
        self._handing_back.update(hand_back)
        unwinding = set()
        for job_id in job_ids:
            active = self._active.get(job_id)
            if active is not None and self.interrupt(job_id) and active[0].is_async:
                unwinding.add(active[1])
        if unwinding:
            _, stuck = await asyncio.wait(unwinding, timeout=timeout)
            if stuck:
                logger.error(
                    "%d job(s) ignored cancellation; the runner stops without them", len(stuck)
                )
        return [job_id for job_id in job_ids if job_id in self._active]

    async def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the ends still being written,
        then record nothing more, and let the thread pool go without
        waiting for its threads: the store is about to close."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ends_written.wait()
        self._closed = True
        self._threads.close()

    # -- the workers -----------------------------------------------------------

    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(self._work(), context=self._context.copy())
        self._workers.add(task)
        self._unstarted.add(task)
        task.add_done_callback(self._workers.discard)
        task.add_done_callback(self._unstarted.discard)  # cancelled before it started

    async def _work(self) -> None:
        queue = self._queue
        task = asyncio.current_task()
        assert task is not None
        self._unstarted.discard(task)
        in_a_row = 0
        came = True  # one of a wave of workers (see _take_in)
        while True:
            in_a_row += 1
            if in_a_row == _YIELD_EVERY:
                # Jobs that never await would otherwise keep the loop to
                # this worker for as long as the queue is full.
                in_a_row = 0
                await asyncio.sleep(0)
            job: Job | None
            if self._lined_up and (back := self._take_back()) is not None:
                # Lined up for the threads, none of which was free to take
                # it: it goes before the queue's jobs, taken after it.
                job = back
            else:
                try:
                    job = queue.get_nowait()
                    empty = False
                except asyncio.QueueEmpty:
                    empty = True
                if empty:  # waited for outside the handler: no exception held meanwhile
                    self._interrupted_early.clear()  # none of them can be waiting
                    self._wave = 1
                    job = await queue.get()
                    in_a_row = 0
                    came = True
                if came:
                    came = False
                    if len(queue):
                        self._take_in()  # the next wave, for the jobs left
            if job is None:
                return
            definition = lookup(job.name) if job.registered else None
            # A durable store's claims keep to the limits, across workers.
            limit = None if definition is None or self._durable else definition.concurrency
            if limit is not None and self._running_of.get(job.name, 0) >= limit:
                # It waits for one of its kind to end, holding no worker.
                self._parked.setdefault(job.name, deque()).append((queue.taken(), job))
                continue
            if limit is not None:
                self._running_of[job.name] = self._running_of.get(job.name, 0) + 1
            last: str | None = job.id  # a sync job's thread may go on to lined-up ones
            try:
                if job.is_async:
                    if not await self._run_async(job, task, definition):
                        last = None  # done once its end is written
                else:
                    last = await self._run_sync(job, task, definition)
            except Exception:  # noqa: BLE001 - a bug here must not kill the worker
                logger.exception("internal error while running job %s", job.id, extra=about(job))
            finally:
                if limit is not None:
                    self._one_less_of(job.name)
                if last is not None:
                    self._done(last)
            if contextvars.copy_context() != self._context:
                if not self._draining:
                    self._spawn()
                return

    def _ended(self, job_id: str) -> None:
        """The job's code has ended; its outcome is being recorded."""
        if job_id in self._recording:
            return
        self._recording.add(job_id)
        if self._on_free is not None:
            self._on_free()

    def _done(self, job_id: str) -> None:
        self.done += 1
        self._outstanding -= 1
        if self._outstanding == 0:
            self._all_done.set()
        if job_id in self._recording:
            self._recording.remove(job_id)  # its slot was freed when it ended
        elif self._on_free is not None:
            self._on_free()

    def _written(self, job_id: str, limited: bool) -> None:
        """The end of a job handed to the store's finish_soon is written."""
        self._writing -= 1
        if self._writing == 0:
            self._ends_written.set()
        self._done(job_id)
        if limited and self._on_free is not None:
            self._on_free()  # a slot of its limit is free in the store now

    def _one_less_of(self, name: str) -> None:
        """A job of a limited name ended: one waiting for it may run."""
        self._running_of[name] -= 1
        waiting = self._parked.get(name)
        if waiting:
            taken, job = waiting.popleft()
            self._put_back(job, taken)
            if not waiting:
                del self._parked[name]

    def _put_back(self, job: Job, taken: int) -> None:
        """Queue again a job taken from the queue (in its place: see
        JobQueue.put_back) that did not start, and see that a worker takes it."""
        self._queue.put_back(job, taken)
        self._take_in()

    def _report_to_all(self, job_id: str, value: ProgressValue, data: Any) -> None:
        self._store.report_progress(job_id, value, data)
        for hook in self._hooks:
            hook.progress(job_id, value, data)

    # -- running one job -------------------------------------------------------

    async def _run_async(
        self, job: Job, task: asyncio.Task[Any], definition: JobDefinition | None
    ) -> bool:
        """Run a coroutine job in the worker ``task`` (the caller) to its
        end, and record the outcome; never raises for anything the job does.
        Returns False when the job is to be counted done later, once its
        end is written (see ``DurableStore.finish_soon``)."""
        if job.claimed:
            if self._interrupted_early and await self._interrupted_before_start(job):
                return True
        elif not (
            self.immediate.start_nowait(job.id)
            if self.immediate is not None
            else await self._store.start(job.id)
        ):
            return True  # cancelled while it was queued
        ctx = JobContext(job, self._report, self._worker)
        self._active[job.id] = (ctx, task)
        if self._hooks:
            self._starting(job)
        token = current.set(ctx)
        traced = None if tracing.active is None else tracing.active.run(job)
        result: Any = None
        error: BaseException | None = None
        try:
            if (definition is None or definition.timeout is None) and not self._wraps_async:
                result = await job.call()  # two coroutines fewer
            else:
                result = await self._call_async(job, ctx, definition)
        except asyncio.CancelledError as exc:
            if not ctx.cancelled:
                if task.cancelling():
                    # The worker task itself is cancelled: its loop closes
                    # under a runner nobody stopped. The job has unwound.
                    await self._record(job, JobState.cancelled)
                    raise
                error = exc  # raised by the job on its own: its failure
        except BaseException as exc:  # noqa: BLE001 - SystemExit too, as in a sync job's thread
            # Any error of the job is its failure: one that is not an
            # Exception (sys.exit(), a framework's own) ended the worker
            # task, and the job stayed running in the store for good.
            error = exc
        finally:
            if traced is not None:
                traced.end(error)
            current.reset(token)
            del self._active[job.id]
            if ctx.cancelled:
                # interrupt() cancelled this worker task for the job; the job
                # has ended, so the worker must not stay marked as cancelling.
                task.uncancel()
        if error is None and not ctx.cancelled and not ctx.finished and self._ends_quickly:
            # The common end, without a coroutine.
            return self._succeeded_quickly(job, result, definition)
        await self._conclude(job, ctx, definition, result, error)
        return True

    async def _interrupted_before_start(self, job: Job) -> bool:
        """For a claimed job (running already): True when it was interrupted
        while it waited here, and is now recorded as cancelled, never run."""
        if job.id not in self._interrupted_early:
            return False
        self._interrupted_early.discard(job.id)
        await self._record(job, JobState.cancelled)
        return True

    async def _call_async(self, job: Job, ctx: JobContext, definition: JobDefinition | None) -> Any:
        """Await the coroutine job inside its scope and under its timeout.

        With ``finish_in``, the job's success is recorded through its own
        session, before the scope commits it: the job's writes and its final
        state are one transaction (``ctx.finished`` says it is done).
        """
        timeout = None if definition is None else definition.timeout
        if not self._wraps_async:
            return await _with_timeout(job, timeout)
        return await scoped(self._scope, ctx, partial(self._in_scope, job, ctx, timeout))

    async def _in_scope(self, job: Job, ctx: JobContext, timeout: float | None) -> Any:
        result = await _with_timeout(job, timeout)
        if self._finish_in is not None and ctx.session is not None and not ctx.cancelled:
            await self._finish_in(ctx.session, job.id, result)
            ctx.finished = True
        return result

    async def _run_sync(
        self, job: Job, task: asyncio.Task[Any], definition: JobDefinition | None
    ) -> str | None:
        """Run a sync job in a thread; the worker ``task`` waits for it.
        Returns the id of the last job it ran (see :meth:`_run_in_thread`)."""
        if self._limit_threads:
            # A sync job only counts as running once it has a thread: until
            # then it is queued, and take_queued takes it (stop() ran such
            # jobs as threads came free, queued jobs it said never start).
            self._awaiting_thread[job.id] = job
            try:
                async with self._thread_slots:
                    if self._awaiting_thread.pop(job.id, None) is None:
                        return None  # taken back, and counted done, by take_queued
                    return await self._run_in_thread(job, task, definition)
            finally:
                self._awaiting_thread.pop(job.id, None)
        return await self._run_in_thread(job, task, definition)

    async def _run_in_thread(
        self, job: Job, task: asyncio.Task[Any], definition: JobDefinition | None
    ) -> str | None:
        """Run ``job`` in a thread, and record how it ended.

        While every worker is busy, queued sync jobs are lined up for the
        threads: when a job succeeds, its thread goes on to the oldest of
        them without waiting for the loop, which records the end, counts it
        done and records the next start together (:meth:`_taken_from_line`),
        and tops the line up; the worker wakes when the last job of the run
        has ended. Returns that job's id (the caller counts it done), or
        None when it is counted done once its end is written.
        """
        if job.claimed:
            if self._interrupted_early and await self._interrupted_before_start(job):
                return job.id
        elif not (
            self.immediate.start_nowait(job.id)
            if self.immediate is not None
            else await self._store.start(job.id)
        ):
            return job.id  # cancelled while it was queued
        traced = None if tracing.active is None else tracing.active.run(job)
        timeout = None if definition is None else definition.timeout
        work = self._work_for(job, timeout)
        ctx = work.ctx
        self._active[job.id] = (ctx, task)
        if self._hooks:
            self._starting(job)
        deadline = None
        if timeout is not None:
            # A thread cannot be stopped: the job learns at its next report.
            deadline = asyncio.get_running_loop().call_later(timeout, _time_out, ctx)
        work.follows = self._lines_up and traced is None and _may_line_up(definition)
        future = self._threads.run(work)
        try:
            if work.follows:
                self._line_up()
            work, ok, result = await future
        except asyncio.CancelledError:
            # Nothing here cancels a sync job's worker: its loop is closing.
            # The thread goes on until the job's next report; its cancel is
            # requested meanwhile, the truth until then.
            for job_id, (running, worker) in list(self._active.items()):
                if worker is task:  # this job, or one its thread went on to
                    del self._active[job_id]
                    running.cancelled = True
                    break
            else:
                job_id = job.id
                ctx.cancelled = True
            if traced is not None:
                traced.end(None)
            if not self._closed:
                self.release_lined_up()
                await self._store.cancel(job_id)
            raise
        finally:
            self._active.pop(work.job.id, None)
            if deadline is not None:
                deadline.cancel()
        if work.ctx is not ctx:  # its thread went on to lined-up jobs, ended here
            ctx = work.ctx
            job = work.job
            definition = lookup(job.name) if job.registered else None
        error: BaseException | None = None
        late = ctx.timed_out and timeout is not None
        if not ok or (late and not ctx.finished):
            # SystemExit in a job's thread is the job's failure too.
            error = _timed_out(job, timeout or 0) if late else result
            result = None
        if traced is not None:
            traced.end(error)
        if error is None and inspect.iscoroutine(result):
            result.close()
            error = TypeError(
                f"{job.name} returned a coroutine instead of running it: perform "
                "the coroutine function itself, e.g. perform(func, arg), "
                "not a lambda or sync function that calls it"
            )
        if error is None and not ctx.cancelled and not ctx.finished and self._ends_quickly:
            return job.id if self._succeeded_quickly(job, result, definition) else None
        await self._conclude(job, ctx, definition, result, error)
        return job.id

    def _work_for(self, job: Job, timeout: float | None = None) -> Work:
        """A sync job, ready for a thread: its context (a copy of the
        worker's, with the job current) and the call, in its scope."""
        ctx = JobContext(job, self._report, self._worker)
        # Current in the thread's copy of this context, until it returns.
        # A copy of the worker's context, with what tracing set for the job
        # (lined up in a batch of outcomes: the loop's, the same otherwise).
        thread_context = contextvars.copy_context()
        thread_context.run(current.set, ctx)
        call = job.func
        if self._scope.wraps_sync:
            call = self._in_scope_sync(job, ctx, timeout)
        return Work(job, call, thread_context, ctx)

    def _line_up(self) -> None:
        """Line up queued sync jobs for the threads while every worker is
        busy (a free one would start them at once, in parallel)."""
        queue = self._queue
        assert self.immediate is not None
        while (
            len(self._lined_up) < self._line_up_max
            and not self._queue.waiting
            and len(self._workers) >= self._concurrency
            and tracing.active is None
        ):
            job = queue.peek()
            if job is None or job.is_async or job.claimed:
                return
            if job.registered and not _may_line_up(lookup(job.name)):
                return
            queue.get_nowait()
            if not self.immediate.queued_nowait(job.id):
                # Cancelled while it waited in the queue: a worker taking
                # it would not start it either (Store.start refuses it).
                self._done(job.id)
                continue
            work = self._work_for(job)
            work.follows = True  # its worker, waiting for it, will be there
            self._lined_up[job.id] = (work, queue.taken())
            self._lined_up_floor = min(self._lined_up_floor, _priority(job))
            self._threads.line_up(work)

    def _take_back(self) -> Job | None:
        """The oldest job lined up for the threads, taken back, if any."""
        work = self._threads.take_back()
        if work is None:
            return None
        job = work.job
        del self._lined_up[job.id]
        return job

    def _taken_from_line(self, work: Work, result: Any, taken: Work) -> None:
        """On the loop, in the batch of outcomes: ``work``'s job succeeded
        and its thread went on to the lined-up ``taken``. Record the end,
        then the start, before anything the new job reports."""
        job = work.job
        _, task = self._active.pop(job.id)
        self._succeeded_quickly(job, result, None)  # at once: an immediate store
        self._done(job.id)
        following = taken.job
        self._lined_up.pop(following.id, None)
        assert self.immediate is not None
        if not self._closed and not self.immediate.start_nowait(following.id):
            # Not expected: a job is lined up only while queued, and a
            # cancel takes it back from the line first (settle).
            taken.ctx.cancelled = True
        self._active[following.id] = (taken.ctx, task)

    def _in_scope_sync(
        self, job: Job, ctx: JobContext, timeout: float | None
    ) -> Callable[..., Any]:
        """The sync job as its thread runs it: inside its scope and, with
        ``finish_in_sync``, its success recorded through its own session
        before the scope commits it, as :meth:`_call_async` does for a
        coroutine job."""
        finish_in = self._finish_in_sync
        scope = self._scope

        def call(*args: Any, **kwargs: Any) -> Any:
            with scope.for_sync_job(ctx):
                result = job.func(*args, **kwargs)
                if ctx.cancelled or inspect.iscoroutine(result):  # a mistake the engine reports
                    return result
                if ctx.timed_out and timeout is not None:
                    # Too late to succeed: raised in the scope, which rolls
                    # its session back (it committed the writes of a job
                    # then recorded failed, once an attempt).
                    raise _timed_out(job, timeout)
                if finish_in is not None and ctx.session is not None:
                    finish_in(ctx.session, job.id, result)
                    ctx.finished = True
                return result

        return call

    # -- recording how it ended ------------------------------------------------

    async def _conclude(
        self,
        job: Job,
        ctx: JobContext,
        definition: JobDefinition | None,
        result: Any,
        error: BaseException | None,
    ) -> None:
        """Record how the job's attempt ended, now that its code has stopped."""
        if ctx.cancelled:
            await self._record(job, JobState.cancelled)
        elif isinstance(error, JobLost):
            logger.warning(
                "job %s (%s) is no longer this worker's to finish (its cancel was "
                "requested, or another worker took it over): its writes are rolled back",
                job.id,
                job.name,
                extra=about(job),
            )
            await self._record(job, JobState.cancelled)
        elif error is not None:
            await self._fail(job, definition, error)
        elif ctx.finished:  # recorded in the job's own transaction
            self._ended(job.id)
            if self._hooks:
                about_job = info(job)
                await self._tell_ending(about_job)
                self._tell_finished(about_job, JobState.succeeded, JobState.succeeded, None)
        else:  # without hooks, where a store records ends quickly: _succeeded_quickly
            await self._record(job, JobState.succeeded, result=result)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("job %s (%s) succeeded", job.id, job.name, extra=about(job))

    def _succeeded_quickly(self, job: Job, result: Any, definition: JobDefinition | None) -> bool:
        """Record a success without waiting for the store (there are no
        hooks to tell): at once in a store that never waits; else handed to
        the store's ``finish_soon``, the worker going on meanwhile. It is
        done now (True), or once its end is written (False: :meth:`_written`
        counts it).

        The job's slot frees now, unless a full batch of ends (or as many
        as the engine runs jobs, if more) waits to be written already: its
        slot then frees once its end is written. A database slower to write
        ends than jobs end holds the worker back, rather than letting a
        backlog grow (each end unwritten is a job still running in the
        database, for every worker to count); a smaller bound cost SQLite a
        fifth of its throughput, its batches of ends cut short.

        A job of a name with a concurrency limit takes its slot of the limit
        in the store until its end is written: the producer is woken then,
        to claim the one that may have waited for it (a store need not hear
        of its own writes: SQLite's does not)."""
        if self._closed:
            return True  # the runner has stopped: nobody is left to record it
        if self.immediate is not None:
            self.immediate.finish_nowait(job.id, JobState.succeeded, result=result)
            done = True  # a moment later, as no await comes between (no _ended)
        else:
            assert self._finish_soon is not None
            if self._writing < self._ends_ahead:
                self._ended(job.id)  # its slot frees now; else once its end is written
            if self._writing == 0:
                self._ends_written.clear()  # set again when it falls back to 0
            self._writing += 1
            limited = definition is not None and definition.concurrency is not None
            self._finish_soon(
                job.id, JobState.succeeded, partial(self._written, job.id, limited), result=result
            )
            done = False
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("job %s (%s) succeeded", job.id, job.name, extra=about(job))
        return done

    async def _fail(self, job: Job, definition: JobDefinition | None, exc: BaseException) -> None:
        error = "".join(traceback.format_exception_only(exc)).strip()
        delay = None if definition is None else definition.delay_before(job.attempt)
        if delay is not None and not self._closed:
            self._ended(job.id)
            if await self._store.retry(job.id, error=error, delay=delay):
                if self._hooks:
                    self._began.pop(job.id, None)
                    observe(self._hooks, "retrying", info(job), error, delay)
                logger.warning(
                    "job %s (%s) failed on attempt %d, trying again in %.1f s: %s",
                    job.id, job.name, job.attempt, delay, error, extra=about(job),
                )  # fmt: skip
                if not self._durable:  # else any worker of the store takes it
                    self.submit_later(job._replace(attempt=job.attempt + 1), delay)
                return
        tb = "".join(traceback.format_exception(exc))
        logger.error(
            "job %s (%s) failed: %s", job.id, job.name, error, exc_info=exc, extra=about(job)
        )
        await self._record(job, JobState.failed, error=error, traceback=tb)

    async def _record(
        self,
        job: Job,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> None:
        """Free the job's slot, tell the hooks, and record its end."""
        self._ended(job.id)
        if self._closed or (state is JobState.cancelled and job.id in self._handing_back):
            return  # the runner has stopped, or hands the job back: not its end
        if not self._hooks:
            await self._store.finish(job.id, state, result=result, error=error, traceback=traceback)
            return
        await self._tell_ending(info(job))
        recorded = await self._store.finish_as(
            job.id, state, result=result, error=error, traceback=traceback
        )
        if recorded is None:  # not ended here (another worker has it): not counted here
            self._began.pop(job.id, None)
        else:
            self._tell_finished(info(job), state, recorded, error)

    async def _tell_ending(self, job: JobInfo) -> None:
        """Hooks: the job is about to be recorded as ended. One that raises
        is logged, and the end recorded all the same: a job whose end was
        never written stayed running in the store, its lease renewed by
        this worker for as long as it ran."""
        for hook in self._hooks:
            try:
                await hook.ending(job.id)
            except Exception:  # noqa: BLE001 - see the docstring
                logger.exception(
                    "hook %s.ending raised on job %s (%s); its end is recorded all the same",
                    type(hook).__name__, job.id, job.name, extra=about(job),
                )  # fmt: skip

    def _starting(self, job: Job) -> None:
        """Hooks: the attempt starts (and is timed from now)."""
        self._began[job.id] = time.perf_counter()
        observe(self._hooks, "started", info(job))

    def _tell_finished(
        self, job: JobInfo, asked: JobState, recorded: JobState, error: str | None
    ) -> None:
        """Hooks: the job ended as the store ``recorded`` it, which is not
        the state the runner ``asked`` for when the job's cancel came after
        its code returned. ``error`` is the asked state's: told with it only."""
        began = self._began.pop(job.id, None)
        duration = None if began is None else time.perf_counter() - began
        told = error if recorded is asked else None
        observe(self._hooks, "finished", job, recorded, duration, told)


_NO_PRIORITY = 101  # above any job's


def _priority(job: Job) -> int:
    return job.options.priority if job.options is not None else 0


def _may_line_up(definition: JobDefinition | None) -> bool:
    """Whether a sync job may be lined up: not one with a timeout (timed
    from its start on the loop) or a limit (counted as it is taken)."""
    return definition is None or (definition.timeout is None and definition.concurrency is None)


def _time_out(ctx: JobContext) -> None:
    ctx.timed_out = True


def _timed_out(job: Job, timeout: float) -> TimeoutError:
    """The error an attempt that ran past its timeout fails with."""
    return TimeoutError(f"{job.name} ran longer than its timeout of {timeout:g} s")


async def _with_timeout(job: Job, timeout: float | None) -> Any:
    if timeout is None:
        return await job.call()
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            result = await job.call()
    except TimeoutError:
        if limit.expired():
            raise _timed_out(job, timeout) from None
        raise
    if limit.expired():  # it caught the cancellation, and returned all the same
        raise _timed_out(job, timeout)
    return result

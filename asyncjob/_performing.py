"""How a runner takes jobs: one, many at once, or in the application's transaction.

A base of :class:`asyncjob.Runner`, apart only to keep each module short.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from ._callables import describe
from ._errors import RunnerNotRunning
from ._fetcher import Fetcher
from ._models import Job, new_job_id
from ._registry import registered_name
from ._workers import WorkerPool
from .stores import Store

__all__ = ("Performing", "Phase")

T = TypeVar("T")

# Most jobs take no keyword arguments: one shared empty mapping rather
# than an empty dict per queued job.
_NO_KWARGS: Mapping[str, Any] = MappingProxyType({})


class Phase(enum.Enum):
    """Where a runner is in its life."""

    new = "new"
    running = "running"
    stopping = "stopping"
    stopped = "stopped"


class Performing:
    """The runner's ways to take jobs (see :class:`asyncjob.Runner`)."""

    _store: Store
    _loop: asyncio.AbstractEventLoop | None
    _phase: Phase
    _fetcher: Fetcher | None
    _pool: WorkerPool
    producer_only: bool

    if TYPE_CHECKING:

        async def _on_loop(self, awaitable: Awaitable[T]) -> T: ...  # JobQueries'

    async def perform(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Queue ``func(*args, **kwargs)`` to run in the background.

        Returns the new job's id as soon as the job is recorded, without
        waiting for it to start. ``func`` may be a coroutine function or any
        other callable (run in the thread pool); partials, bound methods and
        callable objects are told apart here, once.

        Raises:
            TypeError: ``func`` is not callable.
            RunnerNotRunning: the runner is not started, or is stopping.
        """
        _check_callable(func, "perform()")
        job = self._new_job(new_job_id(), func, args, kwargs or _NO_KWARGS)
        if asyncio.get_running_loop() is self._loop:
            return await self._enqueue(job)
        return await self._on_loop(self._enqueue(job))

    async def perform_many(
        self,
        func: Callable[..., Any],
        arguments: Iterable[Sequence[Any] | Mapping[str, Any]],
        /,
    ) -> list[str]:
        """Queue ``func`` once for each item of ``arguments``, all in one write.

        Each item is a tuple (or list) of positional arguments, or a dict of
        keyword arguments::

            ids = await runner.perform_many(resize, [("a.jpg", 64), ("b.jpg", 64)])
            ids = await runner.perform_many(notify, [{"user": 1}, {"user": 2}])

        Returns the new jobs' ids, in the order of ``arguments``, once all
        are recorded. An SQL store writes them in one statement: all of
        them, or none if it fails; performing thousands this way costs a
        little more than performing one. Every item is checked before
        anything is written.

        Raises:
            TypeError: ``func`` is not callable, an item is neither a tuple
                nor a dict (a string, say), or an item's arguments cannot be
                stored (the message says which item).
            RunnerNotRunning: the runner is not started, or is stopping.
        """
        _check_callable(func, "perform_many()")
        calls = [_call_of(item, i) for i, item in enumerate(arguments)]
        self._check_running()
        name, is_async, registered = _kind_of(func)
        now = time.time()
        jobs = [
            Job(new_job_id(), name, func, args, kwargs, is_async, now, registered)
            for args, kwargs in calls
        ]
        if not jobs:
            return []
        if asyncio.get_running_loop() is self._loop:
            return await self._enqueue_many(jobs)
        return await self._on_loop(self._enqueue_many(jobs))

    async def perform_in(
        self, session: Any, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> str:
        """:meth:`perform`, in the application's transaction.

        ``session`` is the application's SQLAlchemy ``AsyncSession``, on
        the store's own database: the job is written in its transaction, so
        it exists, and runs, only if the application commits; a rollback
        leaves no trace of it. ``func`` must be registered with
        :func:`asyncjob.job` (any worker of the store may run it).

        Raises:
            TypeError: the store is not an SQL store, or ``func`` is not
                registered, or not callable.
            RunnerNotRunning: the runner is not started, or is stopping.
        """
        _check_callable(func, "perform_in()")
        job = self._new_job(new_job_id(), func, args, kwargs or _NO_KWARGS)
        await self._store.enqueue_in(session, job)
        return job.id

    def _new_job(
        self,
        job_id: str,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> Job:
        """The job to perform, with the id chosen by the caller: the id of a
        job handed over later (after a commit) must be known first."""
        self._check_running()
        name, is_async, registered = _kind_of(func)
        return Job(job_id, name, func, args, kwargs, is_async, time.time(), registered)

    def _check_running(self) -> None:
        if self._phase is not Phase.running:
            raise RunnerNotRunning(
                f"this runner is {self._phase.value} and takes no jobs: perform() "
                "works between start() and stop() (inside 'async with runner:')"
            )

    async def _enqueue(self, job: Job) -> str:
        self._check_running()  # again: a call from another loop may cross stop()
        await self._store.enqueue(job)
        if not self._hand_over((job,)):
            await self._refuse((job,))
        return job.id

    async def _enqueue_many(self, jobs: list[Job]) -> list[str]:
        self._check_running()
        await self._store.enqueue_many(jobs)
        if not self._hand_over(jobs):
            await self._refuse(jobs)
        return [job.id for job in jobs]

    def _hand_over(self, jobs: Sequence[Job]) -> bool:
        """Jobs just recorded, to whoever runs them; False, handing over
        nothing, when this runner would run them but stop() began while
        they were written."""
        if jobs[0].registered and self._store.durable:
            # They wait in the store for a worker: this runner's, if it is one.
            if self._fetcher is not None and not self.producer_only:
                self._fetcher.wake()
            return True
        if self._phase is not Phase.running:
            return False
        for job in jobs:
            self._pool.submit(job)
        return True

    async def _refuse(self, jobs: Sequence[Job]) -> None:
        """Cancel jobs recorded as stop() began, and say why."""
        for job in jobs:
            await self._store.cancel(job.id)
        self._check_running()


def _check_callable(func: object, call: str) -> None:
    if not callable(func):
        raise TypeError(
            f"{call} needs a callable as its first argument, not {type(func).__name__} ({func!r})"
        )


def _kind_of(func: Callable[..., Any]) -> tuple[str, bool, bool]:
    """``(name, is_async, registered)`` of a function to perform."""
    name, is_async = describe(func)
    registered = registered_name(func)
    return (name if registered is None else registered), is_async, registered is not None


def _call_of(item: object, index: int) -> tuple[tuple[Any, ...], Mapping[str, Any]]:
    """An item of :meth:`Performing.perform_many`'s arguments, as ``(args, kwargs)``."""
    if isinstance(item, tuple | list):
        return tuple(item), _NO_KWARGS
    if isinstance(item, Mapping) and all(isinstance(key, str) for key in item):
        return (), dict(item) or _NO_KWARGS
    hint = f": write ({item!r},) for one positional argument" if isinstance(item, str) else ""
    raise TypeError(
        f"perform_many(): item {index} is {type(item).__name__} ({item!r:.60}), not a tuple "
        f"of positional arguments or a dict of keyword arguments{hint}"
    )

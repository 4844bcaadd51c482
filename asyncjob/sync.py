"""asyncjob from sync code: Flask, Bottle, Pyramid, any WSGI application or
script, with no framework of ours.

::

    import asyncjob.sync

    asyncjob.sync.start("postgresql+asyncpg://app@db/app", producer_only=True)
    job_id = asyncjob.sync.perform(send_invoice, order_id)
    asyncjob.sync.status(job_id).state

The process's runner runs on an event loop of its own, in a thread of its
own, started once per process by :func:`start`; these functions may be
called from any number of request threads at once. A forked child starts
a runner of its own at its first call, with the arguments of ``start()``.
Fork only while no runner runs, though (gunicorn: without ``--preload``,
or ``start()`` in its ``post_fork`` hook; or :func:`stop` before forking):
a child forked from a process whose runner's threads hold locks (SQLite's,
say) may hang. asyncjob logs a warning when a process forks with its
runner running. :mod:`asyncjob.tg` (``tgext.asyncjob``'s names, progress
trackers, TurboGears2's transactions) and the Django backend build on the
same loop thread.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from asyncjob._core.log import logger
from asyncjob._core.models import JobStatus, Progress
from asyncjob._core.spec import JobSpec
from asyncjob._runner.loop_thread import LoopThread
from asyncjob._runner.runner import Runner

__all__ = (
    "cancel",
    "get_progress",
    "perform",
    "perform_many",
    "runner",
    "start",
    "status",
    "stop",
    "wait",
)

_lock = threading.Lock()


def _forking() -> None:
    if _thread is not None and _pid == os.getpid() and _thread.alive:
        logger.warning(
            "this process forks while asyncjob's runner runs: the child may hang on a "
            "lock one of its threads held; start the runner after the fork (in each "
            "worker), or asyncjob.sync.stop() before it"
        )


os.register_at_fork(before=_forking)
_thread: LoopThread | None = None
_pid = 0
_made: Callable[[], Runner] | None = None


def start(store: Any = "memory", /, **runner_options: Any) -> Runner:
    """Start this process's runner, on a thread of its own, and return it;
    :class:`asyncjob.Runner`'s arguments (the store, ``producer_only=True``
    for web processes whose jobs ``asyncjob worker`` runs, ``concurrency``…).

    A second call in the same process returns the runner already running
    (its options are those of the first call); in a forked child, the first
    call of any function here starts the child's own runner with the same
    arguments.

    Raises:
        Exception: what stopped the runner from starting (a store out of
            reach, bad options), in the calling thread.
    """
    global _made
    with _lock:
        _made = functools.partial(Runner, store, **runner_options)
    return _running().runner


def runner() -> Runner:
    """This process's runner (started by :func:`start`).

    Raises:
        RuntimeError: :func:`start` was not called in this process or its parent.
    """
    return _running().runner


def _running() -> LoopThread:
    global _thread, _pid
    with _lock:
        if _thread is not None and _pid == os.getpid() and _thread.alive:
            return _thread
        if _made is None:
            raise RuntimeError(
                "asyncjob.sync.start() was not called: call it once at start-up, "
                "e.g. asyncjob.sync.start('sqlite+aiosqlite:///jobs.db')"
            )
        thread = LoopThread(_made())
        thread.start()
        _thread, _pid = thread, os.getpid()
        return thread


def stop(timeout: float | None = None) -> None:
    """Stop this process's runner gracefully (its grace period applies);
    it is stopped at interpreter exit otherwise."""
    global _thread
    with _lock:
        thread, _thread = _thread, None
    if thread is not None and _pid == os.getpid():
        thread.stop(timeout)


def perform(func: Callable[..., Any] | JobSpec, /, *args: Any, **kwargs: Any) -> str:
    """:meth:`Runner.perform`: the job's id once it is recorded."""
    thread = _running()
    return thread.call(functools.partial(thread.runner.perform, func, *args, **kwargs))


def perform_many(
    func: Callable[..., Any] | JobSpec, arguments: Iterable[Sequence[Any] | Mapping[str, Any]], /
) -> list[str]:
    """:meth:`Runner.perform_many`."""
    thread = _running()
    return thread.call(thread.runner.perform_many, func, list(arguments))


def status(job_id: str) -> JobStatus:
    """:meth:`Runner.status`."""
    thread = _running()
    return thread.call(thread.runner.status, job_id)


def get_progress(job_id: str) -> Progress | None:
    """:meth:`Runner.get_progress`: ``(-1, None)``, ``(value, data)``, or
    ``None`` once the job has ended."""
    thread = _running()
    return thread.call(thread.runner.get_progress, job_id)


def wait(job_id: str, timeout: float | None = None) -> Any:
    """:meth:`Runner.wait`: the job's result, blocking this thread (never
    in a request that must answer fast)."""
    thread = _running()
    return thread.call(thread.runner.wait, job_id, timeout)


def cancel(job_id: str) -> bool:
    """:meth:`Runner.cancel`."""
    thread = _running()
    return thread.call(thread.runner.cancel, job_id)

"""``tgext.asyncjob``'s API, for TurboGears2 and any other WSGI application.

Change the import line and nothing else::

    from asyncjob.tg import start_async_worker, asyncjob_perform, asyncjob_get_progress

The runner runs on an event loop of its own, in a background thread started
once per process; these functions are plain sync functions that may be
called from any number of request threads at once.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asyncjob._core.errors import RunnerNotRunning
from asyncjob._core.log import logger
from asyncjob._core.models import JobStatus, Progress, new_job_id
from asyncjob._core.spec import JobSpec
from asyncjob._engine.context import current_job_id, set_progress
from asyncjob._engine.sessions import Sessions
from asyncjob._runner.loop_thread import LoopThread
from asyncjob._runner.runner import Runner

from ._tracker import ProgressTracker, TrackerHooks
from ._transactions import TransactionScope, active_transaction
from ._transactions import timed_query as asyncjob_timed_query

__all__ = (
    "AsyncJobQueue",
    "ProgressTracker",
    "asyncjob_get_progress",
    "asyncjob_perform",
    "asyncjob_perform_after_commit",
    "asyncjob_running_uid",
    "asyncjob_set_progress",
    "asyncjob_timed_query",
    "plugme",
    "start_async_worker",
    "stop_async_worker",
)

T = TypeVar("T")

#: Like ``tgext.asyncjob``, one job at a time, in order, unless the
#: application asks for more with ``concurrency=``.
DEFAULT_CONCURRENCY = 1

_lock = threading.Lock()
_queue: AsyncJobQueue | None = None


class AsyncJobQueue:
    """The handle that :func:`start_async_worker` returns and stores on the
    app globals as ``asyncjob_queue``: the runner, on its own loop thread."""

    def __init__(
        self,
        loop_thread: LoopThread,
        tracker: ProgressTracker | None,
        after_commit: bool,
    ) -> None:
        self._thread = loop_thread
        self.runner: Runner = loop_thread.runner
        self.tracker = tracker
        self.after_commit = after_commit
        self.pid = os.getpid()

    def perform(
        self, what: Callable[..., Any] | JobSpec, args: tuple[Any, ...] = (), params: Any = None
    ) -> str:
        """``tgext.asyncjob``'s ``queue.perform(callable, args, params)``."""
        return self.call(_perform, self.runner, what, args, params or {})

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await func(*args)`` on the runner's loop, from a sync caller.

        Raises:
            RuntimeError: called on the runner's own loop, from a coroutine
                job: there, ``await`` the async API instead.
        """
        if self._thread.is_loop_thread():
            raise RuntimeError(
                "the asyncjob.tg functions are for sync code; in a coroutine job "
                "use the async API instead: await asyncjob.perform(...), "
                "await asyncjob.get_progress(...)"
            )
        return self._thread.call(func, *args)

    def get_progress(self, uid: str) -> Progress | None:
        """``(-1, None)``, ``(value, data)`` or ``None``: see :func:`asyncjob_get_progress`."""
        if self.tracker is not None:
            progress: Progress | None = self.tracker.get_progress(uid)
            return progress
        return self.call(self.runner.get_progress, uid)

    def status(self, uid: str) -> JobStatus:
        """The job's :class:`asyncjob.JobStatus`; see :meth:`asyncjob.Runner.status`."""
        return self.call(self.runner.status, uid)

    def wait(self, uid: str, timeout: float | None = None) -> Any:
        """Block until the job ends and return its result; see
        :meth:`asyncjob.Runner.wait` (``JobFailed``, ``JobCancelled``,
        ``TimeoutError``)."""
        return self.call(self.runner.wait, uid, timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the runner gracefully and end its thread."""
        self._thread.stop(timeout)


async def _perform(
    runner: Runner,
    what: Callable[..., Any] | JobSpec,
    args: tuple[Any, ...],
    params: dict[str, Any],
) -> str:
    return await runner.perform(what, *args, **params)


async def _perform_as(
    runner: Runner,
    job_id: str,
    what: Callable[..., Any] | JobSpec,
    args: tuple[Any, ...],
    params: dict[str, Any],
) -> str:
    return await runner.perform_as(job_id, what, *args, **params)


def start_async_worker(
    app_globals: Any = None,
    progress_tracker: ProgressTracker | None = None,
    *,
    after_commit: bool = False,
    dbsession: Any = None,
    **runner_options: Any,
) -> AsyncJobQueue:
    """Start the runner, once per process, and put it on the app globals.

    A second call returns the same handle. The handle is stored as
    ``app_globals.asyncjob_queue``; when ``app_globals`` is not given it is
    the ``self`` of the calling method (as in ``Globals.__init__``), or else
    ``tg.config['tg.app_globals']``.

    Args:
        app_globals: where to store the handle.
        progress_tracker: an object with ``tgext.asyncjob``'s tracker
            interface (``track``, ``remove``, ``set_progress``,
            ``get_progress``); progress is then also kept there, and read
            from there by :func:`asyncjob_get_progress`.
        after_commit: make :func:`asyncjob_perform` wait, inside a request's
            transaction, for that transaction to commit (see
            :func:`asyncjob_perform_after_commit`).
        dbsession: the scoped session that sync jobs use, removed after each
            job; by default ``tg.config['DBSession']`` when it is set.
        runner_options: passed to :class:`asyncjob.Runner` (``store=``,
            ``concurrency=`` (default 1, as in ``tgext.asyncjob``),
            ``sessionmaker=`` for coroutine jobs, ``grace_period=``…).
    """
    global _queue
    with _lock:
        if _queue is not None and _queue.pid == os.getpid() and _queue._thread.alive:
            if progress_tracker is not None or after_commit or dbsession or runner_options:
                logger.warning(
                    "start_async_worker() was called again with options: the worker "
                    "runs already, with the options of the first call"
                )
            _remember(app_globals, inspect.currentframe(), _queue)
            return _queue
        for option in ("sync_sessionmaker", "job_scope"):
            if option in runner_options:
                raise TypeError(
                    f"start_async_worker() takes no {option}=: sync jobs use the "
                    "application's scoped session, given as dbsession= (by default "
                    "tg.config['DBSession']), in a transaction of their own"
                )
        runner_options.setdefault("concurrency", DEFAULT_CONCURRENCY)
        sessions = Sessions(runner_options.pop("sessionmaker", None))
        hooks = [*runner_options.pop("hooks", ())]
        if progress_tracker is not None:
            hooks.append(TrackerHooks(progress_tracker))
        scope = TransactionScope(lambda: dbsession or _config_dbsession(), sessions)
        runner = Runner(job_scope=scope, hooks=hooks, **runner_options)
        loop_thread = LoopThread(runner)
        loop_thread.start()
        _queue = AsyncJobQueue(loop_thread, progress_tracker, after_commit)
        _remember(app_globals, inspect.currentframe(), _queue)
        return _queue


def stop_async_worker(timeout: float | None = None) -> None:
    """Stop the runner started by :func:`start_async_worker`, gracefully.

    Not needed at exit (the runner stops by itself when the main thread
    ends); for tests and for applications that reload.
    """
    global _queue
    with _lock:
        queue, _queue = _queue, None
    if queue is not None:
        queue.stop(timeout)


def _remember(app_globals: Any, frame: Any, queue: AsyncJobQueue) -> None:
    if app_globals is None:
        caller = frame.f_back if frame is not None else None
        app_globals = caller.f_locals.get("self") if caller is not None else None
    if app_globals is None:
        app_globals = _tg_config_get("tg.app_globals")
    if app_globals is not None:
        app_globals.asyncjob_queue = queue


def _tg_config_get(key: str) -> Any:
    tg = sys.modules.get("tg")  # a TurboGears2 application has imported it
    if tg is None:
        return None
    try:
        return tg.config.get(key)
    except (AttributeError, KeyError, TypeError):  # no configuration loaded yet
        return None


def _config_dbsession() -> Any:
    return _tg_config_get("DBSession")


def _get_queue() -> AsyncJobQueue:
    queue = _queue
    if queue is None:
        raise RunnerNotRunning(
            "asyncjob is not started in this process: call "
            "asyncjob.tg.start_async_worker() in your app globals, or "
            "asyncjob.tg.plugme(base_config) in config/app_cfg.py"
        )
    if queue.pid != os.getpid():
        # Threads do not survive fork(): the worker is in the parent only.
        raise RunnerNotRunning(
            "asyncjob was started in the parent of this process, before it forked, "
            "and its thread does not exist here: start it in each worker process, "
            "after the fork (for gunicorn --preload, in a post_fork hook)"
        )
    return queue


def asyncjob_perform(callable: Callable[..., Any] | JobSpec, *args: Any, **kwargs: Any) -> str:
    """Perform ``callable(*args, **kwargs)`` in the background; returns its id.

    ``callable`` may be :func:`asyncjob.using`'s spec, to perform the job
    later, before others, in a queue or once per key. Safe from any thread.
    With ``start_async_worker(after_commit=True)`` it behaves as
    :func:`asyncjob_perform_after_commit`.
    """
    queue = _get_queue()
    if queue.after_commit:
        return asyncjob_perform_after_commit(callable, *args, **kwargs)
    return queue.perform(callable, args, kwargs)


def asyncjob_perform_after_commit(
    callable: Callable[..., Any] | JobSpec, *args: Any, **kwargs: Any
) -> str:
    """Perform the job only once the current request's transaction commits.

    The id is returned at once. Inside a zope transaction, the job is handed
    to the runner when that transaction commits, and dropped if it aborts:
    until then, and for ever if dropped, the id reads as unknown
    (``asyncjob_get_progress`` gives ``None``). So the job always finds
    what the request wrote, with no need for :func:`asyncjob_timed_query`.
    With no transaction begun in this thread the job is performed at once.

    A ``unique`` key (see :func:`asyncjob.using`) is looked at when the
    transaction commits: if a job holds it then, nothing is recorded, and
    the id returned here stays unknown.
    """
    queue = _get_queue()
    if not _is_callable(callable):
        raise TypeError(f"asyncjob_perform needs a callable, not {type(callable).__name__}")
    txn = active_transaction()
    if txn is None:
        return queue.perform(callable, args, kwargs)
    job_id = new_job_id()

    def after_commit(committed: bool) -> None:
        if not committed:
            return
        try:
            queue.call(_perform_as, queue.runner, job_id, callable, args, kwargs)
        except Exception:  # noqa: BLE001 - the request has committed: log, not raise
            logger.exception(
                "job %s could not be performed after its transaction committed", job_id
            )

    txn.addAfterCommitHook(after_commit)
    return job_id


def _is_callable(obj: object) -> bool:
    # The builtin, which the seed's parameter name shadows in the functions.
    return callable(obj) or isinstance(obj, JobSpec)


def asyncjob_get_progress(uid: str) -> Progress | None:
    """``(-1, None)`` until the job reports, then ``(value, data)``; ``None``
    once it has ended or for an unknown id."""
    return _get_queue().get_progress(uid)


def asyncjob_set_progress(value: float, data: Any = None) -> None:
    """Inside a job: report its progress (:func:`asyncjob.set_progress`)."""
    set_progress(value, data)


def asyncjob_running_uid() -> str | None:
    """The running job's id, or ``None`` outside a job."""
    return current_job_id()


def plugme(configurator: Any, options: dict[str, Any] | None = None) -> dict[str, str]:
    """Start the worker when the TurboGears2 application's environment is loaded.

    In ``config/app_cfg.py``::

        import asyncjob.tg
        asyncjob.tg.plugme(base_config)

    ``options`` are :func:`start_async_worker`'s keyword arguments
    (``app_globals``, ``progress_tracker``, ``store``, ``concurrency``…).
    """
    from tg.configuration import milestones

    opts = dict(options or {})

    def start() -> None:
        # The milestone is process-wide: start only for the application
        # that this configurator makes.
        if _current_configurator() in (None, configurator):
            start_async_worker(**opts)

    milestones.environment_loaded.register(start)
    return {"appid": "asyncjob"}


def _current_configurator() -> Any:
    try:
        from tg.configurator import ApplicationConfigurator

        return ApplicationConfigurator.current()
    except Exception:  # noqa: BLE001 - no configurator in place (an old-style AppConfig)
        return None

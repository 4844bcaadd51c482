"""``AsyncJobBackend``: Django's task API on an asyncjob store.

Each Django task is registered with asyncjob under its module path (the
name Django gives it), as a function that runs it the way Django says a
task runs: the task's signals, its context, JSON results, and database
connections closed as Django's request cycle closes them. A worker thus
runs only the task functions it imported, found by ``asyncjob_worker`` in
each installed application's ``tasks`` module.

A task is enqueued through one of two paths:

* when the store lives in a database of Django's (``OPTIONS["database"]``,
  or ``"default"`` when the store's URL names the same database), through
  that database's connection, so that a task enqueued in
  ``transaction.atomic()`` is written, or not, with the rest of the
  transaction (by statements the store compiles once, without opening a
  connection of its own);
* otherwise, and always from async code, through a producer-only runner
  that this process keeps on an event loop of its own (the TurboGears2
  layer's loop thread): ``aenqueue`` and ``aget_result`` await it from the
  caller's loop, with no thread in between.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import os
import re
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connections
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from asyncjob._core import defaults, tracing
from asyncjob._core.errors import JobCancelled, JobNotFound
from asyncjob._core.models import Job, JobState, JobStatus, new_job_id
from asyncjob._core.registry import definition_of, job, lookup
from asyncjob._core.spec import using
from asyncjob._engine.context import current
from asyncjob._runner.loop_thread import LoopThread
from asyncjob._runner.runner import Runner
from asyncjob.stores.sql import SCHEMA_VERSION, SQLStore

__all__ = ("AsyncJobBackend", "AsyncJobTask")

#: What a job's state is in Django's words. A cancelled job failed, for
#: Django, which has no such state: its error names JobCancelled.
STATUS = {
    JobState.queued: TaskResultStatus.READY,
    JobState.running: TaskResultStatus.RUNNING,
    JobState.succeeded: TaskResultStatus.SUCCESSFUL,
    JobState.failed: TaskResultStatus.FAILED,
    JobState.cancelled: TaskResultStatus.FAILED,
}

#: The OPTIONS a backend takes beside ``store``: where the store keeps its
#: tables, the Django database it lives in, and the defaults of
#: ``asyncjob_worker`` (its command line overrides them).
WORKER_OPTIONS = {
    "concurrency": int,
    "threads": int,
    "lease": float,
    "poll_interval": float,
    "grace_period": float,
    "keep_finished": float,
}
OPTIONS = ("store", "table_prefix", "database", *WORKER_OPTIONS)

_CANCELLED = f"{JobCancelled.__module__.split('._')[0]}.{JobCancelled.__qualname__}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AsyncJobTask(Task):  # type: ignore[misc]  # Django is untyped
    """Django's :class:`~django.tasks.Task`, with what asyncjob adds, given
    to ``@task``: ``@task(retries=3, backoff=2.0, timeout=600)``.

    Attributes:
        retries: how many more attempts a failing task gets.
        backoff: seconds before the first retry, doubled at each one.
        timeout: seconds an attempt may run before it fails.
        concurrency: at most this many of the task run at once, across
            every worker.
    """

    retries: int = 0
    backoff: float = 1.0
    timeout: float | None = None
    concurrency: int | None = None


class AsyncJobBackend(BaseTaskBackend):  # type: ignore[misc]  # Django is untyped
    """A ``TASKS`` backend on an asyncjob store (see :mod:`asyncjob.django`).

    OPTIONS:
        store: the store's URL, as ``asyncjob worker --store`` takes it
            (required; SQLite or PostgreSQL, shared by the web processes
            and the workers).
        table_prefix: the prefix of the store's tables (default ``asyncjob_``).
        database: the alias of the Django database the store lives in, whose
            transactions enqueues join; by default ``"default"`` when the
            store's URL names that database, and none otherwise. ``None``
            turns it off.
        concurrency, threads, lease, poll_interval, grace_period,
        keep_finished: ``asyncjob_worker``'s defaults.
    """

    task_class = AsyncJobTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: Mapping[str, Any]) -> None:
        super().__init__(alias, params)
        unknown = sorted(set(self.options) - set(OPTIONS))
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS'] has {unknown}: it takes {list(OPTIONS)}"
            )
        store = self.options.get("store")
        if not isinstance(store, str) or "://" not in store:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['store'] must be the URL of a store that "
                f"workers share (sqlite+aiosqlite:///path or postgresql+asyncpg://...), "
                f"not {store!r}"
            )
        self.store_url = store
        self.table_prefix: str = self.options.get("table_prefix", defaults.TABLE_PREFIX)
        self.worker_options: dict[str, Any] = {}
        for name, kind in WORKER_OPTIONS.items():
            if name in self.options:
                try:
                    self.worker_options[name] = kind(self.options[name])
                except (TypeError, ValueError):
                    raise ImproperlyConfigured(
                        f"TASKS[{alias!r}]['OPTIONS'][{name!r}] must be a number, "
                        f"not {self.options[name]!r}"
                    ) from None
        self.database = self._database(self.options.get("database", ...))
        self._lock = threading.Lock()
        self._thread: LoopThread | None = None
        self._pid = os.getpid()
        self._writing: tuple[SQLStore, int] | None = None

    def _database(self, given: object) -> str | None:
        """The Django database whose transactions enqueues join, if any."""
        if given is None:
            return None
        if given is ...:
            default = connections.settings.get("default")
            return "default" if default and _same_database(default, self.store_url) else None
        if not isinstance(given, str) or given not in connections.settings:
            raise ImproperlyConfigured(
                f"TASKS[{self.alias!r}]['OPTIONS']['database'] must name a database of "
                f"DATABASES ({sorted(connections.settings)}), not {given!r}"
            )
        if not _same_database(connections.settings[given], self.store_url):
            raise ImproperlyConfigured(
                f"TASKS[{self.alias!r}]['OPTIONS']['database'] is {given!r}, which is not "
                f"the database of the store {self.store_url!r}: a task cannot be written "
                "in its transactions"
            )
        return given

    # -- tasks -----------------------------------------------------------------

    def validate_task(self, task: Task) -> None:
        """Django's checks, then the task registered with asyncjob under its
        module path (a worker runs only the tasks it registered so)."""
        super().validate_task(task)
        name = task.module_path
        known = lookup(name)
        if known is not None and getattr(known.func, "task_func", None) is task.func:
            return
        job(
            name=name,
            retries=getattr(task, "retries", 0),
            backoff=getattr(task, "backoff", 1.0),
            timeout=getattr(task, "timeout", None),
            concurrency=getattr(task, "concurrency", None),
        )(_runs(task))

    # -- enqueue -----------------------------------------------------------------

    def enqueue(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskResult:
        self.validate_task(task)
        spec = self._spec(task)
        if self.database is not None:
            job_id = self._write_in(self.database, spec, args, kwargs)
        else:
            thread = self._loop_thread()
            job_id = thread.call(_perform, thread.runner, spec, tuple(args), dict(kwargs))
        return self._enqueued(task, job_id, args, kwargs)

    async def aenqueue(
        self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> TaskResult:
        self.validate_task(task)
        runner = await self._arunner()
        job_id = await runner.perform(self._spec(task), *args, **kwargs)
        return self._enqueued(task, job_id, args, kwargs)

    def _spec(self, task: Task) -> Any:
        definition = lookup(task.module_path)
        assert definition is not None  # validate_task registered it
        return using(
            definition.func, priority=task.priority, queue=task.queue_name, at=task.run_after
        )

    def _write_in(
        self, database: str, spec: Any, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> str:
        """Write the job through Django's connection, in its transaction
        (or committed at once, in autocommit)."""
        store = self._writer(database)
        definition = definition_of(spec.func)
        assert definition is not None
        new = tracing.with_context(
            Job(
                new_job_id(),
                definition.name,
                spec.func,
                tuple(args),
                dict(kwargs),
                inspect.iscoroutinefunction(spec.func),
                timezone.now().timestamp(),
                True,
                options=spec.options(definition.queue, definition.priority),
            )
        )
        insert, params, _, _ = store.enqueue_sql(new)
        with connections[database].cursor() as cursor:
            cursor.execute(insert, params)
            cursor.fetchone()
        return new.id

    def _enqueued(
        self, task: Task, job_id: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> TaskResult:
        result = TaskResult(
            task=task,
            id=job_id,
            status=TaskResultStatus.READY,
            enqueued_at=timezone.now(),
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    # -- results -----------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult:
        runner = self._runner()
        return self._result(self._loop_thread().call(_status, runner, result_id), result_id)

    async def aget_result(self, result_id: str) -> TaskResult:
        runner = await self._arunner()
        return self._result(await _status(runner, result_id), result_id)

    def _result(self, status: JobStatus | None, result_id: str) -> TaskResult:
        if status is None:
            raise TaskResultDoesNotExist(result_id)
        try:
            task = import_string(status.name)
        except ImportError:
            task = None
        if not isinstance(task, Task):
            raise TaskResultDoesNotExist(
                f"{result_id} is a job of asyncjob's ({status.name}), not a Django task"
            )
        return result_of(task, status, self.alias)

    # -- the producer -----------------------------------------------------------

    def close(self) -> None:
        """Stop this process's producer runner, gracefully (it is stopped at
        interpreter exit otherwise); the next call starts it again."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and self._pid == os.getpid():
            thread.stop()

    def _writer(self, database: str) -> SQLStore:
        """The store whose statements ``enqueue`` runs through Django's
        connection, never opened: a web process that only enqueues holds no
        loop, thread or pool of asyncjob's (the producer's runner starts at
        the first ``get_result`` or ``aenqueue``).

        Once per process, one read of the store's schema version makes sure
        the statements fit the tables; where they are missing or of another
        version, the producer's runner starts and makes or migrates them (or
        says why it cannot) as any runner does.
        """
        with self._lock:
            if self._writing is None or self._writing[1] != os.getpid():
                store = SQLStore(self.store_url, table_prefix=self.table_prefix)
                connection = connections[database]
                if _schema_version(connection, store) != SCHEMA_VERSION:
                    if connection.in_atomic_block and connection.vendor == "sqlite":
                        # The runner's own connection would wait for this
                        # transaction's hold on the file, which waits for
                        # this enqueue: 30 s, then a bare TimeoutError.
                        raise RuntimeError(
                            f"the tables of the store {self.store_url!r} are not made yet "
                            f"(or are of an older version), and cannot be made inside "
                            f"this transaction, which holds the SQLite database: start "
                            f"`python manage.py asyncjob_worker` once (it makes them), or "
                            f"enqueue once outside a transaction"
                        )
                    self._loop_thread_locked()
                self._writing = (store, os.getpid())
            return self._writing[0]

    def _runner(self) -> Runner:
        return self._loop_thread().runner

    async def _arunner(self) -> Runner:
        if self._thread is None:  # started once per process: a blocking start
            await asyncio.to_thread(self._loop_thread)
        return self._runner()

    def _loop_thread(self) -> LoopThread:
        """This process's producer-only runner, started at first use (it
        also makes the store's tables, once); again in a forked child."""
        with self._lock:
            return self._loop_thread_locked()

    def _loop_thread_locked(self) -> LoopThread:
        thread = self._thread
        if thread is None or not thread.alive or self._pid != os.getpid():
            store = SQLStore(self.store_url, table_prefix=self.table_prefix)
            thread = LoopThread(Runner(store, producer_only=True))
            thread.start()
            self._thread, self._pid = thread, os.getpid()
        return thread


def _schema_version(connection: Any, store: SQLStore) -> int | None:
    """The schema version of the store's tables, read through a Django
    connection; ``None`` where they do not exist (looked up first: a failed
    statement would spoil the caller's transaction on PostgreSQL)."""
    meta = store.tables.meta
    if meta.name not in connection.introspection.table_names():
        return None
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT value FROM {meta.name} WHERE key = %s", ["schema_version"])
        row = cursor.fetchone()
    try:
        return int(row[0]) if row else None
    except ValueError:
        return None


async def _perform(runner: Runner, spec: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return await runner.perform(spec, *args, **kwargs)


async def _status(runner: Runner, job_id: str) -> JobStatus | None:
    try:
        return await runner.status(job_id)
    except JobNotFound:
        return None


def result_of(task: Task, status: JobStatus, backend: str) -> TaskResult:
    """A job's status as Django's ``TaskResult``: ``worker_ids`` holds the
    worker of its last attempt once per attempt (asyncjob keeps the last
    one only), so that ``attempts`` counts as Django counts it."""
    result = TaskResult(
        task=task,
        id=status.id,
        status=STATUS[status.state],
        enqueued_at=status.enqueued_at,
        started_at=status.started_at,
        finished_at=status.finished_at,
        last_attempted_at=status.started_at,
        args=list(status.args),
        kwargs=dict(status.kwargs),
        backend=backend,
        errors=errors_of(status),
        worker_ids=[status.worker or ""] * status.attempts,
    )
    if status.state is JobState.succeeded:
        object.__setattr__(result, "_return_value", status.result)
    return result


def errors_of(status: JobStatus) -> list[TaskError]:
    """Each failed attempt's error, oldest first: earlier attempts' with
    their message only (asyncjob keeps the last traceback)."""
    errors = [TaskError(exception_class_path=_path_of(e), traceback=e) for e in status.errors]
    if status.state is JobState.failed and status.error is not None:
        errors.append(
            TaskError(
                exception_class_path=_path_of(status.error),
                traceback=status.traceback or status.error,
            )
        )
    elif status.state is JobState.cancelled:
        errors.append(
            TaskError(exception_class_path=_CANCELLED, traceback=status.error or "cancelled")
        )
    return errors


def _path_of(error: str) -> str:
    """The dotted path of the exception class an error's text names
    (``ValueError: ...`` is ``builtins.ValueError``): its last line, as
    ``traceback.format_exception_only`` writes it (a ``SyntaxError``'s
    first lines show the code). Text that names none (a task the worker
    could not run: not registered, its arguments unreadable) is a plain
    ``Exception``'s: Django imports the path, and what came before the
    first ':' of such text could not be."""
    lines = error.strip().splitlines()
    named = _NAMED.fullmatch(lines[-1].partition(":")[0].strip()) if lines else None
    if named is None:
        return "builtins.Exception"
    kind = named.group()
    return kind if "." in kind else f"builtins.{kind}"


#: What names an exception class, as ``format_exception_only`` writes it.
_NAMED = re.compile(r"[A-Za-z_][\w.]*")


# -- running a task in a worker ----------------------------------------------------


def _runs(task: Task) -> Callable[..., Any]:
    """The function asyncjob runs for ``task``: Django's signals around the
    task's own function, its context if it takes one, and its result made
    JSON as Django makes it; a sync task's database connections closed
    before and after, as Django's request cycle does, so that a long-lived
    worker never hands a task a connection the server has dropped."""
    run = _runs_async(task) if inspect.iscoroutinefunction(task.func) else _runs_sync(task)
    func = task.func
    run.__module__ = func.__module__
    run.__name__ = run.__qualname__ = func.__qualname__
    run.__doc__ = func.__doc__
    run.task_func = func  # type: ignore[attr-defined]
    return run


def _runs_async(task: Task) -> Callable[..., Any]:
    func = task.func

    async def run(*args: Any, **kwargs: Any) -> Any:
        result = _started(task)
        try:
            if task.takes_context:
                value = await func(TaskContext(task_result=result), *args, **kwargs)
            else:
                value = await func(*args, **kwargs)
        except BaseException as exc:
            _finished(result, exc)
            raise
        return _finished(result, None, value)

    return run


def _runs_sync(task: Task) -> Callable[..., Any]:
    func = task.func

    def run(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            result = _started(task)
            try:
                if task.takes_context:
                    value = func(TaskContext(task_result=result), *args, **kwargs)
                else:
                    value = func(*args, **kwargs)
            except BaseException as exc:
                _finished(result, exc)
                raise
            return _finished(result, None, value)
        finally:
            close_old_connections()

    return run


def _started(task: Task) -> TaskResult:
    """The running task's result, as Django's signals and context give it;
    ``task_started`` sent."""
    ctx = current.get()
    assert ctx is not None
    running = ctx.job
    now = timezone.now()
    worker = ctx.worker
    result = TaskResult(
        task=task,
        id=running.id,
        status=TaskResultStatus.RUNNING,
        enqueued_at=datetime.fromtimestamp(running.enqueued_at, tz=now.tzinfo),
        started_at=now,
        finished_at=None,
        last_attempted_at=now,
        args=list(running.args),
        kwargs=dict(running.kwargs),
        backend=task.backend,
        errors=[],
        worker_ids=[worker] * running.attempt,
    )
    task_started.send(AsyncJobBackend, task_result=result)
    return result


def _finished(result: TaskResult, error: BaseException | None, value: Any = None) -> Any:
    """``task_finished`` sent for this attempt; the value made JSON as
    Django's own database backend keeps it (a key 1 becomes "1", an
    ``IntEnum`` its int).

    Raises:
        TypeError, ValueError: the value is no JSON (an object, NaN): the
            task fails, and the signal says so (it said SUCCESSFUL, or
            nothing at all, and the result then read FAILED).
    """
    object.__setattr__(result, "finished_at", timezone.now())
    refused: Exception | None = None
    if error is None:
        try:
            value = json.loads(json.dumps(normalize_json(value), allow_nan=False))
        except (TypeError, ValueError) as exc:
            error = refused = exc
    running = current.get()
    if error is None and running is not None and running.timed_out:
        # Past its timeout: the worker records it failed, whatever it returned.
        error = TimeoutError(f"{result.task.module_path} ran longer than its timeout")
    if error is None:
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(result, "_return_value", value)
    else:
        kind = type(error)
        path = (
            _CANCELLED
            if isinstance(error, asyncio.CancelledError | JobCancelled)
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        told = "".join(traceback.format_exception(error))
        result.errors.append(TaskError(exception_class_path=path, traceback=told))
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
    task_finished.send(AsyncJobBackend, task_result=result)
    if refused is not None:
        raise refused
    return value


def _same_database(settings: Mapping[str, Any], url: str) -> bool:
    """True when a Django database's settings and a store's URL name the
    same database."""
    from sqlalchemy.engine import make_url

    store = make_url(url)
    engine = str(settings.get("ENGINE", ""))
    if engine.endswith("sqlite3"):
        name = str(settings.get("NAME") or "")
        return (
            store.get_backend_name() == "sqlite"
            and bool(store.database)
            and (os.path.realpath(name) == os.path.realpath(store.database or ""))
        )
    if engine.endswith("postgresql"):
        return store.get_backend_name() == "postgresql" and (
            (settings.get("HOST") or "localhost", int(settings.get("PORT") or 5432),
             settings.get("NAME"), settings.get("USER") or None)
            == (store.host or "localhost", store.port or 5432, store.database, store.username)
        )  # fmt: skip
    return False

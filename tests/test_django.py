"""asyncjob.django: a real Django 6 project (tests/django_project) whose
tasks run in real ``manage.py asyncjob_worker`` processes, on SQLite (the
project's own database file) and on PostgreSQL; its views driven through
Django's test client.

Django is set up once for the module, as ``manage.py`` would; the tests run
under Python 3.12 or newer (Django 6's own floor): ``nox -s django``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent / "django_project"
ROOT = HERE.parent.parent
PREFIX = f"dj{os.getpid()}_"
os.environ["ASYNCJOB_DJANGO_DIR"] = tempfile.mkdtemp(prefix="asyncjob-django-")
os.environ["ASYNCJOB_DJANGO_PREFIX"] = PREFIX
os.environ["DJANGO_SETTINGS_MODULE"] = "djproject.settings"
sys.path.insert(0, str(HERE))

import django  # noqa: E402

django.setup()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.db import transaction  # noqa: E402
from django.tasks import TaskResultStatus, task, task_backends  # noqa: E402
from django.tasks.base import TaskError  # noqa: E402
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist  # noqa: E402
from django.tasks.signals import task_enqueued, task_finished, task_started  # noqa: E402
from django.test import Client  # noqa: E402
from shop import tasks  # noqa: E402

import asyncjob  # noqa: E402
from asyncjob.django import AsyncJobBackend  # noqa: E402
from asyncjob.django._backend import _path_of  # noqa: E402

from .conftest import TIMEOUT  # noqa: E402
from .processes import Workers  # noqa: E402

BACKENDS = ["default", "pg"]


@pytest.fixture(scope="module", autouse=True)
def tables() -> Iterator[None]:
    """The PostgreSQL tables of this run, dropped after it (SQLite's die
    with the temporary directory); the backends' runners are stopped
    first, so that the tests after these find no runner running."""
    yield
    for alias in BACKENDS:
        task_backends[alias].close()
    import psycopg

    from .conftest import PG_HOST

    with psycopg.connect(PG_HOST) as conn:
        for statement in dropped(PREFIX):
            conn.execute(statement)


def dropped(prefix: str) -> list[str]:
    """What drops a store's tables on PostgreSQL, and the functions of its
    triggers, which dropping the tables leaves behind."""
    from asyncjob.stores.sql._postgres import ANNOUNCED_CHANGES, trigger_function
    from asyncjob.stores.sql._schema import Tables

    made = Tables(prefix)
    tables = [f"DROP TABLE IF EXISTS {name} CASCADE" for name in made.metadata.tables]
    functions = [
        f"DROP FUNCTION IF EXISTS {trigger_function(made.jobs.name, change)}()"
        for change in ANNOUNCED_CHANGES
    ]
    return tables + functions


def start(workers: Workers, backend: str, *options: str) -> subprocess.Popen[str]:
    """One more ``python manage.py asyncjob_worker`` process."""
    command = [sys.executable, "manage.py", "asyncjob_worker", "--backend", backend]
    return workers.spawn([*command, *options], cwd=HERE)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Workers]:
    made = Workers(tmp_path)
    yield made
    made.stop_all()
    print(made.output())


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    alias: str = request.param
    return alias


def ended(alias: str, result_id: str) -> Any:
    """The task's result once it has ended (bounded by TIMEOUT)."""
    backend = task_backends[alias]
    with contextlib.suppress(asyncjob.JobFailed, asyncjob.JobCancelled):
        backend._loop_thread().call(backend._runner().wait, result_id, TIMEOUT)
    return backend.get_result(result_id)


# -- enqueue, run, get_result --------------------------------------------------------


def test_a_view_enqueues_and_a_worker_runs_it(backend: str, worker: Workers) -> None:
    """Through Django's test client: a view enqueues, ``asyncjob_worker`` in
    another process runs the task (its progress, the database), and the
    result is read back from here."""
    process = start(worker, backend, "--queue", "emails", "--queue", "default")
    answer = Client().get(f"/orders/7/receipt?backend={backend}")
    assert answer.status_code == 202
    result_id = answer.json()["id"]
    result = ended(backend, result_id)
    assert result.status == TaskResultStatus.SUCCESSFUL, worker.output()
    assert result.return_value == {"order": 7, "to": "ada@example.com", "db": 1,
                                   "pid": process.pid}  # fmt: skip
    assert (result.args, result.kwargs, result.attempts) == ([7, "ada@example.com"], {}, 1)
    assert result.task.module_path == "shop.tasks.send_receipt"
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.worker_ids[0].split(":")[1] == str(process.pid)
    shown = Client().get(f"/jobs/{result_id}?backend={backend}").json()
    assert shown == {"status": "SUCCESSFUL", "attempts": 1,
                     "return_value": result.return_value}  # fmt: skip
    runner = task_backends[backend]._runner()
    status = task_backends[backend]._loop_thread().call(runner.status, result_id)
    assert (status.progress, status.data, status.queue) == (100, "sent", "emails")


async def test_aenqueue_and_aget_result_from_async_code(backend: str, worker: Workers) -> None:
    """The async API, from an async view and from async code, with no thread:
    a coroutine task runs on the worker's loop; its progress is readable
    with asyncjob.get_progress in this process."""
    start(worker, backend)
    answer = await asyncio.to_thread(Client().get, f"/orders/8/receipt-async?backend={backend}")
    assert answer.status_code == 202
    resize = tasks.resize.using(backend=backend)
    result = await resize.aenqueue(640)
    assert result.status == TaskResultStatus.READY
    runner = await task_backends[backend]._arunner()
    assert await runner.wait(result.id, timeout=TIMEOUT) == [640, 320]
    found = await resize.aget_result(result.id)
    assert (found.status, found.return_value) == (TaskResultStatus.SUCCESSFUL, [640, 320])
    await runner.wait(answer.json()["id"], timeout=TIMEOUT)
    assert await runner.get_progress(answer.json()["id"]) is None  # ended: as tgext.asyncjob
    assert (await runner.status(answer.json()["id"])).progress == 100


def test_a_failure_gives_djangos_errors(backend: str, worker: Workers) -> None:
    start(worker, backend)
    result = ended(backend, tasks.charge.using(backend=backend).enqueue(42).id)
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class_path == "shop.tasks.PaymentDeclined"
    assert error.exception_class is tasks.PaymentDeclined
    assert "card declined for 42" in error.traceback
    assert "Traceback (most recent call last)" in error.traceback
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018 - Django's property raises


def test_a_retried_task_knows_its_attempt(backend: str, worker: Workers, tmp_path: Path) -> None:
    """``@task(retries=1)``: the first attempt fails, the second succeeds and
    reads its attempt from the task's context."""
    start(worker, backend)
    marker = str(tmp_path / "marker")
    result = ended(backend, tasks.flaky.using(backend=backend).enqueue(marker).id)
    assert result.status == TaskResultStatus.SUCCESSFUL, result.errors
    assert (result.return_value, result.attempts) == (2, 2)
    assert [e.exception_class_path for e in result.errors] == ["builtins.ConnectionError"]


def test_priorities_and_delays(backend: str, worker: Workers, tmp_path: Path) -> None:
    """Queued while no worker runs: the higher priority runs first; a task
    deferred to tomorrow waits, READY."""
    into = str(tmp_path / "order")
    record = tasks.record.using(backend=backend)
    later = record.using(run_after=datetime.now(UTC) + timedelta(days=1)).enqueue("later", into)
    low = record.enqueue("low", into)
    high = record.using(priority=50).enqueue("high", into)
    start(worker, backend, "--concurrency", "1")
    for result in (low, high):
        assert ended(backend, result.id).status == TaskResultStatus.SUCCESSFUL
    assert Path(into).read_text().split() == ["high", "low"]
    assert task_backends[backend].get_result(later.id).status == TaskResultStatus.READY
    runner = task_backends[backend]._runner()
    status = task_backends[backend]._loop_thread().call(runner.status, later.id)
    assert status.run_after is not None
    assert status.run_after > datetime.now(UTC)


def test_sigterm_lets_the_running_task_finish_and_hands_back_the_rest(
    backend: str, worker: Workers, tmp_path: Path
) -> None:
    gate = str(tmp_path / "gate")
    waits = tasks.wait_for.using(backend=backend)
    first = waits.enqueue(gate, TIMEOUT)
    process = start(worker, backend, "--concurrency", "1", "--grace-period", str(TIMEOUT))
    runner = task_backends[backend]._runner()
    task_backends[backend]._loop_thread().call(_until_running, runner, first.id)
    second = waits.enqueue(gate, TIMEOUT)
    process.send_signal(signal.SIGTERM)
    Path(gate).touch()
    assert process.wait(TIMEOUT) == 0, worker.output()
    assert ended(backend, first.id).return_value == "opened"
    assert task_backends[backend].get_result(second.id).status == TaskResultStatus.READY


def test_a_task_reports_the_worker_running_it_even_as_its_runner_stops(
    backend: str, tmp_path: Path
) -> None:
    """The worker a task's result names comes from the job running it, not
    from the process's current runner: a task whose thread started just as
    its runner began to stop (no longer current) failed for that look-up."""
    from asyncjob._engine.context import current
    from asyncjob._engine.job_context import JobContext
    from asyncjob.django._backend import _runs_sync
    from asyncjob.stores import Job

    record = tasks.record.using(backend=backend)
    job = Job(asyncjob.new_job_id(), "shop.tasks.record", record.func, (), {}, False, 0.0)
    heard: list[list[str]] = []

    def started(sender: Any, task_result: Any, **_: Any) -> None:
        heard.append(task_result.worker_ids)

    task_started.connect(started)
    token = current.set(JobContext(job, lambda *_: None, "worker-7"))
    try:
        assert _runs_sync(record)("only", str(tmp_path / "order")) == "only"
    finally:
        current.reset(token)
        task_started.disconnect(started)
    assert heard == [["worker-7"]]


async def _until_running(runner: asyncjob.Runner, job_id: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        async for status in runner.watch(job_id):
            if status.state is asyncjob.JobState.running:
                return


# -- transactions --------------------------------------------------------------


def test_a_task_enqueued_in_a_rolled_back_transaction_never_exists(backend: str) -> None:
    """The store is in the project's database: an enqueue inside atomic() is
    written in its transaction, and rolled back with it."""
    using = "default" if backend == "default" else "pg"
    record = tasks.record.using(backend=backend)
    lost: list[str] = []

    def request_that_fails() -> None:
        with transaction.atomic(using=using):
            lost.append(record.enqueue("never", "/dev/null").id)
            raise RuntimeError("the request failed")

    with pytest.raises(RuntimeError, match="the request failed"):
        request_that_fails()
    with pytest.raises(TaskResultDoesNotExist):
        task_backends[backend].get_result(lost[0])
    with transaction.atomic(using=using):
        kept = record.enqueue("kept", "/dev/null")
    assert task_backends[backend].get_result(kept.id).status == TaskResultStatus.READY


def test_a_first_enqueue_in_a_transaction_on_sqlite_says_what_to_do() -> None:
    """The store's tables not made yet, on SQLite, inside atomic(): the
    enqueue says at once how to make them (the runner that would have made
    them waited for the transaction's hold on the file, which waited for
    it: 30 s, then a bare TimeoutError), and nothing is written. Made, the
    same enqueue is written in the transaction."""
    default = task_backends["default"]
    fresh = AsyncJobBackend(
        "fresh",
        {"OPTIONS": {"store": default.store_url, "table_prefix": f"fresh{os.getpid()}_"}},
    )
    try:
        refused = pytest.raises(RuntimeError, match="cannot be made inside this transaction")
        with refused, transaction.atomic():
            fresh.enqueue(tasks.record, ("early", "/dev/null"), {})
        fresh._loop_thread()  # what asyncjob_worker, or an enqueue outside, does: the tables
        with transaction.atomic():
            kept = fresh.enqueue(tasks.record, ("kept", "/dev/null"), {})
        assert fresh.get_result(kept.id).status == TaskResultStatus.READY
    finally:
        fresh.close()


def test_a_view_that_fails_in_its_transaction_leaves_no_task(worker: Workers) -> None:
    """The guide's view, through the test client: its task is written
    with the request's transaction, or not at all."""
    from shop.views import PaymentDeclined

    backend = task_backends["default"]
    before = backend._loop_thread().call(backend._runner().jobs)
    with pytest.raises(PaymentDeclined):
        Client().get("/orders/9/place?card=declined")
    assert backend._loop_thread().call(backend._runner().jobs) == before
    placed = Client().get("/orders/9/place")
    assert placed.status_code == 201
    start(worker, "default")
    assert ended("default", placed.json()["id"]).return_value["order"] == 9


def test_on_commit_enqueues_after_the_commit(backend: str) -> None:
    using = "default" if backend == "default" else "pg"
    record = tasks.record.using(backend=backend)
    enqueued: list[str] = []
    with transaction.atomic(using=using):
        transaction.on_commit(
            lambda: enqueued.append(record.enqueue("after", "/dev/null").id), using=using
        )
        assert enqueued == []
    assert task_backends[backend].get_result(enqueued[0]).status == TaskResultStatus.READY


# -- signals, in a worker of this process ------------------------------------------------


async def test_djangos_signals_and_context(tmp_path: Path) -> None:
    """task_enqueued where it is enqueued; task_started and task_finished
    where it runs (here, a runner of this process on the store)."""
    heard: list[tuple[str, str, str]] = []

    def listen(name: str) -> Any:
        def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
            heard.append((name, task_result.id, str(task_result.status)))

        return receiver

    named = ((task_enqueued, "enqueued"), (task_started, "started"), (task_finished, "finished"))
    receivers = {signal: listen(name) for signal, name in named}
    for signal_, receiver in receivers.items():
        signal_.connect(receiver)
    try:
        backend = task_backends["pg"]
        result = await tasks.resize.using(backend="pg").aenqueue(10)
        async with asyncjob.Runner(
            asyncjob.stores.sql.SQLStore(backend.store_url, table_prefix=backend.table_prefix)
        ) as runner:
            assert await runner.wait(result.id, timeout=TIMEOUT) == [10, 5]
    finally:
        for signal_, receiver in receivers.items():
            signal_.disconnect(receiver)
    assert [h for h in heard if h[1] == result.id] == [
        ("enqueued", result.id, "READY"),
        ("started", result.id, "RUNNING"),
        ("finished", result.id, "SUCCESSFUL"),
    ]


def test_a_worker_runs_tasks_bound_to_another_backend(worker: Workers) -> None:
    """The project's default backend is Django's own: its tasks are bound
    to it, and register themselves through it, not with asyncjob.
    ``asyncjob_worker --backend pg`` registers them itself, and runs one
    enqueued with ``.using(backend="pg")`` (each failed, "not registered")."""
    from plain import tasks as plain

    start(worker, "pg", "--settings", "djproject.settings_other_default")
    result = plain.double.using(backend="pg").enqueue(21)
    final = ended("pg", result.id)
    assert (final.status.name, final.return_value) == ("SUCCESSFUL", 42)


def test_an_errors_class_path_can_always_be_imported() -> None:
    """Django imports ``exception_class_path``: it is read from the error's
    last line (a SyntaxError's first lines show the code, and what came
    before their first ':' was taken for a class), and text that names no
    class (a task the worker could not run) is an Exception's."""
    with pytest.raises(SyntaxError) as raised:
        compile("x y", "<expr>", "eval")
    syntax = "".join(traceback.format_exception_only(raised.value)).strip()
    assert "\n" in syntax
    declined = "".join(traceback.format_exception_only(tasks.PaymentDeclined("no"))).strip()
    for error, path in [
        (syntax, "builtins.SyntaxError"),
        (declined, "shop.tasks.PaymentDeclined"),
        ("ValueError: bad input", "builtins.ValueError"),
        ("the job 'plain.tasks.x' is not registered in this worker", "builtins.Exception"),
    ]:
        found = TaskError(exception_class_path=_path_of(error), traceback=error)
        assert found.exception_class_path == path
        assert issubclass(found.exception_class, BaseException)


@pytest.mark.parametrize(
    ("kind", "status", "value"),
    [("int keys", "SUCCESSFUL", {"1": "a"}), ("nan", "FAILED", None), ("object", "FAILED", None)],
)
async def test_a_tasks_return_value_is_json_as_django_keeps_it(
    kind: str, status: str, value: Any
) -> None:
    """A key 1 comes back "1", as Django's database backend keeps it (the
    task failed); NaN and an object fail the task, and task_finished says
    so (it said SUCCESSFUL, or nothing, and the result read FAILED)."""
    finished: list[str] = []

    def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
        finished.append(str(task_result.status))

    task_finished.connect(receiver)
    try:
        backend = task_backends["pg"]
        result = await tasks.returns.using(backend="pg").aenqueue(kind)
        async with asyncjob.Runner(
            asyncjob.stores.sql.SQLStore(backend.store_url, table_prefix=backend.table_prefix)
        ) as runner:
            with contextlib.suppress(asyncjob.JobFailed):
                await runner.wait(result.id, timeout=TIMEOUT)
    finally:
        task_finished.disconnect(receiver)
    final = await backend.aget_result(result.id)
    assert (finished, final.status.name) == ([status], status)
    if status == "SUCCESSFUL":
        assert final.return_value == value


# -- bad input -------------------------------------------------------------------------


def test_a_closed_backend_starts_again_when_used() -> None:
    backend = task_backends["default"]
    before = backend._runner()
    backend.close()
    assert not before.running
    result = tasks.record.enqueue("again", "/dev/null")
    assert backend.get_result(result.id).status == TaskResultStatus.READY
    assert backend._runner() is not before


def test_enqueue_through_djangos_database_starts_no_runner(backend: str) -> None:
    """A web process that only enqueues keeps no loop, thread or pool of
    asyncjob's. The first enqueue on a database without the store's tables
    makes them (a runner starts for it); another process's first enqueue
    reads the schema version once and writes through Django alone."""
    from django.conf import settings

    given = settings.TASKS[backend]
    prefix = f"fresh{uuid.uuid4().hex[:8]}_"
    params = {**given, "OPTIONS": {**given["OPTIONS"], "table_prefix": prefix}}
    first, second = AsyncJobBackend(backend, params), AsyncJobBackend(backend, params)
    try:
        made = first.enqueue(tasks.record, ["made", "/dev/null"], {})
        assert first._thread is not None  # it made the tables
        with transaction.atomic(using=first.database):
            written = second.enqueue(tasks.record, ["written", "/dev/null"], {})
            assert second._thread is None
        assert second._thread is None
        for result in (made, written):  # get_result starts the runner
            assert second.get_result(result.id).status == TaskResultStatus.READY
    finally:
        first.close()
        second.close()
        if backend == "pg":
            from django.db import connections

            with connections["pg"].cursor() as cursor:
                for statement in dropped(prefix):
                    cursor.execute(statement)


def test_bad_tasks_and_arguments_get_djangos_errors() -> None:
    def nested() -> None: ...

    with pytest.raises(InvalidTask, match="module level"):
        task(nested)
    with pytest.raises(InvalidTask, match="Queue 'nowhere' is not valid"):
        tasks.record.using(queue_name="nowhere")
    with pytest.raises(InvalidTask, match="aware"):
        tasks.record.using(run_after=datetime(2030, 1, 1))
    with pytest.raises(InvalidTask, match="priority"):
        tasks.record.using(priority=101)
    with pytest.raises(TypeError, match="JSON"):
        tasks.record.enqueue(object(), "/dev/null")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.record.get_result(uuid.uuid4().hex)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({}, "must be the URL of a store"),
        ({"store": "memory://x", "concurency": 3}, "it takes"),
        ({"store": "sqlite+aiosqlite:////tmp/x.db", "lease": "long"}, "must be a number"),
        ({"store": "sqlite+aiosqlite:////tmp/x.db", "database": "nope"}, "must name a database"),
        ({"store": "sqlite+aiosqlite:////tmp/x.db", "database": "pg"}, "is not the database"),
    ],
)
def test_bad_options_are_improperly_configured(options: dict[str, Any], said: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=said):
        AsyncJobBackend("bad", {"OPTIONS": options})


def test_the_worker_command_refuses_what_it_cannot_serve() -> None:
    for options, said in (
        (["--backend", "nope"], "no TASKS backend 'nope'"),
        (["--queue", "nowhere"], "unknown queue ['nowhere']"),
    ):
        done = subprocess.run(
            [sys.executable, "manage.py", "asyncjob_worker", *options],
            cwd=HERE, capture_output=True, text=True, timeout=TIMEOUT * 3,
        )  # fmt: skip
        assert done.returncode != 0
        assert said in done.stderr, done.stderr

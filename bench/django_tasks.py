"""Django tasks: asyncjob's ``django.tasks`` backend against django-tasks-db's
reference database backend (``manage.py db_worker``), on one PostgreSQL
database, in one run.

Usage::

    python bench/django_tasks.py [--quick] [--repeat N] [--jobs N] [--samples N]
                                 [--pg URL] [--json PATH] [--markdown]

It needs Python 3.12 or newer, Django 6, django-tasks-db and psycopg. The
project is ``bench/django_bench``: both backends in ``TASKS``, on a database
the benchmark creates on the server (``bench_django_...``) and drops at the
end. Each repetition measures, for asyncjob and for the baseline one after
the other:

* enqueue throughput: ``task.enqueue()`` of N no-op tasks, one by one, from
  this (sync) process, in autocommit, then inside one ``transaction.atomic()``;
  and ``await task.aenqueue()``, 100 at a time (async views); no worker runs;
* drain throughput: one worker process (``asyncjob_worker --concurrency 10``;
  ``db_worker`` with its defaults, then with its best settings), warmed up by
  a first task; N no-op tasks enqueued one by one in autocommit; tasks per
  second from just before the first enqueue to the last task's
  ``finished_at`` as the worker wrote it; and the backlog: N enqueued in one
  ``transaction.atomic()``, from just before its commit to the last finish;
* enqueue->start latency: on the idle worker, one task at a time, the time
  from just before ``enqueue()`` to the task's first line (``time.time()``,
  sent back over UDP), after a pause drawn at random over the worker's
  polling interval so that tasks arrive at any point of its cycle.

Figures are medians over the repetitions; ``ratio`` is asyncjob's figure
divided by the baseline's. Progress goes to stderr, the results to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import dataclasses
import functools
import gc
import importlib.metadata
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

import psycopg
from core import percentile, source_digest
from psycopg import sql as pgsql
from sql import render

HERE = Path(__file__).resolve().parent
MANAGE = HERE / "django_bench" / "manage.py"
#: The server's maintenance database, from which the benchmark's own
#: database is created and dropped (as for bench/sql.py).
DEFAULT_PG = os.environ.get("ASYNCJOB_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
#: The prefix of asyncjob's tables in the benchmark's database.
PREFIX = "bench_"
#: asyncjob_worker --concurrency.
CONCURRENCY = 10
#: django-tasks-db's table.
DB_TABLE = "django_tasks_database_dbtaskresult"
#: The issue's targets: asyncjob's throughput at least this many times the
#: baseline's, its latency at most this fraction of it.
THROUGHPUT_TARGET = 10.0
LATENCY_TARGET = 0.1
#: aenqueue() calls awaited at a time, in the async enqueue measurement.
AENQUEUE_CONCURRENCY = 100
#: Latency samples taken first and thrown away.
LATENCY_WARMUP = 3
#: Pause after each latency sample, before the random part of it.
LATENCY_GAP = 0.02
#: The random part of that pause, at least (a worker that does not poll).
MIN_JITTER = 0.05
#: How often the benchmark asks the database whether the tasks are done.
DONE_POLL = 0.02
#: Seconds a stamp may take to arrive; a worker gets to start; to stop
#: (after SIGTERM, before SIGKILL); that one phase may take.
STAMP_TIMEOUT = 30.0
START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
PHASE_TIMEOUT = 900.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work one repetition does."""

    jobs: int
    latency_samples: int
    repeat: int


FULL = Sizes(jobs=3_000, latency_samples=100, repeat=3)
QUICK = Sizes(jobs=300, latency_samples=15, repeat=2)


@dataclasses.dataclass(frozen=True)
class Subject:
    """A backend, the worker that runs its tasks, and how to read its table."""

    key: str
    label: str
    #: The TASKS alias; the attribute names of its tasks in django_bench.tasks.
    backend: str
    noop: str
    stamp: str
    warm_up: str
    #: manage.py's arguments that start its worker.
    worker: tuple[str, ...]
    #: Django's CONN_MAX_AGE in the worker's process ("0", or "none").
    conn_max_age: str
    #: Seconds between the worker's looks at an empty queue (None: it listens).
    interval: float | None
    #: Per task name: tasks succeeded, tasks failed, the last ``finished_at``
    #: (seconds since the epoch).
    done_sql: str

    @property
    def kind(self) -> str:
        return "asyncjob" if self.backend == "asyncjob" else "db"


ASYNCJOB_DONE = f"""
    SELECT count(*) FILTER (WHERE state = 'succeeded'),
           count(*) FILTER (WHERE state IN ('failed', 'cancelled')),
           max(finished_at)
    FROM {PREFIX}jobs WHERE name = %s"""
DB_DONE = f"""
    SELECT count(*) FILTER (WHERE status = 'SUCCESSFUL'),
           count(*) FILTER (WHERE status = 'FAILED'),
           extract(epoch FROM max(finished_at))::float8
    FROM {DB_TABLE} WHERE task_path = %s"""

ASYNCJOB = Subject(
    key="asyncjob",
    label=f"asyncjob_worker --concurrency {CONCURRENCY}",
    backend="asyncjob",
    noop="noop",
    stamp="stamp",
    warm_up="warm_up",
    worker=("asyncjob_worker", "--backend", "asyncjob", "--concurrency", str(CONCURRENCY)),
    conn_max_age="0",
    interval=None,
    done_sql=ASYNCJOB_DONE,
)
DB_DEFAULTS = Subject(
    key="db",
    label="db_worker defaults (--interval 1, CONN_MAX_AGE=0)",
    backend="db",
    noop="db_noop",
    stamp="db_stamp",
    warm_up="db_warm_up",
    worker=("db_worker", "--backend", "db", "--no-reload"),
    conn_max_age="0",
    interval=1.0,
    done_sql=DB_DONE,
)
DB_BEST = Subject(
    key="dbbest",
    label="db_worker --interval 0 --no-startup-delay, CONN_MAX_AGE=None",
    backend="db",
    noop="db_noop",
    stamp="db_stamp",
    warm_up="db_warm_up",
    worker=("db_worker", "--backend", "db", "--no-reload", "--interval", "0",
            "--no-startup-delay"),
    conn_max_age="none",
    interval=0.0,
    done_sql=DB_DONE,
)  # fmt: skip
WORKERS = (ASYNCJOB, DB_DEFAULTS, DB_BEST)


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# -- the database -------------------------------------------------------------------


def url_with(admin: str, database: str) -> str:
    """``admin``'s server and credentials, another database."""
    parts = admin.rsplit("/", 1)
    return f"{parts[0]}/{database}"


class Database:
    """The benchmark's database, created on ``admin``'s server; ``drop()``
    removes it (also at exit, if the run is cut short)."""

    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.name = f"bench_django_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.url = url_with(admin, self.name)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(self.name)))
        self.dropped = False
        atexit.register(self.drop)
        self._probe: psycopg.Connection[Any] | None = None

    def probe(self) -> psycopg.Connection[Any]:
        """A connection of the benchmark's own (not Django's), in autocommit."""
        if self._probe is None or self._probe.closed:
            self._probe = psycopg.connect(self.url, autocommit=True)
        return self._probe

    def done(self, subject: Subject, task: str) -> tuple[int, int, float | None]:
        """How many of ``task`` succeeded and failed; the last finish."""
        row = self.probe().execute(subject.done_sql, (task_path(task),)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), None if row[2] is None else float(row[2])

    def queued(self, subject: Subject, task: str) -> int:
        """How many of ``task`` are in the table, whatever their state."""
        table, column = (
            (f"{PREFIX}jobs", "name") if subject.kind == "asyncjob" else (DB_TABLE, "task_path")
        )
        query = pgsql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
            pgsql.Identifier(table), pgsql.Identifier(column)
        )
        row = self.probe().execute(query, (task_path(task),)).fetchone()
        return 0 if row is None else int(row[0])

    def empty(self) -> None:
        """Both backends' tasks deleted (no worker runs meanwhile)."""
        tables = pgsql.SQL(", ").join(pgsql.Identifier(t) for t in (f"{PREFIX}jobs", DB_TABLE))
        self.probe().execute(pgsql.SQL("TRUNCATE {}").format(tables))
        self.probe().execute("VACUUM ANALYZE")

    def close_probe(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def server_start(self) -> str:
        """When the server started: a measurement it restarted during is
        made again."""
        with psycopg.connect(self.admin, autocommit=True) as conn:
            row = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()
        return "" if row is None else str(row[0])

    def drop(self) -> None:
        if self.dropped:
            return
        self.dropped = True
        self.close_probe()
        with psycopg.connect(self.admin, autocommit=True) as conn:
            drop = pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(pgsql.Identifier(self.name)))


def task_path(name: str) -> str:
    return f"django_bench.tasks.{name}"


def setup_django(db: Database) -> None:
    """This process as a Django process of the project, on ``db``; its
    tables made (django-tasks-db's migrations; asyncjob's at first use)."""
    os.environ["ASYNCJOB_BENCH_DJANGO_DB"] = db.url
    os.environ["ASYNCJOB_BENCH_DJANGO_PREFIX"] = PREFIX
    os.environ["DJANGO_SETTINGS_MODULE"] = "django_bench.settings"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    tasks = tasks_module()
    for subject in (ASYNCJOB, DB_DEFAULTS):  # the first enqueue makes asyncjob's tables
        getattr(tasks, subject.warm_up).enqueue()
    db.empty()


def tasks_module() -> Any:
    from django_bench import tasks

    return tasks


# -- worker processes -----------------------------------------------------------------

#: Worker processes started and not yet stopped (stopped at exit, if need be).
_live: set[WorkerProcess] = set()


class WorkerProcess:
    """``python bench/django_bench/manage.py <worker> ...``, its output in a
    temporary file; ``stop()`` sends SIGTERM, then SIGKILL."""

    def __init__(self, subject: Subject, db: Database) -> None:
        self.subject = subject
        env = {
            **os.environ,
            "ASYNCJOB_BENCH_DJANGO_DB": db.url,
            "ASYNCJOB_BENCH_DJANGO_PREFIX": PREFIX,
            "ASYNCJOB_BENCH_CONN_MAX_AGE": subject.conn_max_age,
            "ASYNCJOB_BENCH_PARENT": str(os.getpid()),
            "DJANGO_SETTINGS_MODULE": "django_bench.settings",
        }
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(MANAGE), *subject.worker],
            cwd=MANAGE.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the benchmark, which stops it
        )
        _live.add(self)

    def output(self) -> str:
        """The end of what the worker printed."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.subject.label}: the worker exited ({self.proc.returncode}):\n"
                f"{self.output()}"
            )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                progress(
                    f"{self.subject.label}: no exit {STOP_TIMEOUT:.0f} s after SIGTERM: SIGKILL"
                )
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        _live.discard(self)


def stop_all() -> None:
    for worker in list(_live):
        worker.stop()


atexit.register(stop_all)


def wait_done(
    db: Database, subject: Subject, task: str, n: int, worker: WorkerProcess, timeout: float
) -> float:
    """Wait until ``n`` of ``task`` succeeded; the last one's finish."""
    deadline = time.monotonic() + timeout
    while True:
        ok, failed, last = db.done(subject, task)
        if failed:
            raise RuntimeError(
                f"{subject.label}: {failed} {task} task(s) failed:\n{worker.output()}"
            )
        if ok >= n and last is not None:
            return last
        worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{subject.label}: {ok} of {n} {task} done after {timeout:.0f} s:\n"
                f"{worker.output()}"
            )
        time.sleep(DONE_POLL)


@contextmanager
def running_worker(db: Database, subject: Subject) -> Iterator[WorkerProcess]:
    """The subject's worker, started and warmed up (it ran a first task);
    stopped afterwards, whatever happens."""
    worker = WorkerProcess(subject, db)
    try:
        getattr(tasks_module(), subject.warm_up).enqueue()
        wait_done(db, subject, subject.warm_up, 1, worker, START_TIMEOUT)
        yield worker
    finally:
        worker.stop()


# -- the measurements -------------------------------------------------------------------


def enqueue_rate(db: Database, subject: Subject, n: int, *, atomic: bool) -> float:
    """Tasks per second: ``n`` no-op tasks enqueued one by one, each
    committed at once (autocommit), or all in one ``transaction.atomic()``
    (its commit included); no worker runs."""
    from django.db import transaction

    db.empty()
    noop = getattr(tasks_module(), subject.noop)
    noop.enqueue()  # the first enqueue of the process, made here, not timed
    gc.collect()
    start = time.perf_counter()
    if atomic:
        with transaction.atomic():
            for _ in range(n):
                noop.enqueue()
    else:
        for _ in range(n):
            noop.enqueue()
    elapsed = time.perf_counter() - start
    found = db.queued(subject, subject.noop)
    if found != n + 1:
        raise RuntimeError(f"{subject.label}: {found} tasks written, not {n + 1}")
    return n / elapsed


def aenqueue_rate(db: Database, subject: Subject, n: int) -> float:
    """Tasks per second: ``n`` no-op tasks enqueued with ``await
    task.aenqueue()`` from async code (an async view), AENQUEUE_CONCURRENCY
    of them awaited at a time; no worker runs."""
    db.empty()
    noop = getattr(tasks_module(), subject.noop)

    async def run() -> float:
        await noop.aenqueue()  # the first of this event loop, not timed
        limit = asyncio.Semaphore(AENQUEUE_CONCURRENCY)

        async def one() -> None:
            async with limit:
                await noop.aenqueue()

        gc.collect()
        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - start)

    rate = asyncio.run(run())
    found = db.queued(subject, subject.noop)
    if found != n + 1:
        raise RuntimeError(f"{subject.label}: {found} tasks written, not {n + 1}")
    return rate


def drain_rate(db: Database, subject: Subject, n: int, *, atomic: bool) -> tuple[float, float]:
    """With the worker running, ``n`` no-op tasks enqueued one by one: tasks
    per second from just before the first enqueue until the worker finished
    the last one (its ``finished_at``). And, in autocommit, the rate of those
    enqueues alone (the worker running meanwhile); in one
    ``transaction.atomic()``, the worker's rate on that backlog: from just
    before the commit until the last one finished."""
    from django.db import transaction

    db.empty()
    noop = getattr(tasks_module(), subject.noop)
    with running_worker(db, subject) as worker:
        gc.collect()
        start = time.time()
        if atomic:
            with transaction.atomic():
                for _ in range(n):
                    noop.enqueue()
                since = time.time()  # the commit is next
        else:
            for _ in range(n):
                noop.enqueue()
            since = time.time()
        last = wait_done(db, subject, subject.noop, n, worker, PHASE_TIMEOUT)
    return n / (last - start), n / (last - since) if atomic else n / (since - start)


@contextmanager
def stamp_socket() -> Iterator[tuple[socket.socket, int]]:
    """A UDP socket on a free port of 127.0.0.1, and the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock, int(sock.getsockname()[1])
    finally:
        sock.close()


def receive_stamp(sock: socket.socket, seq: int, worker: WorkerProcess) -> float:
    """The start time stamp ``seq`` sent (others, late ones, are skipped)."""
    deadline = time.monotonic() + STAMP_TIMEOUT
    while time.monotonic() < deadline:
        sock.settimeout(0.5)
        try:
            data = sock.recv(256)
        except TimeoutError:
            worker.check_alive()
            continue
        got, _, when = data.decode().partition(" ")
        if int(got) == seq:
            return float(when)
    raise TimeoutError(f"{worker.subject.label}: task {seq} did not start in {STAMP_TIMEOUT} s")


def latency(
    db: Database, subject: Subject, samples: int, seed: int
) -> tuple[list[float], list[float]]:
    """Seconds from just before ``enqueue()`` to the task's first line, one
    task at a time on the idle worker; before each, a pause of LATENCY_GAP
    plus a random part up to the worker's polling interval (MIN_JITTER at
    least), so that tasks arrive at any point of its cycle. And the seconds
    each ``enqueue()`` call took (autocommit: its commit included)."""
    db.empty()
    stamp = getattr(tasks_module(), subject.stamp)
    jitter = max(subject.interval or 0.0, MIN_JITTER)
    rng = random.Random(seed)
    delays, calls = [], []
    total = LATENCY_WARMUP + samples
    with stamp_socket() as (sock, port), running_worker(db, subject) as worker:
        for seq in range(total):
            time.sleep(LATENCY_GAP + rng.uniform(0.0, jitter))
            before = time.time()
            stamp.enqueue(port, seq)
            calls.append(time.time() - before)
            delays.append(receive_stamp(sock, seq, worker) - before)
        wait_done(db, subject, subject.stamp, total, worker, STAMP_TIMEOUT)
    return delays[LATENCY_WARMUP:], calls[LATENCY_WARMUP:]


def commit_floor(db: Database, n: int) -> tuple[float, float]:
    """PostgreSQL's own floor, for reference: rows per second of one-row
    INSERTs through psycopg, each committed (autocommit), and all in one
    transaction."""
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, at float8)")
        insert = "INSERT INTO bench_floor (at) VALUES (%s)"
        start = time.perf_counter()
        for _ in range(n):
            conn.execute(insert, (0.0,))
        each = n / (time.perf_counter() - start)
        start = time.perf_counter()
        with conn.transaction():
            for _ in range(n):
                conn.execute(insert, (0.0,))
        one = n / (time.perf_counter() - start)
        conn.execute("DROP TABLE bench_floor")
    return each, one


#: Measurements that failed and were made again (see ``measure``).
retried: list[str] = []
#: Tries of one measurement, at most.
TRIES = 3
T = TypeVar("T")


def measure(db: Database, what: str, call: Callable[[], T]) -> T:
    """``call()``, made again from scratch if it fails, or if the PostgreSQL
    server restarted meanwhile (the server may be shared), up to TRIES
    times; each retry is reported."""
    progress(what)
    for attempt in range(1, TRIES + 1):
        try:
            started = db.server_start()
            result = call()
            if db.server_start() != started:
                raise RuntimeError("the PostgreSQL server restarted during the measurement")
            return result
        except Exception as exc:
            stop_all()
            close_connections(db)
            if attempt == TRIES:
                raise
            retried.append(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            progress(f"failed, trying again in 5 s: {retried[-1]}")
            time.sleep(5)
    raise AssertionError("unreachable")


def close_connections(db: Database) -> None:
    """Django's connections and the probe's closed: the next use opens new ones."""
    from django.db import connections

    connections.close_all()
    db.close_probe()


def one_repetition(db: Database, sizes: Sizes, seed: int) -> dict[str, float]:
    """Every measurement once, asyncjob right next to its baselines."""
    r: dict[str, float] = {}
    n = sizes.jobs
    for atomic, key in ((False, "enq"), (True, "atomic")):
        how = "in one transaction.atomic()" if atomic else "autocommit"
        for subject in (ASYNCJOB, DB_DEFAULTS):
            what = f"enqueue {n:,} tasks, {how}: {subject.backend} backend"
            enqueue = functools.partial(enqueue_rate, db, subject, n, atomic=atomic)
            r[f"{key}.{subject.key}"] = measure(db, what, enqueue)
    for subject in (ASYNCJOB, DB_DEFAULTS):
        what = f"aenqueue {n:,} tasks, {AENQUEUE_CONCURRENCY} at a time: {subject.backend}"
        enqueue = functools.partial(aenqueue_rate, db, subject, n)
        r[f"async.{subject.key}"] = measure(db, what, enqueue)
    for atomic, keys in ((False, ("drain", "drainenq")), (True, ("batch", "backlog"))):
        how = "in one transaction.atomic()" if atomic else "autocommit"
        for subject in WORKERS:
            what = f"drain {n:,} tasks enqueued {how}: {subject.label}"
            rates = measure(db, what, functools.partial(drain_rate, db, subject, n, atomic=atomic))
            for key, rate in zip(keys, rates, strict=True):
                r[f"{key}.{subject.key}"] = rate
    for subject in WORKERS:
        what = f"enqueue->start, {sizes.latency_samples} samples: {subject.label}"
        sample = functools.partial(latency, db, subject, sizes.latency_samples, seed)
        delays, calls = measure(db, what, sample)
        r[f"p50.{subject.key}"] = percentile(delays, 0.50) * 1000
        r[f"p99.{subject.key}"] = percentile(delays, 0.99) * 1000
        r[f"call50.{subject.key}"] = percentile(calls, 0.50) * 1000
    what = f"PostgreSQL's floor: {n:,} one-row INSERTs"
    r["floor.commit"], r["floor.atomic"] = measure(db, what, lambda: commit_floor(db, n))
    db.empty()
    return r


# -- the report -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    subject: str
    baseline: str
    against: str
    unit: str
    #: True: asyncjob's figure should be at least THROUGHPUT_TARGET times the
    #: baseline's; False: at most LATENCY_TARGET times.
    higher_is_better: bool

    def ratio(self, medians: dict[str, float]) -> float:
        return medians[self.subject] / medians[self.baseline]

    def verdict(self, medians: dict[str, float]) -> str:
        ratio = self.ratio(medians)
        if self.higher_is_better:
            return "PASS" if ratio >= THROUGHPUT_TARGET else "MISS"
        return "PASS" if ratio <= LATENCY_TARGET else "MISS"

    @property
    def target(self) -> str:
        if self.higher_is_better:
            return f">= {THROUGHPUT_TARGET:g}x"
        return f"<= 1/{1 / LATENCY_TARGET:g}"


ROWS = (
    Row("enqueue, autocommit", "enq.asyncjob", "enq.db", "django-tasks-db", "tasks/s", True),
    Row("enqueue, in one atomic()", "atomic.asyncjob", "atomic.db", "django-tasks-db",
        "tasks/s", True),
    Row(f"aenqueue, {AENQUEUE_CONCURRENCY} at a time", "async.asyncjob", "async.db",
        "django-tasks-db", "tasks/s", True),
    Row("drain (enqueue to finish)", "drain.asyncjob", "drain.db", "db_worker defaults",
        "tasks/s", True),
    Row("drain (enqueue to finish)", "drain.asyncjob", "drain.dbbest", "db_worker best",
        "tasks/s", True),
    Row("backlog (commit to finish)", "backlog.asyncjob", "backlog.db", "db_worker defaults",
        "tasks/s", True),
    Row("backlog (commit to finish)", "backlog.asyncjob", "backlog.dbbest", "db_worker best",
        "tasks/s", True),
    Row("enqueue->start p50", "p50.asyncjob", "p50.db", "db_worker defaults", "ms", False),
    Row("enqueue->start p99", "p99.asyncjob", "p99.db", "db_worker defaults", "ms", False),
    Row("enqueue->start p50", "p50.asyncjob", "p50.dbbest", "db_worker best", "ms", False),
    Row("enqueue->start p99", "p99.asyncjob", "p99.dbbest", "db_worker best", "ms", False),
)  # fmt: skip


def fmt(value: float, unit: str) -> str:
    """A figure with its unit, rounded for reading."""
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"
    return f"{value:,.0f} {unit}"


def unit_of(key: str) -> str:
    """The unit of a raw figure, by its key."""
    kind = key.split(".")[0]
    if kind in {"p50", "p99", "call50"}:
        return "ms"
    return "rows/s" if kind == "floor" else "tasks/s"


def table(medians: dict[str, float], markdown: bool) -> str:
    rows: list[tuple[str, ...]] = [
        ("measure", "asyncjob", "baseline", "against", "ratio", "target", "")
    ]
    for row in ROWS:
        ratio = row.ratio(medians)
        shown = f"{ratio:.2f}x" if ratio < 10 else f"{ratio:,.1f}x"
        if ratio < 0.01:
            shown = f"{ratio:.4f}x"
        rows.append((
            row.label, fmt(medians[row.subject], row.unit), fmt(medians[row.baseline], row.unit),
            row.against, shown, row.target, row.verdict(medians),
        ))  # fmt: skip
    return render(rows, "<>><><<", markdown)


def spread(samples: dict[str, list[float]]) -> str:
    """Each raw figure's median and range over the repetitions."""
    lines = []
    for key, values in samples.items():
        unit = unit_of(key)
        lo, mid, hi = min(values), statistics.median(values), max(values)
        lines.append(f"  {key:<18} {fmt(mid, unit):>14}   range {fmt(lo, unit)} .. {fmt(hi, unit)}")
    return "\n".join(lines)


#: The libraries whose versions a run reports: (name shown, distribution).
LIBRARIES = (
    ("asyncjob", "asyncjob-runner"), ("Django", "Django"), ("django-tasks-db", "django-tasks-db"),
    ("psycopg", "psycopg"), ("asyncpg", "asyncpg"), ("SQLAlchemy", "SQLAlchemy"),
)  # fmt: skip


def versions(db: Database) -> dict[str, str]:
    found = {name: importlib.metadata.version(dist) for name, dist in LIBRARIES}
    row = db.probe().execute("SHOW server_version").fetchone()
    found["postgresql"] = str(row[0]).split()[0] if row else "?"
    row = db.probe().execute("SHOW synchronous_commit").fetchone()
    found["synchronous_commit"] = str(row[0]) if row else "?"
    return found


def header(sizes: Sizes, digest: str, found: dict[str, str]) -> str:
    libraries = ", ".join(f"{k} {v}" for k, v in found.items() if k != "asyncjob")
    workers = "; ".join(f"{s.key}: {s.label}" for s in WORKERS)
    return (
        f"asyncjob {found['asyncjob']} (sources {digest}) Django tasks benchmarks: "
        f"Python {platform.python_version()}, {os.cpu_count()} CPU(s), "
        f"medians of {sizes.repeat} repetition(s)\n"
        f"{libraries}\n"
        f"{sizes.jobs:,} no-op tasks per throughput measurement, "
        f"{sizes.latency_samples} latency samples; one worker process each ({workers}); "
        f"ratio = asyncjob / baseline"
    )


def write_json(
    path: Path,
    sizes: Sizes,
    digest: str,
    found: dict[str, str],
    samples: dict[str, list[float]],
    command: list[str],
) -> None:
    medians = {k: statistics.median(v) for k, v in samples.items()}
    doc = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "sources": digest,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "versions": found,
        "sizes": dataclasses.asdict(sizes),
        "workers": {s.key: {"label": s.label, "argv": list(s.worker),
                            "CONN_MAX_AGE": s.conn_max_age} for s in WORKERS},
        "samples": samples,
        "medians": medians,
        "verdicts": [
            {"measure": r.label, "subject": r.subject, "baseline": r.baseline,
             "against": r.against, "ratio": r.ratio(medians), "target": r.target,
             "verdict": r.verdict(medians)}
            for r in ROWS
        ],
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


# -- the command line ------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer tasks and samples")
    parser.add_argument("--repeat", type=int, help="repetitions (default 3; 2 with --quick)")
    parser.add_argument("--jobs", type=int, help="tasks per throughput measurement")
    parser.add_argument("--samples", type=int, help="latency samples per worker")
    parser.add_argument(
        "--pg", default=DEFAULT_PG, metavar="URL",
        help="the PostgreSQL server's maintenance database, from which the benchmark "
        "creates (and drops) a database of its own; default $ASYNCJOB_BENCH_PG or "
        "postgresql://postgres@127.0.0.1:5432/postgres",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table too")
    return parser.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the run as Ctrl-C does: workers stopped, database dropped."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    changes: dict[str, int] = {}
    for name, value in (("repeat", args.repeat), ("jobs", args.jobs),
                        ("latency_samples", args.samples)):  # fmt: skip
        if value is not None:
            if value < 1:
                sys.exit(f"--{name.split('_')[-1]} must be at least 1")
            changes[name] = value
    sizes = dataclasses.replace(sizes, **changes)
    signal.signal(signal.SIGTERM, _terminate)
    db = Database(args.pg)
    try:
        progress(f"database {db.name}: migrations")
        setup_django(db)
        digest = source_digest()
        found = versions(db)
        load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        samples: dict[str, list[float]] = {}
        for i in range(sizes.repeat):
            progress(f"repetition {i + 1}/{sizes.repeat}")
            for key, value in one_repetition(db, sizes, seed=20261205 + i).items():
                samples.setdefault(key, []).append(value)
        medians = {k: statistics.median(v) for k, v in samples.items()}
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        parts = [header(sizes, digest, found), table(medians, False)]
        if args.markdown:
            parts.append(table(medians, True))
        parts += [
            "medians and ranges (drainenq: the enqueue rate during the drain; batch: "
            "first enqueue to last finish, enqueued in one atomic(); call50: the p50 of "
            "one enqueue() call, in the latency runs; floor: psycopg one-row INSERTs, "
            "autocommit and in one transaction, PostgreSQL's own ceiling):",
            spread(samples),
            f"load average at the start: {load_before}; at the end: {load}; "
            f"measurements made again: {len(retried)}" + "".join(f"\n  {why}" for why in retried),
        ]
        if source_digest() != digest:
            parts.append("WARNING: the asyncjob sources changed during the run")
        print(*parts, sep="\n\n")
        if args.json is not None:
            command = [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
            write_json(args.json, sizes, digest, found, samples, command)
        return 0
    finally:
        stop_all()
        close_django()
        db.drop()


def close_django() -> None:
    """Django's connections closed, and asyncjob's producer stopped (the
    backend has no public way to close it: its loop thread is stopped
    here, before its database is dropped)."""
    if "django" not in sys.modules:
        return
    from django.db import connections
    from django.tasks import task_backends

    connections.close_all()
    try:
        backend = task_backends["asyncjob"]
    except Exception:  # noqa: BLE001 - Django not set up: nothing to close
        return
    thread = getattr(backend, "_thread", None)
    if thread is not None:
        thread.stop(STOP_TIMEOUT)


if __name__ == "__main__":
    sys.exit(main())

"""SQL store benchmarks: asyncjob's SQL store against procrastinate, pgqueuer
and raw SQL loops, on SQLite and PostgreSQL.

Usage::

    python bench/sql.py [--quick] [--repeat N] [--only KIND] [--pg URL] [--json PATH] [--markdown]
    python bench/sql.py --profile DIR [--quick] [--only KIND] [--pg URL]

Every measurement gets a fresh database (a temporary SQLite file, or a
database of its own on the PostgreSQL server, dropped afterwards) and a
fresh event loop; the jobs run in a separate worker process. Each figure is
the median of the repetitions, and every ratio compares it with a baseline
measured in the same repetition.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import dataclasses
import functools
import gc
import importlib.metadata
import json
import os
import platform
import pstats
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import aiosqlite
import asyncpg
import psycopg
from core import percentile, source_digest
from psycopg import sql as pgsql
from sql_subjects import (
    CHUNK,
    CONCURRENCY,
    PGQUEUER_BATCH,
    POLL_INTERVAL,
    POSTGRES,
    SERVERS,
    SQLITE,
    AsyncjobProducer,
    Counters,
    Database,
    Producer,
    Subject,
    asyncjob_producer,
    sqlite_connect,
)
from sqlalchemy.engine import make_url

T = TypeVar("T")

#: The server's maintenance database, from which the benchmark's own
#: databases are created and dropped.
DEFAULT_PG = os.environ.get("ASYNCJOB_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
#: How often the benchmark asks whether every job is done (seconds).
DONE_POLL = 0.005
#: Latency samples taken first and thrown away (connections, caches).
LATENCY_WARMUP = 10
#: Pause after each latency sample, so that the worker is idle again.
LATENCY_GAP = 0.02
#: A stamp that takes longer than this is an error (seconds).
STAMP_TIMEOUT = 30.0
#: No phase may take longer (seconds): a stuck library fails the run, it does not hang it.
PHASE_TIMEOUT = 900.0
#: A worker process ends itself after this long, whatever becomes of the benchmark.
WORKER_LIFETIME = 3600.0
#: Time a worker process gets to start (imports, connections) and to stop.
WORKER_START_TIMEOUT = 120.0
WORKER_STOP_TIMEOUT = 60.0
#: py-spy's samples per second, when it profiles a worker process.
PY_SPY_RATE = 200
KINDS = ("postgres", "sqlite")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work one repetition does."""

    jobs: int
    latency_samples: int
    #: Fewer where a worker polls (SQLite, another process): each takes
    #: a quarter of a second or so.
    polled_latency_samples: int
    commit_samples: int
    repeat: int


FULL = Sizes(
    jobs=20_000, latency_samples=300, polled_latency_samples=100, commit_samples=1_000, repeat=3
)
QUICK = Sizes(
    jobs=2_000, latency_samples=50, polled_latency_samples=20, commit_samples=200, repeat=2
)


# -- databases ----------------------------------------------------------------------

#: PostgreSQL databases created and not yet dropped (dropped at exit if need be).
_created: set[str] = set()


def pg_url(admin: str, database: str, driver: str) -> str:
    """``admin``'s server and credentials, another database and driver."""
    url = make_url(admin).set(drivername=driver, database=database)
    return url.render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def fresh_database(kind: str, admin: str) -> AsyncIterator[Database]:
    """A new, empty database for one measurement; gone afterwards."""
    if kind == "sqlite":
        directory = Path(tempfile.mkdtemp(prefix="asyncjob-bench-"))
        path = directory / "jobs.db"
        try:
            yield Database("sqlite", f"sqlite+aiosqlite:///{path}", str(path))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    name = f"asyncjob_bench_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    _created.add(name)
    try:
        yield Database(
            "postgres", pg_url(admin, name, "postgresql+asyncpg"), pg_url(admin, name, "postgresql")
        )
    finally:
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            drop = pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            await conn.execute(drop.format(pgsql.Identifier(name)))
        _created.discard(name)


async def server_start(admin: str) -> str:
    """When the PostgreSQL server started: a measurement it restarted
    during is made again."""
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        cursor = await conn.execute("SELECT pg_postmaster_start_time()::text")
        row = await cursor.fetchone()
    return "" if row is None else str(row[0])


def drop_leftovers(admin: str) -> None:
    """Drop the databases an interrupted run left behind."""
    if not _created:
        return
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in sorted(_created):
            drop = pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(pgsql.Identifier(name)))
    _created.clear()


class Probe:
    """Asks the database how the jobs are doing, on a connection of its own."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pg: psycopg.AsyncConnection[Any] | None = None
        self._sqlite: aiosqlite.Connection | None = None

    async def __aenter__(self) -> Probe:
        if self.db.kind == "postgres":
            self._pg = await psycopg.AsyncConnection.connect(self.db.dsn, autocommit=True)
        else:
            self._sqlite = await sqlite_connect(self.db.dsn)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._pg is not None:
            await self._pg.close()
        if self._sqlite is not None:
            await self._sqlite.close()

    async def row(self, query: str) -> tuple[Any, ...] | None:
        """The first row of ``query``, or None."""
        if self._pg is not None:
            cursor = await self._pg.execute(query)
            return await cursor.fetchone()
        assert self._sqlite is not None
        async with self._sqlite.execute(query) as found:
            result = await found.fetchone()
        return None if result is None else tuple(result)

    async def count(self, query: str) -> int:
        found = await self.row(query)
        return 0 if found is None else int(found[0])


# -- the worker process ---------------------------------------------------------------


def tail(written: IO[bytes] | None) -> str:
    """The end of what a worker process wrote to ``written`` so far, for
    the error that says why it died."""
    if written is None:
        return ""
    written.seek(0)
    return written.read().decode(errors="replace")[-4000:]


class WorkerProcess:
    """``python bench/sql.py --serve ...``: one subject's worker, in a process
    of its own. It prepares, says ``ready``, runs jobs from ``go`` until
    ``stop``, then says how many no-op jobs it ran."""

    def __init__(
        self, subject: Subject, db: Database, *, profiling: Profiling | None = None
    ) -> None:
        self.command = [
            sys.executable, str(Path(__file__).resolve()),
            "--serve", f"{subject.kind}-{subject.key}", "--url", db.url, "--dsn", db.dsn,
        ]  # fmt: skip
        if profiling is not None and profiling.py_spy is not None:
            # py-spy starts the worker and samples it (it cannot attach here).
            out = profiling.directory / f"{db.kind}-worker.pyspy.txt"
            self.command[:0] = [
                profiling.py_spy, "record", "--format", "raw", "--rate", str(PY_SPY_RATE),
                "--output", str(out), "--",
            ]  # fmt: skip
        elif profiling is not None:
            self.command += [
                "--worker-profile",
                str(profiling.directory / f"{db.kind}-worker.prof"),
            ]
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr: IO[bytes] | None = None
        self.ran: int | None = None
        self.cpu: float | None = None

    async def __aenter__(self) -> WorkerProcess:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __aexit__
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
        )
        await self._expect("ready", WORKER_START_TIMEOUT)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(Exception):
                if self.ran is None:
                    await self.stop()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if self._stderr is not None:
            self._stderr.close()

    async def _say(self, word: str) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{word}\n".encode())
        await self.proc.stdin.drain()

    async def _expect(self, word: str, timeout: float) -> str:
        """The next line the worker prints that starts with ``word``."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"the worker process ended:\n{self.errors()}")
                if line.startswith(word):
                    return line.strip()

    def errors(self) -> str:
        """The end of what the worker wrote on stderr."""
        return tail(self._stderr)

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise RuntimeError(f"the worker process died:\n{self.errors()}")

    async def go(self) -> None:
        await self._say("go")

    async def stop(self) -> tuple[int, float]:
        """Stop it gracefully; how many no-op jobs it ran, and the CPU
        seconds it spent from ``go`` to ``stop``."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        await self._say("stop")
        self.proc.stdin.close()
        _, ran, _, cpu = (await self._expect("ran", WORKER_STOP_TIMEOUT)).split()
        self.ran, self.cpu = int(ran), float(cpu)
        async with asyncio.timeout(WORKER_STOP_TIMEOUT):
            await self.proc.wait()
        return self.ran, self.cpu


# -- 1. throughput ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds to enqueue the jobs, and to run them all; CPU seconds spent
    by the producer's process while it enqueued, by the worker process while
    it ran them, and by the whole machine meanwhile (the database's server
    included), or None where it cannot be read."""

    enqueue: float
    run: float
    enqueue_cpu: float
    worker_cpu: float
    machine_cpu: float | None


def machine_busy() -> float | None:
    """CPU seconds the whole machine has spent busy since it booted (Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Profiling:
    """Where profiles go; ``py_spy``: that program samples the worker
    process, instead of cProfile."""

    directory: Path
    py_spy: str | None = None


async def enqueue_and_run(
    db: Database, subject: Subject, n: int, profiling: Profiling | None = None
) -> Timing:
    """Enqueue ``n`` no-op jobs as fast as the library allows, with the
    worker process started and waiting for ``go``; close the producer; then
    time the worker from ``go`` until the database says every job is done."""
    worker = WorkerProcess(subject, db, profiling=profiling)
    async with Probe(db) as probe, worker:
        async with subject.producer(db) as producer:
            profiler = None if profiling is None else cProfile.Profile()
            gc.collect()
            async with asyncio.timeout(PHASE_TIMEOUT):
                cpu, start = time.process_time(), time.perf_counter()
                if profiler is not None:
                    profiler.enable()
                await producer.many(n)
                if profiler is not None:
                    profiler.disable()
                enqueue = time.perf_counter() - start
                enqueue_cpu = time.process_time() - cpu
            if profiler is not None and profiling is not None:
                profiler.dump_stats(profiling.directory / f"{db.kind}-enqueue.prof")
        # The producer is closed: from here on only the worker process works.
        async with asyncio.timeout(PHASE_TIMEOUT):
            busy, start = machine_busy(), time.perf_counter()
            await worker.go()
            while await probe.row(subject.left) is not None:
                worker.check_alive()
                await asyncio.sleep(DONE_POLL)
            run = time.perf_counter() - start
            busy_after = machine_busy()
        ran, worker_cpu = await worker.stop()
        done = await probe.count(subject.done)
    if done != n or ran != n:
        raise RuntimeError(f"{subject.label} on {db.kind}: {done} jobs done, {ran} ran, of {n}")
    machine_cpu = None if busy is None or busy_after is None else busy_after - busy
    return Timing(enqueue, run, enqueue_cpu, worker_cpu, machine_cpu)


async def enqueue_concurrently(db: Database, n: int) -> float:
    """Seconds for asyncjob to enqueue ``n`` jobs by CHUNK ``perform()`` calls
    at a time, each awaited on its own (what a busy web process does); the
    store's group commit writes those that arrive together at once."""
    async with asyncjob_producer(db) as producer:
        assert isinstance(producer, AsyncjobProducer)
        gc.collect()
        async with asyncio.timeout(PHASE_TIMEOUT):
            start = time.perf_counter()
            await producer.concurrently(n)
            return time.perf_counter() - start


async def enqueue_one_at_a_time(db: Database, subject: Subject, n: int) -> float:
    """Seconds to enqueue ``n`` no-op jobs one after the other, each in a
    transaction of its own (no worker: they stay queued)."""
    async with subject.producer(db) as producer:
        gc.collect()
        async with asyncio.timeout(PHASE_TIMEOUT):
            start = time.perf_counter()
            for _ in range(n):
                await producer.one()
            return time.perf_counter() - start


# -- 2. idle perform -> start latency ---------------------------------------------------


class StampReceiver(asyncio.DatagramProtocol):
    """Receives the start times the ``stamp`` jobs send."""

    def __init__(self) -> None:
        self.stamps: asyncio.Queue[float] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.stamps.put_nowait(float(data))


@contextlib.asynccontextmanager
async def stamp_receiver() -> AsyncIterator[tuple[StampReceiver, int]]:
    """A receiver listening on a free UDP port of 127.0.0.1, and the port."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        StampReceiver, local_addr=("127.0.0.1", 0)
    )
    try:
        yield protocol, int(transport.get_extra_info("sockname")[1])
    finally:
        transport.close()


async def sample_latency(
    producer: Producer, receiver: StampReceiver, port: int, samples: int, jitter: float
) -> list[float]:
    """Seconds from just before enqueueing a ``stamp`` job to its first line,
    one job at a time; after each, a pause (plus up to ``jitter`` seconds,
    at random, so that jobs arrive at any point of a polling worker's cycle)."""
    rng = random.Random(20261129)
    delays = []
    for _ in range(LATENCY_WARMUP + samples):
        start = time.monotonic()
        await producer.stamp(port)
        async with asyncio.timeout(STAMP_TIMEOUT):
            began = await receiver.stamps.get()
        delays.append(began - start)
        await asyncio.sleep(LATENCY_GAP + rng.uniform(0.0, jitter))
    return delays[LATENCY_WARMUP:]


async def latency(db: Database, subject: Subject, samples: int) -> list[float]:
    """perform->start with the worker in its own process, idle and waiting."""
    # On SQLite a worker learns of another process's job only when it polls.
    jitter = POLL_INTERVAL if db.kind == "sqlite" else 0.0
    async with (
        stamp_receiver() as (receiver, port),
        WorkerProcess(subject, db) as worker,
        subject.producer(db) as producer,
    ):
        await worker.go()
        await asyncio.sleep(0.5)  # it starts, then waits for jobs
        async with asyncio.timeout(PHASE_TIMEOUT):
            return await sample_latency(producer, receiver, port, samples, jitter)


async def latency_in_process(db: Database, samples: int) -> list[float]:
    """perform->start for asyncjob with one runner that performs and works."""
    async with stamp_receiver() as (receiver, port), asyncjob_producer(db, works=True) as producer:
        await asyncio.sleep(0.2)
        async with asyncio.timeout(PHASE_TIMEOUT):
            return await sample_latency(producer, receiver, port, samples, 0.0)


# -- the database's own costs ------------------------------------------------------------


async def pg_commit_latency(db: Database, samples: int) -> dict[str, list[float]]:
    """Seconds per autocommitted one-row INSERT (asyncpg), durable
    (``synchronous_commit=on``, the server's default) and not
    (``off``); and per ``SELECT 1`` (a round trip)."""
    conn = await asyncpg.connect(db.dsn)
    try:
        await conn.execute("CREATE TABLE commit_probe (id bigserial PRIMARY KEY, at float8)")
        times: dict[str, list[float]] = {}
        for setting, key in (("on", "durable"), ("off", "async")):
            await conn.execute(f"SET synchronous_commit = {setting}")
            times[key] = await timed(samples, lambda: conn.execute(_PROBE_INSERT, 0.0))
        times["roundtrip"] = await timed(samples, lambda: conn.fetchval("SELECT 1"))
        return times
    finally:
        await conn.close()


_PROBE_INSERT = "INSERT INTO commit_probe (at) VALUES ($1)"


async def sqlite_commit_latency(db: Database, samples: int) -> dict[str, list[float]]:
    """Seconds per autocommitted one-row INSERT through aiosqlite, with the
    store's pragmas (WAL, synchronous=NORMAL: no fsync per commit)."""
    conn = await sqlite_connect(db.dsn)
    try:
        await conn.execute("CREATE TABLE commit_probe (id INTEGER PRIMARY KEY, at REAL)")
        return {"commit": await timed(samples, lambda: conn.execute(_PROBE_INSERT_SQLITE, (0.0,)))}
    finally:
        await conn.close()


_PROBE_INSERT_SQLITE = "INSERT INTO commit_probe (at) VALUES (?)"


async def timed(samples: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    """Seconds each of ``samples`` calls took, after 20 thrown away."""
    out = []
    for i in range(20 + samples):
        start = time.perf_counter()
        await call()
        if i >= 20:
            out.append(time.perf_counter() - start)
    return out


# -- one repetition --------------------------------------------------------------------------


#: Measurements that failed and were made again (see ``measure``).
retried: list[str] = []
#: Tries of one measurement, at most.
TRIES = 3


def measure(kind: str, admin: str, bench: Callable[[Database], Coroutine[Any, Any, T]]) -> T:
    """Run one measurement in a fresh event loop, on a fresh database.

    A measurement that fails (the server restarted under it, say: the
    PostgreSQL server may be shared) is made again from scratch, up to
    TRIES times; each retry is reported."""

    async def on_fresh_database() -> T:
        async with fresh_database(kind, admin) as db:
            started = await server_start(admin) if kind == "postgres" else None
            result = await bench(db)
            if started is not None and await server_start(admin) != started:
                raise RuntimeError("the PostgreSQL server restarted during the measurement")
            return result

    for attempt in range(1, TRIES + 1):
        gc.collect()
        try:
            return asyncio.run(on_fresh_database())
        except Exception as exc:
            if attempt == TRIES:
                raise
            what = f"{kind}: {getattr(bench, 'func', bench).__name__}"
            retried.append(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            progress(f"failed, trying again in 5 s: {retried[-1]}")
            time.sleep(5)
    raise AssertionError("unreachable")


def subjects_of(kind: str) -> tuple[Subject, ...]:
    return POSTGRES if kind == "postgres" else SQLITE


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def one_repetition(
    sizes: Sizes, kinds: Sequence[str], admin: str, keys: frozenset[str] | None = None
) -> dict[str, float]:
    """Every measurement once, each subject next to its baselines (only the
    subjects named in ``keys``, when given)."""
    r: dict[str, float] = {}
    n = sizes.jobs

    def subjects(kind: str) -> tuple[Subject, ...]:
        return tuple(s for s in subjects_of(kind) if keys is None or s.key in keys)

    for kind in kinds:
        progress(f"{kind}: commit latency")
        probe = pg_commit_latency if kind == "postgres" else sqlite_commit_latency
        commits = measure(kind, admin, functools.partial(probe, samples=sizes.commit_samples))
        for key, values in commits.items():
            r[f"{kind}.{key}.p50"] = percentile(values, 0.50) * 1000
            r[f"{kind}.{key}.p99"] = percentile(values, 0.99) * 1000
        runs: dict[str, float] = {}
        for s in subjects(kind):
            progress(f"{kind}: {s.label}: enqueue {n:,} jobs ({s.many}), then run them")
            timing = measure(kind, admin, functools.partial(enqueue_and_run, subject=s, n=n))
            runs[s.key] = timing.run
            r[f"{kind}.enqN.{s.key}"] = n / timing.enqueue
            r[f"{kind}.run.{s.key}"] = n / timing.run
            r[f"{kind}.e2e.{s.key}"] = n / (timing.enqueue + timing.run)
            r[f"{kind}.enqcpu.{s.key}"] = timing.enqueue_cpu / n * 1e6
            r[f"{kind}.wcpu.{s.key}"] = timing.worker_cpu / n * 1e6
            if timing.machine_cpu is not None:
                r[f"{kind}.mcpu.{s.key}"] = timing.machine_cpu / n * 1e6
        if keys is None or "asyncjob" in keys:
            progress(f"{kind}: asyncjob: enqueue {n:,} jobs, {CHUNK} performs at a time")
            seconds = measure(kind, admin, functools.partial(enqueue_concurrently, n=n))
            r[f"{kind}.enqC.asyncjob"] = n / seconds
        for s in subjects(kind):
            progress(f"{kind}: {s.label}: enqueue {n:,} jobs one at a time")
            seconds = measure(kind, admin, functools.partial(enqueue_one_at_a_time, subject=s, n=n))
            r[f"{kind}.enq1.{s.key}"] = n / seconds
            r[f"{kind}.e2e1.{s.key}"] = n / (seconds + runs[s.key])
        samples = sizes.latency_samples if kind == "postgres" else sizes.polled_latency_samples
        for s in subjects(kind):
            progress(f"{kind}: {s.label}: latency, {samples} samples")
            bench = functools.partial(latency, subject=s, samples=samples)
            delays = measure(kind, admin, bench)
            r[f"{kind}.p50.{s.key}"] = percentile(delays, 0.50) * 1000
            r[f"{kind}.p99.{s.key}"] = percentile(delays, 0.99) * 1000
        progress(f"{kind}: asyncjob: latency, worker in the same process")
        in_process = functools.partial(latency_in_process, samples=sizes.latency_samples)
        delays = measure(kind, admin, in_process)
        r[f"{kind}.p50in.asyncjob"] = percentile(delays, 0.50) * 1000
        r[f"{kind}.p99in.asyncjob"] = percentile(delays, 0.99) * 1000
    return r


# -- reporting ---------------------------------------------------------------------------------

TARGET_JOBS_PER_S = 10_000
TARGET_PG_P50_MS = 3.0


@dataclasses.dataclass(frozen=True)
class Line:
    """One line of a store's table: one measure for every subject."""

    label: str
    measure: str
    unit: str
    target: str = ""
    passes: Callable[[float], bool] | None = None


def lines_of(kind: str) -> tuple[Line, ...]:
    def fast(value: float) -> bool:
        return value >= TARGET_JOBS_PER_S

    def quick(value: float) -> bool:
        return value <= TARGET_PG_P50_MS

    jobs = f">= {TARGET_JOBS_PER_S:,} jobs/s"
    p50_target, p50_passes = (
        (f"<= {TARGET_PG_P50_MS:g} ms", quick) if kind == "postgres" else ("", None)
    )
    return (
        Line("enqueue, one at a time", "enq1", "jobs/s"),
        Line("enqueue, fastest way", "enqN", "jobs/s"),
        Line(f"enqueue, {CHUNK} performs at once", "enqC", "jobs/s"),
        Line("run, 1 worker process", "run", "jobs/s", jobs, fast),
        Line("enqueue (fastest) + run", "e2e", "jobs/s", jobs, fast),
        Line("enqueue (one at a time) + run", "e2e1", "jobs/s"),
        Line("producer CPU per job, fastest enqueue", "enqcpu", "us"),
        Line("worker process CPU per job, run", "wcpu", "us"),
        Line("machine CPU per job, run", "mcpu", "us"),
        Line("perform->start p50", "p50", "ms", p50_target, p50_passes),
        Line("perform->start p99", "p99", "ms"),
        Line("p50, worker in the same process", "p50in", "ms"),
        Line("p99, worker in the same process", "p99in", "ms"),
    )


def fmt(value: float | None, unit: str) -> str:
    """A figure with its unit, rounded for reading."""
    if value is None:
        return "-"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "us" and value < 10:
        return f"{value:.1f} us"
    return f"{value:,.0f} {unit}"


#: The unit of each measure, by the key's middle part.
UNITS = {
    "p50": "ms", "p99": "ms", "p50in": "ms", "p99in": "ms",
    "enqcpu": "us", "wcpu": "us", "mcpu": "us",
}  # fmt: skip


def verdict(line: Line, value: float) -> str:
    if line.passes is None:
        return ""
    return "PASS" if line.passes(value) else "MISS"


def render(rows: list[tuple[str, ...]], aligns: str, markdown: bool) -> str:
    """Rows (the first is the heading) as a plain or a Markdown table."""
    if markdown:
        head, *body = rows
        rule = ["---:" if a == ">" else "---" for a in aligns]
        return "\n".join("| " + " | ".join(r) + " |" for r in (head, tuple(rule), *body))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = [
        "  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, aligns, widths, strict=True)).rstrip()
        for r in rows
    ]
    return "\n".join([out[0], "-" * max(len(o) for o in out), *out[1:]])


def store_table(kind: str, medians: dict[str, float], markdown: bool) -> str:
    """A store's table: asyncjob, each baseline, asyncjob / each baseline."""
    subjects = subjects_of(kind)
    baselines = subjects[1:]
    head = (
        "measure",
        *(s.label for s in subjects),
        *(f"vs {s.label}" for s in baselines),
        "target",
        "",
    )
    rows: list[tuple[str, ...]] = [head]
    for line in lines_of(kind):
        mine = medians.get(f"{kind}.{line.measure}.asyncjob")
        if mine is None:
            continue
        values = [medians.get(f"{kind}.{line.measure}.{s.key}") for s in subjects]
        # A baseline can measure 0: the machine's CPU is counted in clock
        # ticks (10 ms), and a quick run of a raw loop can fit in one.
        ratios = ["" if not v else f"{mine / v:.2f}x" for v in values[1:]]
        rows.append(
            (
                line.label,
                *(fmt(v, line.unit) for v in values),
                *ratios,
                line.target,
                verdict(line, mine),
            )
        )
    aligns = "<" + ">" * (len(subjects) + len(baselines)) + "<<"
    return render(rows, aligns, markdown)


def database_table(kinds: Sequence[str], medians: dict[str, float], markdown: bool) -> str:
    """What the database itself costs per commit and per round trip."""
    names = {
        "postgres.durable": "PostgreSQL commit, synchronous_commit=on",
        "postgres.async": "PostgreSQL commit, synchronous_commit=off",
        "postgres.roundtrip": "PostgreSQL round trip (SELECT 1)",
        "sqlite.commit": "SQLite commit (WAL, synchronous=NORMAL)",
    }
    rows: list[tuple[str, ...]] = [("database", "p50", "p99")]
    for key, name in names.items():
        if key.split(".")[0] in kinds and f"{key}.p50" in medians:
            p50, p99 = medians[f"{key}.p50"], medians[f"{key}.p99"]
            rows.append((name, f"{p50:.3f} ms", f"{p99:.3f} ms"))
    return render(rows, "<>>", markdown)


def unit_of(key: str) -> str:
    """The unit of a raw figure, by its key."""
    middle, last = key.split(".")[1:]
    return "ms" if last in {"p50", "p99"} else UNITS.get(middle, "jobs/s")


def spread(samples: dict[str, list[float]], units: Callable[[str], str] = unit_of) -> str:
    """Each raw figure's median and range over the repetitions."""
    lines = []
    for key, values in samples.items():
        unit = units(key)
        lo, mid, hi = min(values), statistics.median(values), max(values)
        lines.append(f"  {key:<28} {fmt(mid, unit):>14}   range {fmt(lo, unit)} .. {fmt(hi, unit)}")
    return "\n".join(lines)


#: The libraries whose versions a run reports: (name shown, distribution).
LIBRARIES = (
    ("asyncjob", "asyncjob-runner"), ("procrastinate", "procrastinate"),
    ("pgqueuer", "pgqueuer"), ("asyncpg", "asyncpg"), ("psycopg", "psycopg"),
    ("aiosqlite", "aiosqlite"), ("SQLAlchemy", "SQLAlchemy"),
)  # fmt: skip


def versions(
    admin: str, kinds: Sequence[str], libraries: Sequence[tuple[str, str]] = LIBRARIES
) -> dict[str, str]:
    """What was measured: the libraries' and the databases' versions."""
    found = {name: importlib.metadata.version(distribution) for name, distribution in libraries}
    found["sqlite"] = sqlite3.sqlite_version
    if "postgres" in kinds:
        with psycopg.connect(admin) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        found["postgresql"] = str(row[0]).split()[0] if row else "?"
    return found


def header(sizes: Sizes, digest: str, found: dict[str, str]) -> str:
    """What was run, and where."""
    libraries = ", ".join(f"{k} {v}" for k, v in found.items() if k != "asyncjob")
    return (
        f"asyncjob {found['asyncjob']} (sources {digest}) SQL store benchmarks: "
        f"Python {platform.python_version()}, {os.cpu_count()} CPU(s), "
        f"medians of {sizes.repeat} repetition(s)\n"
        f"{libraries}\n"
        f"{sizes.jobs:,} no-op jobs per throughput measurement, one worker process with "
        f"concurrency {CONCURRENCY} (pgqueuer: batch_size {PGQUEUER_BATCH}); "
        f"{sizes.latency_samples} latency samples; ratio = asyncjob / baseline"
    )


def write_json(
    path: Path,
    sizes: Any,
    digest: str,
    found: dict[str, str],
    samples: dict[str, list[float]],
    **settings: Any,
) -> None:
    """Every sample, the medians, what was run and where (``sizes``: a
    dataclass; ``settings``: more of what was run)."""
    doc = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "sources": digest,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "versions": found,
        "sizes": dataclasses.asdict(sizes),
        **settings,
        "samples": samples,
        "medians": {k: statistics.median(v) for k, v in samples.items()},
        "retried": retried,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def closing(load_before: str, digest: str) -> list[str]:
    """The last lines of a run's report: the machine's load, the
    measurements made again, and whether the sources changed meanwhile."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    parts = [
        f"load average at the start: {load_before}; at the end: {load}; "
        f"measurements made again: {len(retried)}" + "".join(f"\n  {why}" for why in retried)
    ]
    if source_digest() != digest:
        parts.append("WARNING: the asyncjob sources changed during the run")
    return parts


# -- profiling ----------------------------------------------------------------------------------


def profile(
    sizes: Sizes, kinds: Sequence[str], admin: str, directory: Path, py_spy: str | None
) -> None:
    """One asyncjob throughput measurement per store, its enqueue under
    cProfile and its worker process under cProfile or py-spy; the top of
    each profile is printed."""
    directory.mkdir(parents=True, exist_ok=True)
    profiling = Profiling(directory, py_spy)
    for kind in kinds:
        subject = subjects_of(kind)[0]
        progress(f"{kind}: profiling asyncjob, {sizes.jobs:,} jobs")
        bench = functools.partial(
            enqueue_and_run, subject=subject, n=sizes.jobs, profiling=profiling
        )
        timing = measure(kind, admin, bench)
        print(
            f"\n=== {kind}: enqueue {sizes.jobs / timing.enqueue:,.0f} jobs/s, "
            f"run {sizes.jobs / timing.run:,.0f} jobs/s, worker CPU "
            f"{timing.worker_cpu / sizes.jobs * 1e6:,.0f} us per job (under the profilers) ==="
        )
        parts = [("enqueue", directory / f"{kind}-enqueue.prof")]
        if py_spy is None:
            parts.append(("worker", directory / f"{kind}-worker.prof"))
        for part, path in parts:
            for order in ("tottime", "cumulative"):
                print(f"\n--- {kind} {part}: {path}, by {order} ---")
                stats = pstats.Stats(str(path), stream=sys.stdout)
                stats.strip_dirs().sort_stats(order).print_stats(25)
        if py_spy is not None:
            path = directory / f"{kind}-worker.pyspy.txt"
            print(f"\n--- {kind} worker: {path} (py-spy) ---\n")
            print(summarize_py_spy(path))


def frame_package(frame: str) -> str:
    """Which library a py-spy frame, ``function (path:line)``, belongs to."""
    path = "/" + frame.rpartition(" (")[2]
    for name in ("asyncjob", "sqlalchemy", "asyncpg", "aiosqlite", "greenlet", "psycopg"):
        if f"/{name}/" in path:
            return name
    if "/asyncio/" in path or "/selectors.py" in path:
        return "asyncio"
    if "/sqlite3/" in path:
        return "sqlite3"
    return "other"


def short_frame(frame: str) -> str:
    """``function (file.py)``: no directories, no line number."""
    function, _, where = frame.rpartition(" (")
    if not where:
        return frame
    return f"{function} ({where.rsplit('/', 1)[-1].split(':', 1)[0]})"


def summarize_py_spy(path: Path, top: int = 25) -> str:
    """From py-spy's raw output (collapsed stacks): the share of samples in
    the event loop's thread and in helper threads (aiosqlite runs each
    SQLite connection's calls in a thread of its own); then, for the event
    loop's thread, self samples by library and by function, and inclusive
    samples by function. py-spy leaves out most idle samples; stacks of
    imports (the process's start) are left out here."""
    threads: collections.Counter[str] = collections.Counter()
    by_package: collections.Counter[str] = collections.Counter()
    self_samples: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    helper_self: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or "_find_and_load" in stack:
            continue
        samples = int(count)
        frames = stack.split(";")
        if frames[0].startswith("Thread._bootstrap"):
            threads["helper threads"] += samples
            helper_self[short_frame(frames[-1])] += samples
            continue
        threads["event loop thread"] += samples
        by_package[frame_package(frames[-1])] += samples
        self_samples[short_frame(frames[-1])] += samples
        for frame in {short_frame(f) for f in frames if frame_package(f) != "other"}:
            if not frame.endswith(("(runners.py)", "(base_events.py)", "(events.py)")):
                inclusive[frame] += samples
    total, loop = sum(threads.values()), threads["event loop thread"]
    if not loop:
        return "no samples"

    def share(counter: collections.Counter[str], whole: int, n: int | None = None) -> list[str]:
        return [f"  {k / whole:6.1%}  {name}" for name, k in counter.most_common(n)]

    out = [f"{total:,} samples ({PY_SPY_RATE} per second), by thread:", *share(threads, total)]
    if helper_self:
        out += ["", "helper threads, self, by function:", *share(helper_self, total, 5)]
    out += ["", "event loop thread, self, by library:", *share(by_package, loop)]
    out += ["", "event loop thread, self, by function:", *share(self_samples, loop, top)]
    out += ["", "event loop thread, inclusive, by function (libraries):"]
    out += share(inclusive, loop, top)
    return "\n".join(out)


# -- the worker process's side -----------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """Run as the worker process (``--serve``)."""
    db = Database(args.serve.split("-", 1)[0], args.url, args.dsn)
    return asyncio.run(_serve(db, args.serve, args.worker_profile))


async def _serve(db: Database, name: str, profile_path: Path | None) -> int:
    async with asyncio.timeout(WORKER_LIFETIME):
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        server = SERVERS[name](db)
        await server.prepare()
        try:
            print("ready", flush=True)
            if (await stdin.readline()).strip() != b"go":
                return 1
            profiler = None if profile_path is None else cProfile.Profile()
            if profiler is not None:
                profiler.enable()
            cpu = time.process_time()
            stop = asyncio.Event()
            work = asyncio.create_task(server.run(stop))
            asked = asyncio.create_task(stdin.readline())  # "stop", or the end of stdin
            await asyncio.wait({work, asked}, return_when=asyncio.FIRST_COMPLETED)
            cpu = time.process_time() - cpu
            stop.set()
            await work
            if profiler is not None and profile_path is not None:
                profiler.disable()
                profiler.dump_stats(profile_path)
        finally:
            await server.close()
        print(f"ran {Counters.ran} cpu {cpu!r}", flush=True)
    return 0


# -- the command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer jobs and samples")
    parser.add_argument("--repeat", type=int, help="repetitions (default 3, or 2 with --quick)")
    parser.add_argument("--jobs", type=int, help="jobs per throughput measurement")
    parser.add_argument("--only", choices=KINDS, help="one kind of database only")
    parser.add_argument(
        "--pg", default=DEFAULT_PG, metavar="URL",
        help="the PostgreSQL server's maintenance database, from which the benchmark "
        "creates (and drops) a database per measurement; default $ASYNCJOB_BENCH_PG "
        "or postgresql://postgres@127.0.0.1:5432/postgres",
    )  # fmt: skip
    parser.add_argument(
        "--subjects", metavar="KEYS",
        help="measure only these, comma-separated: asyncjob, procrastinate, pgqueuer, raw "
        "(the others' columns stay empty: for a quick look while working on one)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables too")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="instead of the benchmark: profile asyncjob's enqueue and worker (cProfile)",
    )  # fmt: skip
    parser.add_argument(
        "--py-spy", action="store_true",
        help="with --profile: sample the worker process with py-spy instead of cProfile",
    )  # fmt: skip
    # The worker process's side.
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--worker-profile", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve(args)
    sizes = QUICK if args.quick else FULL
    if args.repeat is not None:
        if args.repeat < 1:
            sys.exit("--repeat must be at least 1")
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    if args.jobs is not None:
        sizes = dataclasses.replace(sizes, jobs=args.jobs)
    kinds = (args.only,) if args.only else KINDS
    try:
        if args.profile is not None:
            py_spy = None
            if args.py_spy:
                py_spy = shutil.which("py-spy") or shutil.which(
                    "py-spy", path=str(Path(sys.executable).parent)
                )
                if py_spy is None:
                    sys.exit("--py-spy: no py-spy program found (pip install py-spy)")
            profile(sizes, kinds, args.pg, args.profile, py_spy)
            return 0
        return run_benchmark(sizes, kinds, args)
    finally:
        drop_leftovers(args.pg)


def run_benchmark(sizes: Sizes, kinds: Sequence[str], args: argparse.Namespace) -> int:
    digest = source_digest()  # of the code just imported, before any of it runs
    found = versions(args.pg, kinds)
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    keys = None if args.subjects is None else frozenset(args.subjects.split(","))
    known = {s.key for s in (*POSTGRES, *SQLITE)}
    if keys is not None and not keys <= known:
        unknown, valid = ", ".join(sorted(keys - known)), ", ".join(sorted(known))
        sys.exit(f"--subjects: unknown {unknown}; known: {valid}")
    samples: dict[str, list[float]] = {}
    for i in range(sizes.repeat):
        print(f"repetition {i + 1}/{sizes.repeat} ...", file=sys.stderr, flush=True)
        for key, value in one_repetition(sizes, kinds, args.pg, keys).items():
            samples.setdefault(key, []).append(value)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    parts = [header(sizes, digest, found)]
    for markdown in (False, True) if args.markdown else (False,):
        for kind in kinds:
            parts.append(f"{kind}:\n\n{store_table(kind, medians, markdown)}")
        parts.append(f"database:\n\n{database_table(kinds, medians, markdown)}")
    parts += ["medians and ranges:", spread(samples), *closing(load_before, digest)]
    print(*parts, sep="\n\n")
    if args.json is not None:
        write_json(args.json, sizes, digest, found, samples, concurrency=CONCURRENCY, chunk=CHUNK)
    return 0


if __name__ == "__main__":
    sys.exit(main())

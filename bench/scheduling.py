"""Scheduling benchmarks of the SQL store, on PostgreSQL and SQLite: claims
from a deep queue of mixed priorities and queues, what delayed jobs cost
an idle worker, and how late delayed jobs start.

Usage::

    python bench/scheduling.py [--quick] [--repeat N] [--only KIND] [--pg URL]
                               [--json PATH] [--markdown]

Every measurement gets a fresh database (see ``bench/sql.py``: a temporary
SQLite file, or a database of its own on the PostgreSQL server, dropped
afterwards) and a fresh event loop. Each figure is the median of the
repetitions, and each ratio compares it with a baseline measured in the
same repetition:

1. **Claims.** ``store.claim(100)`` in a loop, from a million queued jobs
   (written straight into the jobs table, as the store would have them)
   spread over 10 priorities and 5 queues, and by a worker that takes 2 of
   the 5 queues; against the same number of jobs in one queue at one
   priority. Priorities live in the claim indexes: a claim should read the
   first rows of an index however deep and mixed the queue.
2. **Idle cost of delayed jobs.** The CPU of a real ``asyncjob worker``
   process over an idle stretch, with 100,000 jobs due in an hour in the
   store, against the same worker over an empty store. A waiting job
   should cost nothing: the worker sleeps until the earliest is due.
3. **Lateness.** Jobs performed with ``delay=0.2``, one at a time: from
   the moment the store says a job is due (its ``run_after``) to its first
   line; with the worker in the performing process, and in another process.
   The baseline is a job due at once (no delay), measured the same way.

Linux only: CPU times come from ``/proc``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import os
import platform
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import IO, Any

import psycopg
import scheduling_jobs
from core import percentile, source_digest
from scheduling_jobs import PARENT_ENV, stamp
from sql import (
    DEFAULT_PG,
    KINDS,
    PHASE_TIMEOUT,
    WORKER_START_TIMEOUT,
    WORKER_STOP_TIMEOUT,
    Probe,
    closing,
    drop_leftovers,
    fmt,
    measure,
    progress,
    render,
    spread,
    tail,
    versions,
    write_json,
)
from sql_subjects import Database

import asyncjob
from asyncjob.stores.sql import SQLStore

#: Jobs taken per claim: what a worker claims at most (``CLAIM_BATCH``).
CLAIM_BATCH = 100
#: Claims made before the clock starts (a statement's first plan, caches).
CLAIM_WARMUP = 5
#: The lease of the claiming store: longer than any measurement, so that the
#: store's lease thread (every third of a lease) never renews the tens of
#: thousands of jobs claimed and held while claims are timed.
CLAIM_LEASE = 3600.0
#: Delayed jobs are due this far ahead (seconds): long after the idle measurement.
DELAYED_BY = 3600.0
#: The delay of the lateness measurement (seconds).
LATE_DELAY = 0.2
#: Lateness samples thrown away first (connections, first plans).
LATE_WARMUP = 3
#: Pause after each lateness sample, plus up to LATE_JITTER at random: the
#: next job is performed at any point of the worker's cycle (its polls,
#: its maintenance), so that samples are independent of it.
LATE_GAP = 0.02
LATE_JITTER = 0.25
#: A job's start that takes longer than this to arrive is an error (seconds).
STAMP_TIMEOUT = 30.0
#: How often the benchmark looks at a starting worker's log (seconds).
READY_POLL = 0.02
#: What ``asyncjob worker`` logs once it runs.
READY_LINE = "worker running"
#: What ``asyncjob worker`` runs: the module is found through PYTHONPATH.
JOBS_MODULE = "scheduling_jobs"
HERE = Path(__file__).resolve().parent
#: The queues of the mixed layout, and the two a worker takes of them.
MIXED_QUEUES = 5
MIXED_PRIORITIES = 10
TAKEN = frozenset({"q1", "q3"})

TARGET_RATIO = 0.8
TARGET_IDLE_PERCENT = 1.0
TARGET_LATE_P50_MS = 5.0


#: The libraries whose versions a run reports: (name shown, distribution).
LIBRARIES = (
    ("asyncjob", "asyncjob-runner"),
    ("asyncpg", "asyncpg"),
    ("aiosqlite", "aiosqlite"),
    ("SQLAlchemy", "SQLAlchemy"),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work one repetition does."""

    queued: int  # jobs in the store when claims are timed
    claimed: int  # jobs claimed while timed
    delayed: int  # jobs due in an hour while the worker idles
    idle_seconds: float  # how long the idle worker's CPU is counted
    idle_warmup: float  # seconds it runs before that
    late_samples: int
    repeat: int


FULL = Sizes(
    queued=1_000_000, claimed=20_000, delayed=100_000, idle_seconds=20.0, idle_warmup=3.0,
    late_samples=50, repeat=3,
)  # fmt: skip
QUICK = Sizes(
    queued=100_000, claimed=5_000, delayed=100_000, idle_seconds=10.0, idle_warmup=2.0,
    late_samples=20, repeat=1,
)  # fmt: skip


# -- the store's tables, filled in bulk ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """How queued jobs are spread: over ``queues`` queues (``default``, or
    ``q0``, ``q1``...) and ``priorities`` priorities (0, or -40 to 50 by 10)."""

    queues: int
    priorities: int

    @property
    def label(self) -> str:
        if self.queues == self.priorities == 1:
            return "one queue, one priority"
        return f"{self.priorities} priorities x {self.queues} queues"


FLAT = Layout(1, 1)
MIXED = Layout(MIXED_QUEUES, MIXED_PRIORITIES)


async def create_schema(db: Database) -> None:
    """The store's tables, indexes and triggers, as a first ``SQLStore`` makes them."""
    store = SQLStore(db.url)
    await store.open()
    await store.close()


def bulk_insert_sql(kind: str, n: int, layout: Layout, first_due: float) -> str:
    """One statement writing ``n`` registered no-op jobs, each as a perform
    would write it (``new_job_sql``: not leased, no owner, attempts 0),
    generated by the database itself: far faster than sending the rows.

    Job ``i`` is due at ``first_due + i`` microseconds (``queued`` if that
    is past, else ``scheduled``: the store's state of a job waiting for its
    time); its priority is ``i`` modulo the priorities, its queue the next
    digit, so that every (queue, priority) pair holds as many jobs, in the
    order they came due, and priorities are interleaved in the table as
    they would be in arrival order (a tenth of the rows, one in ten, are
    of the highest priority). The ids are random, as the store's are."""
    state = "queued" if first_due + n * 1e-6 < time.time() else "scheduled"
    if layout.queues == 1:
        queue = "'default'"
    else:
        queue = f"'q' || ((i / {layout.priorities}) % {layout.queues})"
    priority = "0" if layout.priorities == 1 else f"(i % {layout.priorities}) * 10 - 40"
    if kind == "postgres":
        job_id, source = "md5(random()::text || i::text)", f"generate_series(0, {n - 1}) AS i"
        prefix = ""
    else:
        job_id, source = "lower(hex(randomblob(16)))", "seq"
        prefix = (
            f"WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < {n - 1})"
        )
    due = f"{first_due!r} + i * 1e-6"
    return f"""{prefix}
        INSERT INTO asyncjob_jobs (id, name, registered, owner, locked_by, lease_expires_at,
                                   state, args, kwargs, attempts, enqueued_at, run_after,
                                   queue, priority, unique_key)
        SELECT {job_id}, '{scheduling_jobs.NOOP}', true, NULL, NULL, NULL, '{state}', '[]', '{{}}',
               0, {due}, {due}, {queue}, {priority}, NULL
        FROM {source}"""


async def fill(db: Database, n: int, layout: Layout, *, first_due: float) -> None:
    """Create the schema and write ``n`` jobs in one statement; then leave
    the database as it would be with that many jobs waiting a while: on
    PostgreSQL vacuumed and analyzed (autovacuum would have, and the
    planner needs the statistics; this server may run with it off), and a
    checkpoint written, so that the claims timed next do not share the
    disk with the write-back of a million rows; on SQLite the log
    checkpointed into the file, for the same reason (SQLite gathers no
    statistics unless asked, and the store never asks)."""
    await create_schema(db)
    if n == 0:
        return
    sql = bulk_insert_sql(db.kind, n, layout, first_due)
    if db.kind == "postgres":
        async with await psycopg.AsyncConnection.connect(db.dsn, autocommit=True) as conn:
            await conn.execute(sql.encode())
            await conn.execute(b"VACUUM (ANALYZE) asyncjob_jobs")
            await conn.execute(b"CHECKPOINT")
        return

    def write() -> None:
        conn = sqlite3.connect(db.dsn, isolation_level=None, timeout=30.0)
        try:
            conn.execute(sql)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    await asyncio.to_thread(write)


# -- 1. claims -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Claims:
    """Jobs claimed per second, and each claim's seconds."""

    rate: float
    seconds: list[float]


async def claims(
    db: Database, n: int, claimed: int, layout: Layout, queues: frozenset[str] | None
) -> Claims:
    """``n`` jobs queued in ``layout``; then the time of ``store.claim(100,
    queues)`` again and again until ``claimed`` jobs are claimed (after
    CLAIM_WARMUP claims). The store is opened on its own, without a
    runner, and only claims: no job runs, so that the figure is the
    claim's alone (the statement, its round trip, decoding the rows).

    Each claimed job is checked: decoded without a problem, of the queues
    asked for, and no higher in priority than any claimed before it. Then
    the store forgets it, as if it had ended: a worker holds as many jobs
    as it runs, not every job it ever claimed, and what it holds costs it
    (on SQLite the store once heard its own commits and looked for cancels
    of the jobs it held after each: with 20,000 held, those look-ups took
    as long as the claims)."""
    await fill(db, n, layout, first_due=time.time() - 60.0 - n * 1e-6)
    store = SQLStore(db.url, lease=CLAIM_LEASE)
    await store.open()
    try:
        last_priority = 100
        seconds: list[float] = []
        taken = 0
        async with asyncio.timeout(PHASE_TIMEOUT):
            for i in range(CLAIM_WARMUP + claimed // CLAIM_BATCH):
                start = time.perf_counter()
                batch = await store.claim(CLAIM_BATCH, queues)
                took = time.perf_counter() - start
                if len(batch) != CLAIM_BATCH:
                    raise RuntimeError(f"claimed {len(batch)} jobs of {CLAIM_BATCH} asked")
                for job in batch:
                    if job.problem is not None or (queues is not None and job.queue not in queues):
                        raise RuntimeError(f"claimed a job it should not have: {job}")
                    if job.priority > last_priority:
                        raise RuntimeError(f"claimed priority {job.priority} after {last_priority}")
                    last_priority = job.priority
                    store.held.pop(job.id)  # as if it had ended (see above)
                if i >= CLAIM_WARMUP:
                    seconds.append(took)
                    taken += len(batch)
    finally:
        await store.close()
    return Claims(taken / sum(seconds), seconds)


# -- worker processes ------------------------------------------------------------------

#: Worker processes started and not yet seen to end: killed at exit if need be.
_started: set[int] = set()


class CliWorker:
    """``python -m asyncjob worker --store URL --import scheduling_jobs``:
    what a user runs, with its defaults (a poll every second where the store
    hears of other processes' jobs, a maintenance round every 10 s).

    Ready once it logs that it runs; stopped with SIGTERM (a graceful stop),
    killed if that takes longer than WORKER_STOP_TIMEOUT. Its log goes to a
    temporary file: a pipe nobody reads could fill and block it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def __aenter__(self) -> CliWorker:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env[PARENT_ENV] = str(os.getpid())
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __aexit__
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asyncjob", "worker",
            "--store", self.db.url, "--import", JOBS_MODULE,
            stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=env,
        )  # fmt: skip
        _started.add(self.proc.pid)
        try:
            async with asyncio.timeout(WORKER_START_TIMEOUT):
                while READY_LINE not in self.log():
                    self.check_alive()
                    await asyncio.sleep(READY_POLL)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, None)
            raise
        return self

    async def __aexit__(self, exc_type: object, *exc_info: object) -> None:
        proc = self.proc
        try:
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(WORKER_STOP_TIMEOUT):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    if exc_type is None:
                        raise RuntimeError(
                            f"the worker did not stop on SIGTERM:\n{self.log()}"
                        ) from None
            if proc is not None:
                _started.discard(proc.pid)
            if proc is not None and proc.returncode != 0 and exc_type is None:
                raise RuntimeError(f"the worker exited with {proc.returncode}:\n{self.log()}")
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def log(self) -> str:
        """What the worker wrote so far (its end)."""
        return tail(self._log)

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise RuntimeError(f"the worker process ended:\n{self.log()}")

    def cpu(self) -> float:
        """CPU seconds it spent so far, all its threads."""
        assert self.proc is not None
        found = process_cpu(self.proc.pid)
        if found is None:
            raise RuntimeError(f"the worker process is gone:\n{self.log()}")
        return found


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user and system, all threads) process ``pid`` has spent,
    from ``/proc``; None once it is gone or cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name, in parentheses, may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kill_leftovers() -> None:
    """Kill the worker processes an interrupted run left running: by their
    ids, and only if they still run ``asyncjob worker`` with our jobs."""
    for pid in list(_started):
        with contextlib.suppress(OSError):
            if JOBS_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        _started.discard(pid)


# -- 2. the idle cost of delayed jobs --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Idle:
    """Percent of one core spent by the idle worker process, and by the
    PostgreSQL server for its connections (None on SQLite, or where the
    server's processes cannot be read)."""

    worker: float
    server: float | None


class ProbeRows(Probe):
    """``sql.Probe`` that can return every row of a query."""

    async def __aenter__(self) -> ProbeRows:
        await super().__aenter__()
        return self

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        if self._pg is not None:
            cursor = await self._pg.execute(query.encode())
            return await cursor.fetchall()
        assert self._sqlite is not None
        async with self._sqlite.execute(query) as found:
            return [tuple(row) for row in await found.fetchall()]


async def server_pids(probe: ProbeRows) -> list[int]:
    """The server processes of every connection to the database but the probe's."""
    found = await probe.rows(
        "SELECT pid FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return [int(row[0]) for row in found]


def cpu_of(pids: Sequence[int]) -> dict[int, float]:
    """The CPU seconds of each of ``pids`` that can be read."""
    found = {pid: process_cpu(pid) for pid in pids}
    return {pid: cpu for pid, cpu in found.items() if cpu is not None}


async def idle(db: Database, delayed: int, seconds: float, warmup: float) -> Idle:
    """``delayed`` jobs due in an hour (none when 0: the baseline), then an
    ``asyncjob worker`` started, given ``warmup`` seconds, and its CPU
    counted over ``seconds``; on PostgreSQL, the CPU of the server's
    processes for its connections too (the queries a worker makes while
    it waits cost the server as well). The jobs must all still be waiting
    at the end."""
    await fill(db, delayed, MIXED, first_due=time.time() + DELAYED_BY)
    async with ProbeRows(db) as probe, CliWorker(db) as worker:
        await asyncio.sleep(warmup)
        pids = await server_pids(probe) if db.kind == "postgres" else []
        server_before = cpu_of(pids)
        cpu, start = worker.cpu(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, elapsed = worker.cpu() - cpu, time.monotonic() - start
        server_after = cpu_of(pids)
        worker.check_alive()
        waiting = await probe.count("SELECT count(*) FROM asyncjob_jobs WHERE state = 'scheduled'")
    if waiting != delayed:
        raise RuntimeError(f"{delayed - waiting} of {delayed} delayed jobs moved meanwhile")
    server = None
    if server_before and set(server_after) == set(server_before):
        server = sum(server_after[p] - server_before[p] for p in server_before) / elapsed * 100
    return Idle(cpu / elapsed * 100, server)


# -- 3. lateness -----------------------------------------------------------------------


class StartReceiver(asyncio.DatagramProtocol):
    """Receives what the ``stamp`` jobs send: their id and when they started."""

    def __init__(self) -> None:
        self.starts: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        job_id, started = data.decode().split()
        self.starts.put_nowait((job_id, float(started)))

    async def start_of(self, job_id: str) -> float:
        """When job ``job_id`` started; an error if that takes STAMP_TIMEOUT."""
        async with asyncio.timeout(STAMP_TIMEOUT):
            while True:
                found, started = await self.starts.get()
                if found == job_id:
                    return started


@contextlib.asynccontextmanager
async def start_receiver() -> AsyncIterator[tuple[StartReceiver, int]]:
    """A receiver listening on a free UDP port of 127.0.0.1, and the port."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        StartReceiver, local_addr=("127.0.0.1", 0)
    )
    try:
        yield protocol, int(transport.get_extra_info("sockname")[1])
    finally:
        transport.close()


async def lateness(db: Database, delay: float, samples: int, elsewhere: bool) -> list[float]:
    """Seconds from when each job was due to its first line: ``samples``
    ``stamp`` jobs performed with ``delay`` (0: due at once, the baseline),
    one at a time, after LATE_WARMUP thrown away; the worker is this
    process's runner, or with ``elsewhere`` an ``asyncjob worker`` process
    (this runner then only performs).

    When a job was due is its ``run_after`` column, read after it ran
    (``JobStatus.run_after`` is None once a job is due): the store's time
    of the perform, by the database's clock, plus the delay. Its start is
    ``time.time()`` in the job; on one machine both are the same clock
    (SQLite's reads it to the millisecond only: its due times are up to
    1 ms early, which counts as lateness here)."""
    rng = random.Random(20261204)
    spec = asyncjob.using(stamp, delay=delay)
    late: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        receiver, port = await stack.enter_async_context(start_receiver())
        probe = await stack.enter_async_context(ProbeRows(db))
        worker = await stack.enter_async_context(CliWorker(db)) if elsewhere else None
        runner = asyncjob.Runner(SQLStore(db.url), producer_only=elsewhere)
        await stack.enter_async_context(runner)
        async with asyncio.timeout(PHASE_TIMEOUT):
            for _ in range(LATE_WARMUP + samples):
                job_id = await runner.perform(spec, port)
                started = await receiver.start_of(job_id)
                if not job_id.isalnum():
                    raise RuntimeError(f"unexpected job id {job_id!r}")
                row = await probe.row(f"SELECT run_after FROM asyncjob_jobs WHERE id = '{job_id}'")
                if row is None:
                    raise RuntimeError(f"job {job_id} is not in the store")
                late.append(started - float(row[0]))
                if worker is not None:
                    worker.check_alive()
                await asyncio.sleep(LATE_GAP + rng.uniform(0.0, LATE_JITTER))
    return late[LATE_WARMUP:]


# -- one repetition --------------------------------------------------------------------


def one_repetition(sizes: Sizes, kinds: Sequence[str], admin: str) -> dict[str, float]:
    """Every measurement once, each next to its baseline, on fresh databases."""
    r: dict[str, float] = {}
    for kind in kinds:
        cases = (("flat", FLAT, None), ("mixed", MIXED, None), ("mixed2", MIXED, TAKEN))
        for key, layout, queues in cases:
            which = "every queue" if queues is None else f"queues {', '.join(sorted(queues))}"
            progress(
                f"{kind}: claims of {CLAIM_BATCH} from {sizes.queued:,} jobs, "
                f"{layout.label}, {which}"
            )
            bench = functools.partial(
                claims, n=sizes.queued, claimed=sizes.claimed, layout=layout, queues=queues
            )
            found = measure(kind, admin, bench)
            r[f"{kind}.claims.{key}"] = found.rate
            r[f"{kind}.claimp99.{key}"] = percentile(found.seconds, 0.99) * 1000
        for key, delayed in (("empty", 0), ("delayed", sizes.delayed)):
            progress(f"{kind}: idle worker, {delayed:,} delayed jobs, {sizes.idle_seconds:g} s")
            bench_idle = functools.partial(
                idle, delayed=delayed, seconds=sizes.idle_seconds, warmup=sizes.idle_warmup
            )
            cost = measure(kind, admin, bench_idle)
            r[f"{kind}.idle.{key}"] = cost.worker
            if cost.server is not None:
                r[f"{kind}.idlesrv.{key}"] = cost.server
        for where, elsewhere in (("here", False), ("there", True)):
            for key, delay in (("due", 0.0), ("late", LATE_DELAY)):
                progress(
                    f"{kind}: lateness, delay {delay:g} s, worker "
                    f"{'in another process' if elsewhere else 'in this process'}, "
                    f"{sizes.late_samples} samples"
                )
                bench_late = functools.partial(
                    lateness, delay=delay, samples=sizes.late_samples, elsewhere=elsewhere
                )
                late = measure(kind, admin, bench_late)
                r[f"{kind}.{key}{where}.p50"] = percentile(late, 0.50) * 1000
                r[f"{kind}.{key}{where}.p99"] = percentile(late, 0.99) * 1000
    return r


# -- reporting -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Line:
    """One line of a database's table: a figure, its baseline, a target."""

    label: str
    key: str
    unit: str
    baseline: str | None = None
    baseline_label: str = ""
    target: str = ""
    passes: Callable[[float, float | None], bool] | None = None


def lines(sizes: Sizes) -> tuple[Line, ...]:
    def near_flat(value: float, flat: float | None) -> bool:
        return flat is not None and value / flat >= TARGET_RATIO

    def cheap(value: float, _: float | None) -> bool:
        return value < TARGET_IDLE_PERCENT

    def prompt(value: float, _: float | None) -> bool:
        return value <= TARGET_LATE_P50_MS

    flat = f"flat: {FLAT.label}"
    ratio = f">= {TARGET_RATIO:g}x flat"
    empty = "empty store"
    at_once = "due at once"
    late = f"<= {TARGET_LATE_P50_MS:g} ms"
    delayed = f"{sizes.delayed:,} delayed jobs"
    return (
        Line(f"claims, {MIXED.label}", "claims.mixed", "jobs/s", "claims.flat", flat, ratio,
             near_flat),
        Line(f"claims, {MIXED.label}, 2 queues taken", "claims.mixed2", "jobs/s", "claims.flat",
             flat, ratio, near_flat),
        Line("slowest claim (p99), mixed", "claimp99.mixed", "ms", "claimp99.flat", flat),
        Line("slowest claim (p99), 2 queues taken", "claimp99.mixed2", "ms", "claimp99.flat",
             flat),
        Line(f"idle worker CPU, {delayed}", "idle.delayed", "%", "idle.empty", empty,
             f"< {TARGET_IDLE_PERCENT:g} %", cheap),
        Line(f"server CPU for it, {delayed}", "idlesrv.delayed", "%", "idlesrv.empty", empty),
        Line(f"delay {LATE_DELAY:g} s: due->start p50, worker here", "latehere.p50", "ms",
             "duehere.p50", at_once, late, prompt),
        Line(f"delay {LATE_DELAY:g} s: due->start p99, worker here", "latehere.p99", "ms",
             "duehere.p99", at_once),
        Line(f"delay {LATE_DELAY:g} s: due->start p50, worker process", "latethere.p50", "ms",
             "duethere.p50", at_once, late, prompt),
        Line(f"delay {LATE_DELAY:g} s: due->start p99, worker process", "latethere.p99", "ms",
             "duethere.p99", at_once),
    )  # fmt: skip


def unit_of(key: str) -> str:
    """The unit of a raw figure, by the middle of its key."""
    middle = key.split(".")[1]
    if middle.startswith("idle"):
        return "%"
    return "jobs/s" if middle == "claims" else "ms"


def table(kind: str, sizes: Sizes, medians: dict[str, float], markdown: bool) -> str:
    """A database's table: each figure, its baseline, their ratio, its target."""
    rows: list[tuple[str, ...]] = [
        ("measure", "value", "baseline", "", "ratio", "target", "")
    ]  # fmt: skip
    for line in lines(sizes):
        value = medians.get(f"{kind}.{line.key}")
        if value is None:
            continue
        base = None if line.baseline is None else medians.get(f"{kind}.{line.baseline}")
        ratio = f"{value / base:.2f}x" if base else ""
        verdict = ""
        if line.passes is not None:
            verdict = "PASS" if line.passes(value, base) else "MISS"
        rows.append(
            (
                line.label,
                fmt(value, line.unit),
                fmt(base, line.unit),
                line.baseline_label,
                ratio,
                line.target,
                verdict,
            )
        )
    return render(rows, "<>><><<", markdown)


def header(sizes: Sizes, digest: str, found: dict[str, str]) -> str:
    """What was run, and where."""
    libraries = ", ".join(f"{k} {v}" for k, v in found.items() if k != "asyncjob")
    return (
        f"asyncjob {found['asyncjob']} (sources {digest}) scheduling benchmarks: "
        f"Python {platform.python_version()}, {os.cpu_count()} CPU(s), "
        f"medians of {sizes.repeat} repetition(s)\n"
        f"{libraries}\n"
        f"claims: {sizes.claimed:,} jobs claimed {CLAIM_BATCH} at a time from "
        f"{sizes.queued:,} queued (a fresh database each); "
        f"idle: `asyncjob worker` CPU over {sizes.idle_seconds:g} s after "
        f"{sizes.idle_warmup:g} s, % of one core, counted in ticks of "
        f"{100 / os.sysconf('SC_CLK_TCK') / sizes.idle_seconds:.2g} %; "
        f"lateness: {sizes.late_samples} jobs one at a time, due->start; "
        "ratio = value / baseline"
    )


# -- the command line ------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true",
        help="100,000 queued jobs, 10 s idle, 20 lateness samples, 1 repetition (about 2 min)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, help="repetitions (default 3, or 1 with --quick)")
    parser.add_argument("--only", choices=KINDS, help="one kind of database only")
    parser.add_argument(
        "--pg", default=DEFAULT_PG, metavar="URL",
        help="the PostgreSQL server's maintenance database, from which the benchmark "
        "creates (and drops) a database per measurement; default $ASYNCJOB_BENCH_PG "
        "or postgresql://postgres@127.0.0.1:5432/postgres",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables too")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.repeat is not None:
        if args.repeat < 1:
            sys.exit("--repeat must be at least 1")
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    kinds = (args.only,) if args.only else KINDS
    try:
        return run_benchmark(sizes, kinds, args)
    finally:
        kill_leftovers()
        drop_leftovers(args.pg)


def run_benchmark(sizes: Sizes, kinds: Sequence[str], args: argparse.Namespace) -> int:
    digest = source_digest()  # of the code just imported, before any of it runs
    found = versions(args.pg, kinds, LIBRARIES)
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    samples: dict[str, list[float]] = {}
    for i in range(sizes.repeat):
        print(f"repetition {i + 1}/{sizes.repeat} ...", file=sys.stderr, flush=True)
        for key, value in one_repetition(sizes, kinds, args.pg).items():
            samples.setdefault(key, []).append(value)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    parts = [header(sizes, digest, found)]
    for markdown in (False, True) if args.markdown else (False,):
        parts += [f"{kind}:\n\n{table(kind, sizes, medians, markdown)}" for kind in kinds]
    parts += ["medians and ranges:", spread(samples, unit_of), *closing(load_before, digest)]
    print(*parts, sep="\n\n")
    if args.json is not None:
        write_json(args.json, sizes, digest, found, samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())

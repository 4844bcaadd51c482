"""What ``bench/sql.py`` measures: the same no-op jobs queued and run by
asyncjob's SQL store, procrastinate, pgqueuer and raw SQL loops.

Each subject has two sides:

- a *producer*, in the benchmark's own process, that enqueues jobs: one at
  a time, as fast as the library allows (concurrently or in batches), and
  the ``stamp`` job of the latency measurement;
- a *server*, run in a worker process of its own (``bench/sql.py --serve``),
  that runs them with ``CONCURRENCY`` jobs at once.

The job bodies are the same functions everywhere: :func:`noop`, and
:func:`stamp`, which sends the moment it started to the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import aiosqlite
import asyncpg

import asyncjob
from asyncjob.stores.sql import SQLStore
from asyncjob.stores.sql._schema import DUE, RUNNING

#: Jobs one worker process runs at once: asyncjob's ``Runner(concurrency=)``,
#: procrastinate's worker ``concurrency``, pgqueuer's ``max_concurrent_tasks``,
#: and the raw loops' claim batch.
CONCURRENCY = 50
#: Jobs per ``asyncio.gather`` (asyncjob) or per batch (the others) when a
#: producer enqueues as fast as it can.
CHUNK = 500
#: pgqueuer's dequeue batch (its ``max_concurrent_tasks`` must be at least twice it).
PGQUEUER_BATCH = 25
#: How often a worker looks for jobs from another process when nothing tells
#: it of them (seconds): the SQL store's default, used by the raw SQLite loop too.
POLL_INTERVAL = 0.25
#: The SQL store's defaults, as ``asyncjob worker`` passes them.
LEASE = 30.0
GRACE_PERIOD = 10.0

NOOP = "bench_sql.noop"
STAMP = "bench_sql.stamp"


# -- the jobs ------------------------------------------------------------------


class Counters:
    """What a worker process did: how many no-op jobs ran in it."""

    ran = 0
    sock: socket.socket | None = None


@asyncjob.job(name=NOOP)
async def noop() -> None:
    """The job of the throughput measurement: counts itself, nothing else."""
    Counters.ran += 1


@asyncjob.job(name=STAMP)
async def stamp(port: int) -> None:
    """The job of the latency measurement: sends when it started
    (``time.monotonic()``, one clock for all processes on Linux) to the
    benchmark's UDP ``port`` on 127.0.0.1."""
    started = time.monotonic()
    if Counters.sock is None:
        Counters.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    Counters.sock.sendto(repr(started).encode(), ("127.0.0.1", port))


# -- databases -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Database:
    """One fresh database for one measurement."""

    kind: str  # "postgres" or "sqlite"
    url: str  # SQLAlchemy's URL, for asyncjob
    dsn: str  # a libpq URL (postgres), or the file's path (sqlite)


async def sqlite_connect(path: str) -> aiosqlite.Connection:
    """A connection in autocommit mode, with the pragmas asyncjob's store sets
    (WAL, synchronous=NORMAL, a busy timeout)."""
    conn = await aiosqlite.connect(path, isolation_level=None, timeout=30.0)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA synchronous=NORMAL")
    await conn.execute("PRAGMA busy_timeout=30000")
    return conn


# -- producers -----------------------------------------------------------------


class Producer(Protocol):
    """Enqueues jobs from the benchmark's process."""

    async def one(self) -> None:
        """Enqueue one no-op job, in a transaction of its own."""

    async def many(self, n: int) -> None:
        """Enqueue ``n`` no-op jobs as fast as the library allows."""

    async def stamp(self, port: int) -> None:
        """Enqueue one :func:`stamp` job."""


class AsyncjobProducer:
    """``await runner.perform(...)``, and ``runner.perform_many()`` in batches
    of CHUNK, on a runner of the SQL store."""

    def __init__(self, runner: asyncjob.Runner) -> None:
        self.runner = runner

    async def one(self) -> None:
        await self.runner.perform(noop)

    async def many(self, n: int) -> None:
        for first in range(0, n, CHUNK):
            await self.runner.perform_many(noop, [()] * min(CHUNK, n - first))

    async def concurrently(self, n: int) -> None:
        """CHUNK performs at a time, each awaited on its own (group commit)."""
        for first in range(0, n, CHUNK):
            size = min(CHUNK, n - first)
            await asyncio.gather(*(self.runner.perform(noop) for _ in range(size)))

    async def stamp(self, port: int) -> None:
        await self.runner.perform(stamp, port)


@contextlib.asynccontextmanager
async def asyncjob_producer(db: Database, *, works: bool = False) -> AsyncIterator[Producer]:
    """A producer-only runner (a web process), or with ``works`` a runner
    that also runs the jobs it performs (one process doing both)."""
    store = SQLStore(db.url, lease=LEASE, poll_interval=POLL_INTERVAL)
    async with asyncjob.Runner(store, concurrency=CONCURRENCY, producer_only=not works) as runner:
        yield AsyncjobProducer(runner)


def procrastinate_app(dsn: str) -> Any:
    """A procrastinate app with the two jobs as its tasks."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    app.task(name=NOOP)(noop)
    app.task(name=STAMP)(stamp)
    return app


class ProcrastinateProducer:
    """``defer_async()``, and ``batch_defer_async()`` in batches of CHUNK."""

    def __init__(self, app: Any) -> None:
        self.noop = app.tasks[NOOP]
        self.stamp_task = app.tasks[STAMP]

    async def one(self) -> None:
        await self.noop.defer_async()

    async def many(self, n: int) -> None:
        for first in range(0, n, CHUNK):
            size = min(CHUNK, n - first)
            await self.noop.batch_defer_async(*({} for _ in range(size)))

    async def stamp(self, port: int) -> None:
        await self.stamp_task.defer_async(port=port)


@contextlib.asynccontextmanager
async def procrastinate_producer(db: Database) -> AsyncIterator[Producer]:
    app = procrastinate_app(db.dsn)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        yield ProcrastinateProducer(app)


class PgqueuerProducer:
    """``Queries.enqueue`` of one job, and of lists of CHUNK jobs."""

    def __init__(self, queries: Any) -> None:
        self.queries = queries

    async def one(self) -> None:
        await self.queries.enqueue(NOOP, None)

    async def many(self, n: int) -> None:
        for first in range(0, n, CHUNK):
            size = min(CHUNK, n - first)
            await self.queries.enqueue([NOOP] * size, [None] * size, [0] * size)

    async def stamp(self, port: int) -> None:
        await self.queries.enqueue(STAMP, str(port).encode())


@contextlib.asynccontextmanager
async def pgqueuer_producer(db: Database) -> AsyncIterator[Producer]:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(db.dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        yield PgqueuerProducer(queries)
    finally:
        await conn.close()


RAW_PG_SCHEMA = """
CREATE TABLE bench_jobs (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    args text NOT NULL,
    state text NOT NULL DEFAULT 'queued'
);
CREATE INDEX bench_jobs_state ON bench_jobs (state, id);
CREATE FUNCTION bench_jobs_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('bench_jobs', '');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER bench_jobs_notify AFTER INSERT ON bench_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION bench_jobs_notify();
"""
RAW_PG_ONE = "INSERT INTO bench_jobs (name, args) VALUES ($1, $2)"
RAW_PG_MANY = (
    "INSERT INTO bench_jobs (name, args) SELECT $1::text, '[]' FROM generate_series(1, $2::int)"
)
RAW_PG_CLAIM = """
UPDATE bench_jobs SET state = 'running'
WHERE id IN (
    SELECT id FROM bench_jobs WHERE state = 'queued'
    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
)
RETURNING id, name, args
"""
RAW_PG_DONE = "UPDATE bench_jobs SET state = 'done' WHERE id = ANY($1::bigint[])"


class RawPgProducer:
    """asyncpg, autocommit: one INSERT per job, or one INSERT of CHUNK rows."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def one(self) -> None:
        await self.conn.execute(RAW_PG_ONE, NOOP, "[]")

    async def many(self, n: int) -> None:
        for first in range(0, n, CHUNK):
            await self.conn.execute(RAW_PG_MANY, NOOP, min(CHUNK, n - first))

    async def stamp(self, port: int) -> None:
        await self.conn.execute(RAW_PG_ONE, STAMP, json.dumps([port]))


@contextlib.asynccontextmanager
async def raw_pg_producer(db: Database) -> AsyncIterator[Producer]:
    conn = await asyncpg.connect(db.dsn)
    try:
        if not await conn.fetchval("SELECT to_regclass('bench_jobs') IS NOT NULL"):
            await conn.execute(RAW_PG_SCHEMA)
        yield RawPgProducer(conn)
    finally:
        await conn.close()


RAW_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_jobs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued'
);
CREATE INDEX IF NOT EXISTS bench_jobs_state ON bench_jobs (state, id);
"""
RAW_SQLITE_ONE = "INSERT INTO bench_jobs (name, args) VALUES (?, ?)"
RAW_SQLITE_CLAIM = """
UPDATE bench_jobs SET state = 'running'
WHERE id IN (SELECT id FROM bench_jobs WHERE state = 'queued' ORDER BY id LIMIT ?)
RETURNING id, name, args
"""
RAW_SQLITE_DONE = (
    "UPDATE bench_jobs SET state = 'done' WHERE id IN (SELECT value FROM json_each(?))"
)


class RawSqliteProducer:
    """aiosqlite: one INSERT per transaction, or CHUNK INSERTs in one."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def one(self) -> None:
        await self.conn.execute(RAW_SQLITE_ONE, (NOOP, "[]"))

    async def many(self, n: int) -> None:
        for first in range(0, n, CHUNK):
            size = min(CHUNK, n - first)
            await self.conn.execute("BEGIN IMMEDIATE")
            await self.conn.executemany(RAW_SQLITE_ONE, [(NOOP, "[]")] * size)
            await self.conn.execute("COMMIT")

    async def stamp(self, port: int) -> None:
        await self.conn.execute(RAW_SQLITE_ONE, (STAMP, json.dumps([port])))


@contextlib.asynccontextmanager
async def raw_sqlite_producer(db: Database) -> AsyncIterator[Producer]:
    conn = await sqlite_connect(db.dsn)
    try:
        await conn.executescript(RAW_SQLITE_SCHEMA)
        yield RawSqliteProducer(conn)
    finally:
        await conn.close()


# -- servers: the worker processes -----------------------------------------------


class Server(Protocol):
    """Runs the jobs in a worker process of its own."""

    async def prepare(self) -> None:
        """Import, connect: whatever can be done before the clock starts."""

    async def run(self, stop: asyncio.Event) -> None:
        """Run jobs until ``stop`` is set, then stop gracefully."""

    async def close(self) -> None:
        """Release what :meth:`prepare` took."""


async def until(stop: asyncio.Event, work: asyncio.Task[None]) -> None:
    """Wait for ``stop``, or for ``work`` to end (and raise if it failed)."""
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({stopping, work}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if work.done():
        work.result()  # a worker that ended on its own failed: say why
        raise RuntimeError("the worker stopped before it was asked to")


class AsyncjobServer:
    """What ``asyncjob worker --store URL --concurrency 50`` runs
    (``asyncjob/_cli/worker.py``): an SQLStore with its defaults and a Runner."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def prepare(self) -> None:
        # Imports the dialect and checks the schema once, outside the clock.
        warm = SQLStore(self.db.url)
        await warm.open()
        await warm.close()

    async def run(self, stop: asyncio.Event) -> None:
        store = SQLStore(self.db.url, lease=LEASE, poll_interval=POLL_INTERVAL)
        runner = asyncjob.Runner(store, concurrency=CONCURRENCY, grace_period=GRACE_PERIOD)
        async with runner:
            await stop.wait()

    async def close(self) -> None:
        pass


class ProcrastinateServer:
    """``app.run_worker_async(concurrency=50)``, woken by LISTEN/NOTIFY."""

    def __init__(self, db: Database) -> None:
        self.app = procrastinate_app(db.dsn)
        self.stack = contextlib.AsyncExitStack()

    async def prepare(self) -> None:
        await self.stack.enter_async_context(self.app.open_async())

    async def run(self, stop: asyncio.Event) -> None:
        work = asyncio.create_task(
            self.app.run_worker_async(
                concurrency=CONCURRENCY,
                wait=True,
                listen_notify=True,
                install_signal_handlers=False,
                shutdown_graceful_timeout=GRACE_PERIOD,
            )
        )
        try:
            await until(stop, work)
        finally:
            work.cancel()  # procrastinate stops gracefully when cancelled
            with contextlib.suppress(asyncio.CancelledError):
                await work

    async def close(self) -> None:
        await self.stack.aclose()


async def pgqueuer_noop(job: Any) -> None:
    await noop()


async def pgqueuer_stamp(job: Any) -> None:
    await stamp(int(job.payload))


class PgqueuerServer:
    """``QueueManager.run(batch_size=25, max_concurrent_tasks=50)`` on one
    asyncpg connection, woken by LISTEN/NOTIFY."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.conn: Any = None
        self.qm: Any = None

    async def prepare(self) -> None:
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.qm import QueueManager
        from pgqueuer.queries import Queries

        self.conn = await asyncpg.connect(self.db.dsn)
        self.qm = QueueManager(Queries(AsyncpgDriver(self.conn)))
        self.qm.entrypoint(NOOP)(pgqueuer_noop)
        self.qm.entrypoint(STAMP)(pgqueuer_stamp)

    async def run(self, stop: asyncio.Event) -> None:
        work = asyncio.create_task(
            self.qm.run(batch_size=PGQUEUER_BATCH, max_concurrent_tasks=CONCURRENCY)
        )
        try:
            await until(stop, work)
        finally:
            self.qm.shutdown.set()
            async with asyncio.timeout(GRACE_PERIOD):
                await work

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


async def run_raw(name: str, args: str) -> None:
    """Run one job of the raw loops by its stored name."""
    if name == NOOP:
        await noop()
    else:
        await stamp(*json.loads(args))


class RawPgServer:
    """The ceiling on PostgreSQL: on one asyncpg connection, claim up to 50
    queued jobs (``FOR UPDATE SKIP LOCKED``), run them, mark them done in one
    statement; when none is left, wait for a NOTIFY (or POLL_INTERVAL)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.conn: Any = None
        self.wake = asyncio.Event()

    async def prepare(self) -> None:
        self.conn = await asyncpg.connect(self.db.dsn)
        await self.conn.add_listener("bench_jobs", self._notified)

    def _notified(self, *args: object) -> None:
        self.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            rows = await self.conn.fetch(RAW_PG_CLAIM, CONCURRENCY)
            if rows:
                for row in rows:
                    await run_raw(row["name"], row["args"])
                await self.conn.execute(RAW_PG_DONE, [row["id"] for row in rows])
                continue
            await wait_any(stop, self.wake, POLL_INTERVAL)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


class RawSqliteServer:
    """The ceiling on SQLite: on one aiosqlite connection, claim up to 50
    queued jobs (``UPDATE ... RETURNING``), run them, mark them done in one
    statement; when none is left, look again after POLL_INTERVAL (SQLite
    tells no other process of a change)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.conn: aiosqlite.Connection | None = None

    async def prepare(self) -> None:
        self.conn = await sqlite_connect(self.db.dsn)

    async def run(self, stop: asyncio.Event) -> None:
        conn = self.conn
        assert conn is not None
        never = asyncio.Event()
        while not stop.is_set():
            async with conn.execute(RAW_SQLITE_CLAIM, (CONCURRENCY,)) as cursor:
                rows = list(await cursor.fetchall())
            if rows:
                for row in rows:
                    await run_raw(row[1], row[2])
                await conn.execute(RAW_SQLITE_DONE, (json.dumps([row[0] for row in rows]),))
                continue
            await wait_any(stop, never, POLL_INTERVAL)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


async def wait_any(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    """Until ``stop`` or ``wake`` is set, or ``timeout`` seconds pass."""
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


# -- the subjects ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Subject:
    """One library (or raw loop) on one kind of database."""

    key: str  # as in the results: asyncjob, procrastinate, pgqueuer, raw
    label: str  # as in the table's heading
    kind: str  # postgres or sqlite
    producer: Callable[[Database], AbstractAsyncContextManager[Producer]]
    server: Callable[[Database], Server]
    left: str  # SQL: a row while a job is not done
    done: str  # SQL: how many jobs are done
    many: str  # how its fastest enqueue works


#: Through the store's two partial indexes of the jobs due and the jobs
#: leased (their conditions word for word, as a database matches a query
#: to a partial index), as every other subject's probe goes through an index: with
#: ``state IN ('queued', 'running')``, which no index of asyncjob's serves,
#: each probe (every 5 ms) read the table past every job done so far, on
#: the worker's two cores.
ASYNCJOB_LEFT = (
    f"SELECT 1 FROM asyncjob_jobs WHERE {DUE}"
    f" UNION ALL SELECT 1 FROM asyncjob_jobs WHERE {RUNNING} LIMIT 1"
)
ASYNCJOB_DONE = "SELECT count(*) FROM asyncjob_jobs WHERE state = 'succeeded'"
RAW_LEFT = "SELECT 1 FROM bench_jobs WHERE state IN ('queued', 'running') LIMIT 1"
RAW_DONE = "SELECT count(*) FROM bench_jobs WHERE state = 'done'"

POSTGRES = (
    Subject(
        "asyncjob", "asyncjob", "postgres", asyncjob_producer, AsyncjobServer,
        ASYNCJOB_LEFT, ASYNCJOB_DONE,
        f"runner.perform_many() of {CHUNK} jobs at a time",
    ),
    Subject(
        "procrastinate", "procrastinate", "postgres", procrastinate_producer,
        ProcrastinateServer,
        "SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing') LIMIT 1",
        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
        f"task.batch_defer_async() of {CHUNK} jobs at a time",
    ),
    Subject(
        "pgqueuer", "pgqueuer", "postgres", pgqueuer_producer, PgqueuerServer,
        "SELECT 1 FROM pgqueuer LIMIT 1",
        "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'",
        f"Queries.enqueue() of lists of {CHUNK} jobs",
    ),
    Subject(
        "raw", "raw asyncpg", "postgres", raw_pg_producer, RawPgServer, RAW_LEFT, RAW_DONE,
        f"one INSERT ... SELECT of {CHUNK} rows at a time",
    ),
)  # fmt: skip

SQLITE = (
    Subject(
        "asyncjob", "asyncjob", "sqlite", asyncjob_producer, AsyncjobServer,
        ASYNCJOB_LEFT, ASYNCJOB_DONE,
        f"runner.perform_many() of {CHUNK} jobs at a time",
    ),
    Subject(
        "raw", "raw aiosqlite", "sqlite", raw_sqlite_producer, RawSqliteServer,
        RAW_LEFT, RAW_DONE, f"{CHUNK} INSERTs in one transaction at a time",
    ),
)  # fmt: skip

SERVERS: dict[str, Callable[[Database], Server]] = {
    f"{s.kind}-{s.key}": s.server for s in (*POSTGRES, *SQLITE)
}

"""A worker process, and a producer, when the database misbehaves.

PostgreSQL's connections are killed under them (``pg_terminate_backend``),
the server is restarted, and rows are edited by hand into nonsense: the
worker carries on, and every registered job still ends, at least once.

The restart test restarts the PostgreSQL cluster that the tests use, with
``pg_ctlcluster``: it runs wherever that is possible (as root, the cluster
on this machine, as in CI), skips elsewhere, and fails instead of skipping
when ``CI`` is set. ``ASYNCJOB_TEST_PG_RESTART=0`` turns it off.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.rows import TupleRow
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

import asyncjob
from asyncjob import JobState, new_job_id
from asyncjob.stores import Job
from asyncjob.stores.sql import BadRecord, SQLStore, _postgres

from . import resilience_jobs
from .conftest import PG_HOST, TIMEOUT, Database, RunnerFactory, edit_by_hand
from .processes import ROOT, Workers

#: The workers' lease (seconds): short, so that a job whose end could not
#: be recorded (its connection died) runs again soon.
LEASE = 1.0


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Start worker processes; stop them afterwards, and show what they printed."""
    made = Workers(tmp_path, module="tests.resilience_jobs")
    yield made
    made.stop_all()
    print(made.output())


OpenStore = Callable[[str], Awaitable[SQLStore]]


@pytest.fixture
async def open_store() -> AsyncIterator[OpenStore]:
    """Open stores to read directly; closed after the test."""
    opened: list[SQLStore] = []

    async def open_one(url: str) -> SQLStore:
        store = SQLStore(url, poll_interval=0.05)
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


async def producer_on(make_runner: RunnerFactory, url: str) -> asyncjob.Runner:
    """A web process's runner: it performs, and leaves registered jobs to workers."""
    runner: asyncjob.Runner = await make_runner(
        SQLStore(url, poll_interval=0.05), producer_only=True
    )
    return runner


async def started_worker(
    workers: Workers, producer: asyncjob.Runner, url: str, *, concurrency: int = 8
) -> subprocess.Popen[str]:
    """A worker that is up: it has run a first job."""
    worker = workers.start(url, concurrency=concurrency, lease=LEASE, grace_period=2)
    first = await producer.perform(resilience_jobs.step, -1, 0)
    assert (await producer.wait(first, timeout=TIMEOUT))["pid"] == worker.pid
    return worker


def insert_job(
    job_id: str, name: str, *, state: str, args: str, errors: str | None = None, at: float = 0.0
) -> str:
    """A registered job's row, as written by hand."""
    errors_sql = "NULL" if errors is None else f"'{errors}'"
    return (
        "INSERT INTO asyncjob_jobs (id, name, registered, state, args, kwargs, errors,"
        " attempts, enqueued_at, run_after)"
        f" VALUES ('{job_id}', '{name}', TRUE, '{state}', '{args}', '{{}}', {errors_sql},"
        f" 0, {at or time.time()}, 0)"
    )


async def attempts_of(store: SQLStore) -> dict[str, int]:
    jobs = store.tables.jobs
    async with store.db.read() as conn:
        rows = (await conn.execute(select(jobs.c.id, jobs.c.attempts))).all()
    return dict(rows)


async def until_taken(store: SQLStore, job_id: str) -> None:
    """Until a worker has claimed the job (it may have finished already)."""
    async with asyncio.timeout(TIMEOUT):
        async for status in store.watch(job_id):
            if status.state is not JobState.queued:
                return


# -- connections killed -------------------------------------------------------


Killer = psycopg.AsyncConnection[TupleRow]


def conninfo(database: Database) -> str:
    """The test database's address, for psycopg."""
    return f"{PG_HOST.rsplit('/', 1)[0]}/{database.async_url.rsplit('/', 1)[1]}"


@pytest.fixture
async def killer(postgres_db: Database) -> AsyncIterator[Killer]:
    """A connection of the test's own to the test database, to kill the others."""
    conn = await psycopg.AsyncConnection.connect(conninfo(postgres_db), autocommit=True)
    yield conn
    await conn.close()


async def terminate_backends(killer: Killer, *, spare: int | None = None) -> int:
    """Kill every connection to the killer's database but its own (and
    ``spare``'s), and wait until they are gone; returns how many died."""
    # Chosen first, killed after: in one statement, PostgreSQL may call
    # pg_terminate_backend before it has filtered the rows.
    cursor = await killer.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> %s",
        (spare or 0,),
    )
    pids = [pid for (pid,) in await cursor.fetchall()]
    await killer.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    async with asyncio.timeout(TIMEOUT):
        while True:
            cursor = await killer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            )
            alive = await cursor.fetchone()
            if alive == (0,):
                return len(pids)
            await asyncio.sleep(0.002)  # polls the server's process table


async def listening(killer: Killer, connections: int) -> None:
    """Wait until ``connections`` connections to the killer's database
    listen for job changes (each runner's listener, reconnected after a kill)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            cursor = await killer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'idle' AND query LIKE 'LISTEN %%'"
            )
            count = await cursor.fetchone()
            if count is not None and count[0] >= connections:
                return
            await asyncio.sleep(0.002)  # polls the server's process table


async def test_worker_rides_out_killed_connections(
    postgres_db: Database,
    workers: Workers,
    make_runner: RunnerFactory,
    open_store: OpenStore,
    killer: Killer,
) -> None:
    """Every connection to the database is killed every few performs while
    a worker runs the stream of jobs: the worker reconnects and carries on,
    and every job ends succeeded; the jobs whose end could not be recorded
    run again (at least once).

    Each round waits for both runners' listeners to be back before it kills,
    so that it kills the worker's listener whatever the machine's speed (on
    a loaded one the producer's performs outran the worker's reconnections,
    and most rounds found only the producer's connection to kill)."""
    url = postgres_db.async_url
    producer = await producer_on(make_runner, url)
    reader = await open_store(url)
    # Killed while it opens the store, a worker exits: it is up first.
    worker = await started_worker(workers, producer, url)
    ids: list[str] = []
    killed = []
    for n in range(400):
        ids.append(await producer.perform(resilience_jobs.step, n, 0.02))
        if n % 5 == 4:
            await listening(killer, 2)  # the producer's and the worker's
            killed.append(await terminate_backends(killer))
    results = [await producer.wait(job_id, timeout=TIMEOUT) for job_id in ids]
    assert [r["n"] for r in results] == list(range(400))
    assert {r["pid"] for r in results} == {worker.pid}
    assert worker.poll() is None
    # Every time, the producer's pooled connection and both listeners; the
    # worker's pooled connections whenever they were open.
    assert min(killed) >= 3
    attempts = await attempts_of(reader)
    assert all(attempts[job_id] >= 1 for job_id in ids)
    print(f"connections killed {sum(killed)} in {len(killed)} rounds;", end=" ")
    print(f"jobs by attempts {sorted(Counter(attempts[i] for i in ids).items())}")


async def test_the_listener_outlives_a_server_that_answers_nonsense(
    postgres_db: Database, killer: Killer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection that listens for job changes goes through a proxy
    whose first two connections answer nonsense (asyncpg's connect raises
    an AttributeError on it), the third reaches the server: the listener
    tries again each time and ends up listening. Its task ended on the
    first error asyncpg raised that was not a connection error, and the
    process then polled for as long as it ran (a connection killed just
    as it was made: ``InternalClientError`` from the ``LISTEN``)."""
    monkeypatch.setattr(_postgres, "RECONNECT_AFTER", 0.01)
    server = urlsplit(postgres_db.async_url)
    connections = 0

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if connections <= 2:
            await reader.readexactly(8)  # asyncpg asks for TLS first:
            writer.write(b"N")  # none here
            await reader.read(1000)  # its startup message, answered with
            writer.write(b"Z\x00\x00\x00\x05Q")  # "ready for a query", before anything
        else:
            upstream = await asyncio.open_connection(server.hostname, server.port)
            await asyncio.gather(pipe(reader, upstream[1]), pipe(upstream[0], writer))
        writer.close()

    heard = asyncio.Event()
    listening = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    through = postgres_db.async_url.replace(server.netloc, f"{server.username}@127.0.0.1:{port}")
    listener = _postgres.PostgresListener(through, lambda channel, _: heard.set())
    try:
        await listener.listen("asyncjob_test_channel")
        async with asyncio.timeout(TIMEOUT):
            await listener.listening.wait()
            await killer.execute("NOTIFY asyncjob_test_channel")
            await heard.wait()
        assert connections == 3
    finally:
        await listener.stop()
        listening.close()
        await listening.wait_closed()


async def pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event | None = None
) -> None:
    """Copy ``reader`` to ``writer`` until it ends, holding what comes while
    ``flowing`` is cleared."""
    while data := await reader.read(65536):
        if flowing is not None:
            await flowing.wait()
        writer.write(data)
        await writer.drain()
    writer.close()


#: The lease of the test of a connection gone silent: the least that leaves
#: room for a renewal given up (a sixth of it, and asyncpg's 2 s) and sent again.
LEASE_GONE_SILENT = 6.0


class SilencingProxy:
    """Forwards connections to the PostgreSQL server. :meth:`silence` makes
    the connections open at that moment carry nothing more, either way,
    without closing them: as a NAT or a firewall that forgot them would.
    Connections made afterwards go through."""

    def __init__(self, server: str) -> None:
        self._server = urlsplit(server)
        self._connections: list[asyncio.Event] = []
        self._listening: asyncio.Server | None = None

    async def url(self, server_url: str) -> str:
        """``server_url`` (a database on the server), through the proxy."""
        self._listening = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        port = self._listening.sockets[0].getsockname()[1]
        netloc = f"{self._server.username}@127.0.0.1:{port}"
        return server_url.replace(self._server.netloc, netloc)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        flowing = asyncio.Event()
        flowing.set()
        self._connections.append(flowing)
        upstream = await asyncio.open_connection(self._server.hostname, self._server.port)
        await asyncio.gather(
            pipe(reader, upstream[1], flowing),
            pipe(upstream[0], writer, flowing),
            return_exceptions=True,
        )

    def silence(self) -> None:
        for flowing in self._connections:
            flowing.clear()

    async def close(self) -> None:
        """Let everything through again (so that the connections can close), and stop."""
        for flowing in self._connections:
            flowing.set()
        if self._listening is not None:
            self._listening.close()


async def test_leases_are_renewed_past_a_connection_gone_silent(
    postgres_db: Database, killer: Killer
) -> None:
    """The lease thread's connection goes silent (a NAT that forgot it):
    the renewal sent on it is given up after a sixth of the lease and sent
    again on a new connection, before the lease runs out. It waited for TCP
    to give up, a quarter of an hour, while the lease ran out and another
    worker could take the job and run it a second time at once."""
    proxy = SilencingProxy(postgres_db.async_url)
    store = SQLStore(await proxy.url(postgres_db.async_url), lease=LEASE_GONE_SILENT)
    await store.open()
    try:
        job = Job(new_job_id(), "tests.resilience.step", print, (), {}, False, time.time(), True)
        await store.enqueue(job)
        assert [c.id for c in await store.claim(1)] == [job.id]

        async def lease_expires_at() -> float:
            cursor = await killer.execute(
                "SELECT lease_expires_at FROM asyncjob_jobs WHERE id = %s", (job.id,)
            )
            found = await cursor.fetchone()
            assert found is not None
            return float(found[0])

        async def renewed_after(expiry: float) -> float:
            """The expiry a renewal writes after ``expiry``: polled, as
            nothing tells another connection of it."""
            async with asyncio.timeout(TIMEOUT + LEASE_GONE_SILENT):
                while True:
                    later = await lease_expires_at()
                    if later > expiry:
                        return later
                    await asyncio.sleep(0.05)  # polls the row

        # Renewed once: the lease thread has its connection, now silenced.
        renewed = await renewed_after(await lease_expires_at())
        proxy.silence()
        # Renewed again before the lease ran out: the next renewal (2 s
        # later) is unanswered for 1 s, given up (2 s more, asyncpg's), and
        # sent again on a new connection, some 5 s after the last.
        assert await renewed_after(renewed) < renewed + LEASE_GONE_SILENT
    finally:
        await proxy.close()
        await store.close()


async def test_producer_connections_killed_between_performs(
    postgres_db: Database, make_runner: RunnerFactory, killer: Killer
) -> None:
    """Killed between two performs, the producer's pooled connection is
    replaced as it is handed out, or its statement is sent again on a new
    one: the next perform, and the next read, work without an error."""
    producer = await producer_on(make_runner, postgres_db.async_url)
    previous = await producer.perform(resilience_jobs.step, 0, 0)
    for n in range(1, 6):
        assert await terminate_backends(killer) >= 1
        job_id = await producer.perform(resilience_jobs.step, n, 0)
        assert await terminate_backends(killer) >= 1
        assert (await producer.status(previous)).state is JobState.queued  # no worker here
        previous = job_id


async def blocked_on_lock(killer: Killer) -> None:
    """Until one connection to the database waits for a lock."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            cursor = await killer.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if await cursor.fetchone() == (1,):
                return
            await asyncio.sleep(0.005)  # polls the server's process table


async def test_a_perform_killed_mid_way_is_sent_again_once(
    postgres_db: Database, make_runner: RunnerFactory, killer: Killer
) -> None:
    """Killed in the middle of a perform, the connection takes the perform's
    statement with it: the perform sends it again on a new connection, and
    the job is recorded once. Killed a second time, the perform raises the
    driver's error, "terminating connection due to administrator command",
    and nothing is recorded."""
    producer = await producer_on(make_runner, postgres_db.async_url)
    done = await producer.perform(resilience_jobs.step, 0, 0)
    async with await psycopg.AsyncConnection.connect(conninfo(postgres_db)) as locker:
        spare = locker.info.backend_pid
        # The perform's INSERT waits for this lock: caught in the middle.
        await locker.execute("LOCK TABLE asyncjob_jobs IN EXCLUSIVE MODE")
        perform = asyncio.create_task(producer.perform(resilience_jobs.step, 1, 0))
        await blocked_on_lock(killer)
        await terminate_backends(killer, spare=spare)
        await blocked_on_lock(killer)  # sent again, it waits for the lock again
        await terminate_backends(killer, spare=spare)
        with pytest.raises(DBAPIError, match="terminating connection due to administrator") as lost:
            await perform
        assert lost.value.connection_invalidated  # SQLAlchemy's sign that a retry may work
        await locker.rollback()

        await locker.execute("LOCK TABLE asyncjob_jobs IN EXCLUSIVE MODE")
        perform = asyncio.create_task(producer.perform(resilience_jobs.step, 2, 0))
        await blocked_on_lock(killer)
        await terminate_backends(killer, spare=spare)
        await blocked_on_lock(killer)
        await locker.rollback()  # the lock is released: the second try goes through
        again = await perform
    cursor = await killer.execute("SELECT id FROM asyncjob_jobs ORDER BY enqueued_at")
    assert await cursor.fetchall() == [(done,), (again,)]


# -- the server restarted -------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """A PostgreSQL cluster on this machine, as pg_ctlcluster names it."""

    version: str
    name: str

    def command(self, action: str, *options: str) -> list[str]:
        return [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            *options,
            self.version,
            self.name,
            action,
        ]

    def ensure_running(self) -> None:
        """Start it if it is down, and wait until it answers."""
        status = subprocess.run(self.command("status"), capture_output=True, timeout=TIMEOUT)
        if status.returncode != 0:
            subprocess.run(self.command("start"), check=True, timeout=TIMEOUT * 3)
        deadline = time.monotonic() + TIMEOUT * 3
        while True:
            try:
                psycopg.connect(PG_HOST, connect_timeout=3).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # until it accepts connections again


def cluster_to_restart() -> Cluster | str:
    """The cluster the tests use, if this process may restart it; else why not."""
    if os.environ.get("ASYNCJOB_TEST_PG_RESTART") == "0":
        return "ASYNCJOB_TEST_PG_RESTART=0"
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return "no pg_ctlcluster here to restart PostgreSQL with"
    if os.geteuid() != 0:
        return "restarting PostgreSQL takes root"
    address = urlsplit(PG_HOST)
    if address.hostname not in ("127.0.0.1", "localhost", "::1"):
        return f"PostgreSQL at {address.hostname} is not on this machine"
    port = str(address.port or 5432)
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=TIMEOUT
    )
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == port and fields[3].startswith("online"):
            return Cluster(fields[0], fields[1])
    return f"no cluster of pg_lsclusters is online on port {port}"


@pytest.fixture
def cluster(postgres: str) -> Iterator[Cluster]:
    """The test's PostgreSQL cluster, running again after the test whatever happens."""
    found = cluster_to_restart()
    if isinstance(found, str):
        if os.environ.get("CI"):
            pytest.fail(f"CI must restart PostgreSQL: {found}")
        pytest.skip(found)
    try:
        yield found
    finally:
        found.ensure_running()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_worker_carries_on_after_the_server_restarts(
    postgres_db: Database,
    cluster: Cluster,
    mode: str,
    workers: Workers,
    make_runner: RunnerFactory,
    open_store: OpenStore,
) -> None:
    """PostgreSQL restarts while a worker runs jobs (``fast``: connections are
    ended and the server shuts down cleanly; ``immediate``: as in a crash,
    with recovery from the log): once it is back, the worker carries on
    and every job ends succeeded, the producer's next perform included. A
    wait and a watch begun before the restart ride it out and end with the
    job (a wait used to die: "the database system is shutting down")."""
    url = postgres_db.async_url
    producer = await producer_on(make_runner, url)
    reader = await open_store(url)
    worker = await started_worker(workers, producer, url, concurrency=4)
    ids = [await producer.perform(resilience_jobs.step, n, 0.05) for n in range(60)]
    await until_taken(reader, ids[0])
    waiting = asyncio.create_task(producer.wait(ids[-1], timeout=TIMEOUT * 3))

    async def watch_to_the_end() -> JobState:
        states = [status.state async for status in reader.watch(ids[-1])]
        return states[-1]

    watching = asyncio.create_task(watch_to_the_end())
    try:
        restart = await asyncio.create_subprocess_exec(*cluster.command("restart", "-m", mode))
        async with asyncio.timeout(TIMEOUT * 2):
            assert await restart.wait() == 0
    finally:
        await asyncio.to_thread(cluster.ensure_running)
    ids += [await producer.perform(resilience_jobs.step, n, 0.05) for n in range(60, 80)]
    results = [await producer.wait(job_id, timeout=TIMEOUT) for job_id in ids]
    assert [r["n"] for r in results] == list(range(80))
    assert {r["pid"] for r in results} == {worker.pid}
    assert worker.poll() is None
    assert (await waiting)["n"] == 59
    async with asyncio.timeout(TIMEOUT):
        assert await watching is JobState.succeeded
    attempts = await attempts_of(reader)
    print(f"jobs by attempts {sorted(Counter(attempts[i] for i in ids).items())}")


# -- rows edited by hand ----------------------------------------------------------


async def test_rows_edited_into_nonsense_under_a_worker(
    database: Database, workers: Workers, make_runner: RunnerFactory, open_store: OpenStore
) -> None:
    """A queued job whose arguments are not JSON fails, saying so, without
    running; a row in a state asyncjob never writes is left alone, and
    reading it raises BadRecord; the worker carries on with the others."""
    producer = await producer_on(make_runner, database.async_url)
    worker = await started_worker(workers, producer, database.async_url)
    bad_args, bad_state = "a" * 32, "b" * 32
    step = "tests.resilience.step"
    before = [await producer.perform(resilience_jobs.step, n, 0.01) for n in range(20)]
    await asyncio.to_thread(  # in a thread: the loop must go on while it writes
        edit_by_hand,
        database.sync_url,
        insert_job(bad_args, step, state="queued", args="[1, nope"),
        insert_job(bad_state, step, state="exploded", args="[2, 0]"),
    )
    after = [await producer.perform(resilience_jobs.step, n, 0.01) for n in range(20, 40)]
    with pytest.raises(asyncjob.JobFailed, match=f"job {bad_args} has stored arguments") as failed:
        await producer.wait(bad_args, timeout=TIMEOUT)
    assert "cannot read" in str(failed.value)
    results = [await producer.wait(job_id, timeout=TIMEOUT) for job_id in before + after]
    assert [r["n"] for r in results] == list(range(40))
    with pytest.raises(BadRecord, match=f"job {bad_state} has the state 'exploded'"):
        await producer.status(bad_state)
    with pytest.raises(BadRecord, match=f"job {bad_state} has the state 'exploded'"):
        await producer.wait(bad_state, timeout=TIMEOUT)
    reader = await open_store(database.async_url)
    assert (await attempts_of(reader))[bad_state] == 0  # never claimed
    assert worker.poll() is None


async def test_a_priority_edited_into_text_fails_its_job_alone(
    sqlite_db: Database, workers: Workers, make_runner: RunnerFactory, open_store: OpenStore
) -> None:
    """SQLite keeps what it is given: a queued job's priority edited into
    ``'high'`` sorted above every number, so it was in every claim, and
    failed the claim's sort after the claim had committed, stranding every
    job claimed with it (running, held by nobody) claim after claim. Now
    that job fails, saying so, and the others run, in one worker process."""
    url = sqlite_db.async_url
    producer = await producer_on(make_runner, url)
    worker = await started_worker(workers, producer, url)
    bad = "c" * 32
    await asyncio.to_thread(
        edit_by_hand,
        sqlite_db.sync_url,
        insert_job(bad, "tests.resilience.step", state="queued", args="[0, 0]"),
        f"UPDATE asyncjob_jobs SET priority = 'high' WHERE id = '{bad}'",
    )
    others = [await producer.perform(resilience_jobs.step, n, 0.01) for n in range(20)]
    results = [await producer.wait(job_id, timeout=TIMEOUT) for job_id in others]
    assert [r["n"] for r in results] == list(range(20))
    # Ended by now: it sorts first ('high' above every number), so every
    # claim that took the others took it first. (Its status cannot be
    # read, BadRecord, as it was before: its outcome can.)
    with pytest.raises(asyncjob.JobFailed, match=f"job {bad} has 'high' in its priority column"):
        await producer.wait(bad, timeout=TIMEOUT)
    reader = await open_store(url)
    assert (await attempts_of(reader))[bad] == 1  # claimed once, and failed
    assert worker.poll() is None


async def test_a_running_jobs_row_edited_into_an_unknown_state(
    database: Database, workers: Workers, make_runner: RunnerFactory, open_store: OpenStore
) -> None:
    """A running job's state edited into nonsense: its worker no longer
    holds it, stops it at its next lease renewal, and takes the next job."""
    producer = await producer_on(make_runner, database.async_url)
    reader = await open_store(database.async_url)
    worker = await started_worker(workers, producer, database.async_url, concurrency=1)
    stuck = await producer.perform(resilience_jobs.step, 0, 60.0)
    await until_taken(reader, stuck)
    await asyncio.to_thread(
        edit_by_hand,
        database.sync_url,
        f"UPDATE asyncjob_jobs SET state = 'exploded' WHERE id = '{stuck}'",
    )
    following = await producer.perform(resilience_jobs.step, 1, 0)
    assert (await producer.wait(following, timeout=TIMEOUT))["n"] == 1  # the one slot came free
    with pytest.raises(BadRecord, match=f"job {stuck} has the state 'exploded'"):
        await producer.status(stuck)
    assert worker.poll() is None


async def test_a_failing_job_whose_earlier_errors_are_nonsense_still_ends(
    database: Database, workers: Workers, make_runner: RunnerFactory, open_store: OpenStore
) -> None:
    """A job with retries fails; the errors of its earlier attempts, which
    a retry appends to, were edited into nonsense: the job still ends."""
    producer = await producer_on(make_runner, database.async_url)
    worker = await started_worker(workers, producer, database.async_url)
    bad = "c" * 32
    await asyncio.to_thread(
        edit_by_hand,
        database.sync_url,
        insert_job(bad, "tests.resilience.always_fails", state="queued", args='["boom"]',
                   errors="{nope"),
    )  # fmt: skip
    following = await producer.perform(resilience_jobs.step, 1, 0)
    assert (await producer.wait(following, timeout=TIMEOUT))["pid"] == worker.pid
    reader = await open_store(database.async_url)
    async with asyncio.timeout(4 * LEASE):
        # Its outcome, not its status: reading the errors would raise BadRecord.
        while True:
            outcome = await reader.outcome(bad)
            if outcome is not None and outcome.state.is_final:
                break
            await asyncio.sleep(0.05)  # the worker is another process: polls the store
    assert outcome.state is JobState.failed
    assert outcome.error == "RuntimeError: boom"


async def test_a_write_refused_while_failing_a_bad_job_strands_no_other_job(
    database: Database, workers: Workers, make_runner: RunnerFactory
) -> None:
    """The database refuses to record the failure of a job whose arguments
    cannot be read (a trigger here; a connection lost, in life): the other
    jobs the worker claimed with it still run, and the bad one fails on its
    next attempt, saying why."""
    producer = await producer_on(make_runner, database.async_url)
    bad = "d" * 32
    refuse = f"NEW.id = '{bad}' AND NEW.state = 'failed' AND NEW.attempts = 1"
    if database.kind == "sqlite":
        trigger = [
            "CREATE TRIGGER refuse BEFORE UPDATE ON asyncjob_jobs"
            f" WHEN {refuse} BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        ]
    else:
        trigger = [
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN"
            f" IF {refuse} THEN RAISE EXCEPTION 'refused by a trigger'; END IF;"
            " RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse BEFORE UPDATE ON asyncjob_jobs"
            " FOR EACH ROW EXECUTE FUNCTION refuse()",
        ]
    # Oldest first: the worker claims it first, in one batch with the others.
    await asyncio.to_thread(
        edit_by_hand,
        database.sync_url,
        *trigger,
        insert_job(bad, "tests.resilience.step", state="queued", args="[", at=1.0),
    )
    others = [await producer.perform(resilience_jobs.step, n, 0) for n in range(5)]
    workers.start(database.async_url, lease=LEASE, grace_period=2)
    # The worker's start is bounded apart: on a loaded machine it took 2.4 s.
    results = [await producer.wait(job_id, TIMEOUT) for job_id in others]
    assert [r["n"] for r in results] == list(range(5))
    with pytest.raises(asyncjob.JobFailed, match="stored arguments asyncjob cannot read"):
        await producer.wait(bad, 4 * LEASE)


def test_a_worker_that_cannot_open_the_store_says_so(postgres: str) -> None:
    """The server answers but refuses (no such database; in a restart, "the
    database system is starting up"): the worker says so and exits 2, as
    when the server does not answer at all."""
    base = PG_HOST.rsplit("/", 1)[0].split("://", 1)[1]
    store = f"postgresql+asyncpg://{base}/asyncjob_no_such_database"
    done = subprocess.run(
        [sys.executable, "-m", "asyncjob", "worker", "--store", store, "--import", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert "Traceback" not in done.stderr
    assert "cannot open the store" in done.stderr
    assert done.returncode == 2

"""Flow control across real processes: concurrency limits, unique keys and
queues, each on SQLite and PostgreSQL, with ``asyncjob worker`` processes.

The contract promises all three "across every worker of the store" (and,
for unique keys, "across processes, races included"): the in-process tests
cannot break that promise, since one process shares its locks and memory.
Here the workers, and the performers, are separate processes, and the jobs
that must be watched while they run check in at the test's gate (see
``flow_jobs``), so that the test knows what runs at every moment without
sleeping.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import asyncjob
from asyncjob import JobState
from asyncjob.stores import Claimed
from asyncjob.stores.sql import SQLStore

from . import flow_jobs
from .conftest import TIMEOUT, Database, RunnerFactory
from .processes import ROOT, Workers

#: Slots of each worker process.
SLOTS = 5


@dataclass
class Visit:
    """A job checked in at the gate: it runs until the test lets it ``go``."""

    kind: str
    n: int
    pid: int
    go: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class Gate:
    """The loopback server the jobs of ``flow_jobs`` check in at. It counts,
    by kind, the jobs between their ``start`` and their ``end``, and the
    most there ever were at once."""

    def __init__(self) -> None:
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self._arrivals: defaultdict[str, asyncio.Queue[Visit]] = defaultdict(asyncio.Queue)
        self._visits: list[Visit] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._open = False
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen on a free loopback port, and return it."""
        self._server = await asyncio.start_server(self._visit, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _visit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            _, kind, n, pid = (await reader.readline()).decode().split()
            visit = Visit(kind, int(n), int(pid))
            self.running[kind] += 1
            self.peak[kind] = max(self.peak[kind], self.running[kind])
            self._visits.append(visit)
            self._arrivals[kind].put_nowait(visit)
            if self._open:
                visit.go.set()
            await visit.go.wait()
            writer.write(b"go\n")
            await writer.drain()
            if await reader.readline() == b"end\n":
                self.running[kind] -= 1
                visit.ended.set()
        except (OSError, ValueError):
            pass  # a job stopped with its worker: the test fails on what it waited for
        finally:
            writer.close()

    async def arrival(self, kind: str) -> Visit:
        """The next job of ``kind`` to check in (within TIMEOUT)."""
        async with asyncio.timeout(TIMEOUT):
            return await self._arrivals[kind].get()

    async def release(self, visits: list[Visit]) -> None:
        """Let every one of ``visits`` go at once, and wait until each has ended."""
        for visit in visits:
            visit.go.set()
        async with asyncio.timeout(TIMEOUT):
            for visit in visits:
                await visit.ended.wait()

    def open(self) -> None:
        """Let every job go, those waiting and those to come."""
        self._open = True
        for visit in self._visits:
            visit.go.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            await self._server.wait_closed()


@pytest.fixture
async def gate(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gate]:
    """The gate, its port in the environment that worker processes inherit."""
    made = Gate()
    monkeypatch.setenv(flow_jobs.GATE_PORT, str(await made.start()))
    yield made
    made.open()
    await made.close()


@pytest.fixture
async def workers(tmp_path: Path, gate: Gate) -> AsyncIterator[Workers]:
    """Worker processes importing ``flow_jobs``; afterwards the gate lets
    their jobs go, they are stopped, and what they printed is shown."""
    made = Workers(tmp_path, module="tests.flow_jobs")
    yield made
    gate.open()
    await asyncio.to_thread(made.stop_all)  # the gate answers meanwhile
    print(made.output())


async def producer_on(make_runner: RunnerFactory, url: str) -> asyncjob.Runner:
    """A web process's runner: it performs and reads, and runs nothing
    registered. Started before any worker, it creates the tables."""
    runner: asyncjob.Runner = await make_runner(
        SQLStore(url, poll_interval=0.05), producer_only=True
    )
    return runner


# -- 1. concurrency limits ----------------------------------------------------------

#: Rounds of limited jobs performed at once, after the first eight.
BURSTS = 12


async def run_limited(gate: Gate, running: list[Visit], count: int) -> list[int]:
    """Let the limited jobs run, as many at a time as the limit allows, each
    batch freed at once, until ``count`` have run (``running``: the first
    batch, checked in already); return their numbers in the order started."""
    started = [v.n for v in running]
    while running:
        await gate.release(running)
        coming = min(flow_jobs.LIMIT, count - len(started))
        running = [await gate.arrival("limited") for _ in range(coming)]
        started += [v.n for v in running]
    return started


async def test_a_concurrency_limit_holds_across_worker_processes(
    database: Database, gate: Gate, workers: Workers, make_runner: RunnerFactory
) -> None:
    """Three worker processes with five slots each run eight jobs of a name
    limited to two, then a few rounds of three: never more than two run at
    once, all of them run, and a job of another name performed after the
    eight runs while six of them wait.

    The claims that matter are simultaneous ones taking one job each
    (pgqueuer #761: each worker counted the running jobs before the others'
    claims committed, and together they ran more than the limit). So four
    slots of every worker are held by other jobs, and the limited jobs are
    performed in one write that the three workers, a slot free each, claim
    together; the pairs that follow are freed at once, and claimed the same
    way."""
    url = database.async_url
    producer = await producer_on(make_runner, url)
    pids = {workers.start(url, concurrency=SLOTS).pid for _ in range(3)}
    await producer.perform_many(flow_jobs.held, [(n,) for n in range(3 * SLOTS)])
    holding = [await gate.arrival("held") for _ in range(3 * SLOTS)]
    # A worker claims no more than its free slots: all three are up, and full.
    assert Counter(v.pid for v in holding) == dict.fromkeys(pids, SLOTS), workers.output()
    one_each = list({v.pid: v for v in holding}.values())
    await gate.release(one_each)  # a slot free in each worker

    count = 8
    ids = await producer.perform_many(flow_jobs.limited, [(n,) for n in range(count)])
    running = [await gate.arrival("limited") for _ in range(flow_jobs.LIMIT)]

    # Performed after the eight, while six of them wait: it is not held up.
    other = await producer.perform(flow_jobs.where)
    assert await producer.wait(other, timeout=TIMEOUT) in pids
    assert gate.running["limited"] == flow_jobs.LIMIT, workers.output()
    states = Counter(s.state for s in await producer.jobs(name="tests.flow.limited"))
    assert states == {JobState.running: 2, JobState.queued: count - 2}, workers.output()

    assert sorted(await run_limited(gate, running, count)) == list(range(count))
    assert [await producer.wait(i, timeout=TIMEOUT) for i in ids] == list(range(count))
    for burst in range(BURSTS):
        numbers = [100 * (burst + 1) + n for n in range(flow_jobs.LIMIT + 1)]
        ids = await producer.perform_many(flow_jobs.limited, [(n,) for n in numbers])
        running = [await gate.arrival("limited") for _ in range(flow_jobs.LIMIT)]
        assert sorted(await run_limited(gate, running, len(numbers))) == numbers
        assert [await producer.wait(i, timeout=TIMEOUT) for i in ids] == numbers
    assert gate.peak["limited"] == flow_jobs.LIMIT, workers.output()
    await gate.release([v for v in holding if v not in one_each])


async def test_a_worker_sleeps_while_a_limited_name_is_at_its_limit(
    database: Database, gate: Gate, make_runner: RunnerFactory
) -> None:
    """While two limited jobs run and two more wait for them, a worker with
    free slots has nothing to do: it sleeps until a job comes due (here one
    performed with a delay of 0.4 s), a poll (every 0.2 s), or a slot coming
    free, as it does when no job waits at all; a handful of claims meanwhile.

    It used to claim again at once, for as long as the limited jobs waited:
    hundreds of claims in those 0.4 s, a core of the worker and some of the
    database's, in every worker of the store with a free slot (about 1,500
    transactions a second each). The worker is in this process, so that its
    claims can be counted; the bound is loose (about five claims)."""
    url = database.async_url
    producer = await producer_on(make_runner, url)
    store = SQLStore(url, poll_interval=0.2)
    claims = 0
    claim = store.claim

    async def counted(*args: Any, **kwargs: Any) -> list[Claimed]:
        nonlocal claims
        claims += 1
        return await claim(*args, **kwargs)

    store.claim = counted  # type: ignore[method-assign]
    await make_runner(store, concurrency=SLOTS)
    try:
        await producer.perform_many(flow_jobs.limited, [(n,) for n in range(4)])
        for _ in range(flow_jobs.LIMIT):
            await gate.arrival("limited")
        before = claims
        later = await producer.perform(asyncjob.using(flow_jobs.where, delay=0.4))
        await producer.wait(later, timeout=TIMEOUT)
        during = claims - before
    finally:
        gate.open()  # before the worker is stopped
    assert during <= 20, f"{during} claims while a job was delayed by 0.4 s"


# -- 2. unique keys ------------------------------------------------------------------------


async def test_a_unique_key_raced_by_processes_records_one_job(
    database: Database, gate: Gate, make_runner: RunnerFactory
) -> None:
    """Three processes perform a job with the same unique key at the same
    moment (each waits, its store open, for the byte the test sends to all
    three at once): one job is recorded, and each process got its id. The
    key stays taken while the job runs, and is free once it has ended.

    Two web processes handling the same click must not start the same work
    twice: on an SQL store the key is a unique index, and the loser of the
    race must get the winner's id, not an error and not a job of its own."""
    url = database.async_url
    producer = await producer_on(make_runner, url)
    code = "import asyncio, sys; from tests.flow_jobs import race; " + (
        "asyncio.run(race(sys.argv[1], sys.argv[2], int(sys.argv[3])))"
    )
    racers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            url,
            "k",
            str(n),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Apart: what they log (asyncio's debug mode, in CI) is not
            # what they say to the test.
            stderr=asyncio.subprocess.PIPE,
        )
        for n in range(3)
    ]
    try:
        async with asyncio.timeout(TIMEOUT):
            for racer in racers:
                assert racer.stdout is not None
                assert await racer.stdout.readline() == b"ready\n"
            for racer in racers:  # the starting gun, to all three at once
                assert racer.stdin is not None
                racer.stdin.write(b"!")
            await asyncio.gather(*(racer.stdin.drain() for racer in racers if racer.stdin))
            said = [await racer.communicate() for racer in racers]
        outputs = [out.decode() for out, _ in said]
        logs = "\n".join(err.decode() for _, err in said)
        assert [racer.returncode for racer in racers] == [0, 0, 0], f"{outputs}\n{logs}"
    finally:
        for racer in racers:
            if racer.returncode is None:
                racer.kill()
                await racer.wait()
    ids = {output.strip() for output in outputs}
    assert len(ids) == 1, outputs
    (job_id,) = ids
    (recorded,) = await producer.jobs(name="tests.flow.keyed")
    assert (recorded.id, recorded.state, recorded.unique) == (job_id, JobState.queued, "k")

    # A worker, here: the job runs, held at the gate; the key is still taken.
    await make_runner(SQLStore(url, poll_interval=0.05))
    try:
        visit = await gate.arrival("keyed")
        assert await producer.perform(asyncjob.using(flow_jobs.keyed, unique="k"), 9) == job_id
        await gate.release([visit])
        assert await producer.wait(job_id, timeout=TIMEOUT) == visit.n
        again = await producer.perform(asyncjob.using(flow_jobs.keyed, unique="k"), 10)
        assert again != job_id
    finally:
        gate.open()  # before the worker is stopped
    assert await producer.wait(again, timeout=TIMEOUT) == 10


# -- 3. queues -----------------------------------------------------------------------------


async def test_a_worker_takes_only_its_queues(
    database: Database, workers: Workers, make_runner: RunnerFactory
) -> None:
    """A worker started with ``--queue a`` runs the jobs of queue ``a`` only:
    a job performed to queue ``b`` (by ``using``, over its registered queue
    ``a``) and a job of the default queue, performed before, stay queued.
    Once a worker with ``--queue b`` starts, the ``b`` job runs there, and
    the default one still waits.

    A fleet per queue keeps slow jobs (video) from starving fast ones (mail):
    a worker that took another queue's jobs would undo it."""
    url = database.async_url
    producer = await producer_on(make_runner, url)
    worker_a = workers.start(url, queues=["a"])
    to_b = await producer.perform(asyncjob.using(flow_jobs.in_a, queue="b"))
    to_default = await producer.perform(flow_jobs.where)
    to_a = await producer.perform(flow_jobs.in_a)
    assert await producer.wait(to_a, timeout=TIMEOUT) == worker_a.pid, workers.output()
    waiting = {s.id: (s.state, s.queue) for s in await producer.jobs(state=JobState.queued)}
    assert waiting == {
        to_b: (JobState.queued, "b"),
        to_default: (JobState.queued, "default"),
    }, workers.output()

    worker_b = workers.start(url, queues=["b"])
    assert await producer.wait(to_b, timeout=TIMEOUT) == worker_b.pid, workers.output()
    to_a = await producer.perform(flow_jobs.in_a)
    assert await producer.wait(to_a, timeout=TIMEOUT) == worker_a.pid, workers.output()
    assert (await producer.status(to_default)).state is JobState.queued

"""Instructions per job: what each subject's own code costs, counted
rather than timed.

On a shared machine the timed benchmarks (``core.py``, ``sql.py``) vary by
a third from one run to the next, which hides a change of a few percent.
Counting the instructions a process executes does not vary with what the
machine does meanwhile: ``valgrind --tool=callgrind`` counts them, and a
subject runs twice, with ``n1`` and ``n2`` jobs, so that its start (the
imports, the store's schema, the loop) cancels out of
``(count(n2) - count(n1)) / (n2 - n1)``, the instructions of one more job.

What it does not say: time. An instruction that waits for memory costs
more than one that does not, the database server's work is in another
process (the SQL rows count the worker's instructions only), and valgrind
runs a process's threads one at a time, so the sync rows count the work
of the threads, not how they contend for the GIL. Work paced by the
clock rather than by the jobs (an SQLite worker reads its held jobs'
cancels every 50 ms while it runs jobs) counts about fifty times too much,
as everything runs that much slower under valgrind: about 35,000 of an
SQLite worker's instructions per job, measured by leaving it out. It is a
way to see whether a change made asyncjob's own path cheaper, and by how
much, not a replacement for the timed ratios of the targets: nor for a
timed run of a changed statement, whose cost is the server's (the ends of
``dbabe6b``, counted cheaper, planned far worse).

    python bench/instructions.py [--quick] [--only core,sqlite,postgres] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

import asyncjob
from asyncjob.stores.sql import SQLStore

sys.path.insert(0, str(Path(__file__).parent))
import core
import sql_subjects

#: The PostgreSQL server's maintenance database, where measurements' databases are made.
PG = os.environ.get("ASYNCJOB_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

#: (row, subject, baseline): each row compares two subjects run the same way.
ROWS = (
    ("core", "coroutine jobs, e2e (memory store)", "coroutine.asyncjob", "coroutine.aiojobs"),
    ("core", "coroutine jobs, the floor (floor.py)", "coroutine.asyncjob", "coroutine.floor"),
    ("core", "the same, its records in MemoryStore", "coroutine.asyncjob", "coroutine.store_floor"),
    ("core", "coroutine jobs, raw asyncio.Queue", "coroutine.asyncjob", "coroutine.queue"),
    ("core", "sync jobs, e2e (memory store)", "sync.asyncjob", "sync.pool"),
    ("sqlite", "SQLite worker, claim + run + end", "sqlite.asyncjob", "sqlite.raw"),
    ("postgres", "PostgreSQL worker, claim + run + end", "postgres.asyncjob", "postgres.raw"),
)


# -- the subjects, each run in a process of its own under callgrind -------------


class Done:
    """Set when the job counted last of those expected has run."""

    expected = 0
    ran = 0
    event: asyncio.Event | None = None

    @classmethod
    def expect(cls, n: int) -> asyncio.Event:
        cls.expected, cls.ran, cls.event = n, 0, asyncio.Event()
        return cls.event

    @classmethod
    def one(cls) -> None:
        cls.ran += 1
        if cls.ran == cls.expected and cls.event is not None:
            cls.event.set()


@asyncjob.job(name="bench_instructions.noop")
async def noop() -> None:
    """The asyncjob workers' job: counts itself."""
    Done.one()


async def _counted_noop() -> None:
    Done.one()


async def asyncjob_worker(url: str, n: int) -> None:
    """A worker (``asyncjob worker``'s Runner) until the ``n`` jobs queued ran."""
    done = Done.expect(n)
    store = SQLStore(url, lease=sql_subjects.LEASE, poll_interval=sql_subjects.POLL_INTERVAL)
    async with asyncjob.Runner(store, concurrency=sql_subjects.CONCURRENCY):
        await asyncio.wait_for(done.wait(), 600)


async def raw_worker(server: Any, n: int) -> None:
    """A raw loop of bench/sql_subjects.py until the ``n`` jobs queued ran."""
    done = Done.expect(n)
    sql_subjects.noop = _counted_noop  # what its loop calls, looked up by name
    stop = asyncio.Event()
    await server.prepare()
    running = asyncio.create_task(server.run(stop))
    try:
        await asyncio.wait_for(done.wait(), 600)
    finally:
        stop.set()
        await running
        await server.close()


def database(kind: str, where: str) -> sql_subjects.Database:
    if kind == "sqlite":
        return sql_subjects.Database("sqlite", f"sqlite+aiosqlite:///{where}", where)
    base = PG.rsplit("/", 1)[0]
    return sql_subjects.Database(
        "postgres",
        f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{where}",
        f"{base}/{where}",
    )


async def run(subject: str, n: int, where: str) -> None:
    """Run ``subject`` with ``n`` jobs (in the database ``where``, made by :func:`prepare`)."""
    group, name = subject.split(".")
    if group in ("coroutine", "sync"):
        bench = {
            "coroutine.asyncjob": core.asyncjob_coro_throughput,
            "coroutine.aiojobs": core.aiojobs_coro_throughput,
            "coroutine.floor": core.floor_coro_throughput,
            "coroutine.store_floor": core.store_floor_coro_throughput,
            "coroutine.queue": core.queue_coro_throughput,
            "sync.asyncjob": core.asyncjob_sync_throughput,
            "sync.pool": core.pool_sync_throughput,
        }[subject]
        await bench(n)
        return
    db = database(group, where)
    if name == "asyncjob":
        await asyncjob_worker(db.url, n)
    else:
        server = (
            sql_subjects.RawSqliteServer(db) if group == "sqlite" else sql_subjects.RawPgServer(db)
        )
        await raw_worker(server, n)


async def prepare(subject: str, n: int, where: str) -> None:
    """Queue ``n`` no-op jobs for ``subject`` in a new database ``where``."""
    group, name = subject.split(".")
    if group == "postgres":
        conn = await asyncpg.connect(PG)
        try:
            await conn.execute(f'CREATE DATABASE "{where}"')
        finally:
            await conn.close()
    db = database(group, where)
    if name == "asyncjob":
        store = SQLStore(db.url)
        async with asyncjob.Runner(store, producer_only=True) as runner:
            for first in range(0, n, sql_subjects.CHUNK):
                await runner.perform_many(noop, [()] * min(sql_subjects.CHUNK, n - first))
        return
    make: Callable[[sql_subjects.Database], Any] = (
        sql_subjects.raw_sqlite_producer if group == "sqlite" else sql_subjects.raw_pg_producer
    )
    async with make(db) as producer:
        await producer.many(n)


async def drop(where: str) -> None:
    conn = await asyncpg.connect(PG)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{where}" WITH (FORCE)')
    finally:
        await conn.close()


# -- counting --------------------------------------------------------------------


def count(subject: str, n: int) -> int:
    """The instructions of a process running ``subject`` with ``n`` jobs."""
    group = subject.split(".")[0]
    scratch = tempfile.mkdtemp(prefix="asyncjob-instructions-")
    where = (
        os.path.join(scratch, "jobs.db")
        if group == "sqlite"
        else f"asyncjob_ir_{uuid.uuid4().hex[:12]}"
    )
    me = [sys.executable, __file__]
    try:
        if group in ("sqlite", "postgres"):
            subprocess.run([*me, "--prepare", subject, str(n), where], check=True)
        done = subprocess.run(
            [
                "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                *me, "--run", subject, str(n), where,
            ],
            capture_output=True, text=True, check=False,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dicts and sets each run
        )  # fmt: skip
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise RuntimeError(
                f"{subject} with {n} jobs failed under valgrind:\n{done.stderr[-3000:]}"
            )
        return int(found.group(1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if group == "postgres":
            asyncio.run(drop(where))


def per_job(subject: str, sizes: tuple[int, int]) -> float:
    """Instructions of one more job: the start of the process cancels out."""
    low, high = (count(subject, n) for n in sizes)
    return (high - low) / (sizes[1] - sizes[0])


def sizes_of(group: str, quick: bool) -> tuple[int, int]:
    if group in ("sqlite", "postgres"):
        return (500, 1500) if quick else (1000, 5000)
    return (1000, 3000) if quick else (2000, 8000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs (a smoke run)")
    parser.add_argument("--only", default="core,sqlite,postgres", help="groups, comma-separated")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    parser.add_argument("--run", nargs=3, metavar=("SUBJECT", "N", "WHERE"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--prepare", nargs=3, metavar=("SUBJECT", "N", "WHERE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.run or args.prepare:
        subject, n, where = args.run or args.prepare
        asyncio.run((run if args.run else prepare)(subject, int(n), where))
        return 0
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    groups = set(args.only.split(","))
    counted: dict[str, float] = {}
    lines = [f"{'measure':40} {'asyncjob':>14} {'baseline':>14} {'':>17}  ratio"]
    for group, label, subject, baseline in ROWS:
        if group not in groups:
            continue
        sizes = sizes_of(group, args.quick)
        for name in (subject, baseline):
            if name not in counted:
                print(f"counting {name} ({sizes[0]:,} and {sizes[1]:,} jobs) ...", file=sys.stderr)
                counted[name] = per_job(name, sizes)
        ratio = counted[subject] / counted[baseline]
        lines.append(
            f"{label:40} {counted[subject]:>14,.0f} {counted[baseline]:>14,.0f} "
            f"{baseline.split('.')[1]:>17}  {ratio:.2f}x"
        )
    print("instructions per job, counted by valgrind --tool=callgrind")
    print("(ratio = asyncjob / baseline: lower is cheaper)")
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps(counted, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

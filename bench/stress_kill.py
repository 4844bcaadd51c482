"""Workers killed with SIGKILL, again and again: is any registered job lost?

Usage::

    python bench/stress_kill.py [--store URL] [--jobs N] [--rounds N] [--lease SECONDS]

Performs ``--jobs`` registered jobs (each a short coroutine) with a
producer-only runner, starts an ``asyncjob worker`` process, and
``--rounds`` times kills the current worker with SIGKILL at a random moment
of its life and starts another, until every job is done. Then it checks
that every job ended succeeded, with its own result, and prints how many
ran more than once (registered jobs run at least once: those a kill
caught mid-way run again once their lease runs out).

The store is a new SQLite file by default; ``--store`` takes any SQL
store's URL (``postgresql+asyncpg://user@host/db``). Only the jobs of this
run are checked, and they are deleted afterwards when all is well. Each
job also appends a line to a file of its worker when it starts, so that the
runs a kill cut short are counted too, not only the claims.

The exit code is 0 when no job was lost, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlalchemy import delete, func, select

import asyncjob
from asyncjob.stores.sql import SQLStore

#: The registered name of the job: the same here (``__main__``) and in
#: the workers, which import this file as the module ``stress_kill``.
JOB_NAME = "bench.stress_kill.step"

#: Where the jobs record their starts: a directory, one file per worker.
RUNS_DIR = "ASYNCJOB_STRESS_RUNS_DIR"

#: This file's directory, put on the workers' path to import it.
HERE = Path(__file__).resolve().parent

_runs_file: int | None = None


@asyncjob.job(name=JOB_NAME)
async def step(n: int, seconds: float) -> int:
    """Record the start, work ``seconds``, and return ``n``."""
    _record_start(n)
    await asyncio.sleep(seconds)  # the work
    return n


def _record_start(n: int) -> None:
    """One line per start, in one write: a SIGKILL leaves whole lines."""
    global _runs_file
    directory = os.environ.get(RUNS_DIR)
    if directory is None:
        return
    if _runs_file is None:
        path = os.path.join(directory, f"runs-{os.getpid()}.log")
        _runs_file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_runs_file, f"{n}\n".encode())


# -- the run -----------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    store: str
    jobs: int
    rounds: int
    lease: float
    concurrency: int
    job_seconds: float
    min_life: float
    max_life: float
    timeout: float
    seed: int | None
    logs: Path


@dataclass
class Outcome:
    """What the store and the run logs say once the workers are done."""

    performed: int
    succeeded: int
    wrong_result: list[int]
    not_succeeded: Counter[str]
    missing: int
    attempts: Counter[int]
    starts: Counter[int]
    never_started: int

    @property
    def lost(self) -> int:
        others = sum(self.not_succeeded.values())
        return self.missing + others + len(self.wrong_result) + self.never_started


class Workers:
    """The one ``asyncjob worker`` process alive at a time."""

    def __init__(self, options: Options, runs_dir: Path) -> None:
        self.options = options
        self.runs_dir = runs_dir
        self.started = 0
        self.killed = 0
        self.current: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env[RUNS_DIR] = str(self.runs_dir)
        log: IO[bytes] = (self.options.logs / f"worker-{self.started}.log").open("wb")
        try:
            self.current = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "asyncjob",
                "worker",
                "--store",
                self.options.store,
                "--import",
                "stress_kill",
                "--concurrency",
                str(self.options.concurrency),
                "--lease",
                str(self.options.lease),
                "--poll-interval",
                "0.05",
                "--grace-period",
                "5",
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        finally:
            log.close()  # the child has its own copy
        self.started += 1

    async def kill(self) -> None:
        """SIGKILL: no grace, no hand-back; its jobs come back with their leases."""
        process = self.current
        assert process is not None
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
        self.killed += 1
        self.current = None

    async def stop(self) -> int | None:
        """SIGTERM, a graceful stop; returns the exit code."""
        process = self.current
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                return await process.wait()
        except TimeoutError:
            process.kill()
            return await process.wait()


async def unfinished(store: SQLStore, since: float) -> int:
    """How many jobs of this run are still queued or running."""
    jobs = store.tables.jobs
    query = (
        select(func.count())
        .select_from(jobs)
        .where(
            jobs.c.name == JOB_NAME,
            jobs.c.enqueued_at >= since,
            jobs.c.state.in_(("queued", "running")),
        )
    )
    async with store.db.read() as conn:
        return int(await conn.scalar(query) or 0)


async def until_done(store: SQLStore, since: float, seconds: float) -> bool:
    """Wait up to ``seconds`` for every job to be done; True if they are."""
    deadline = time.monotonic() + seconds
    while True:
        if await unfinished(store, since) == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def count_starts(runs_dir: Path) -> Counter[int]:
    """How many times each job started, from the workers' files."""
    starts: Counter[int] = Counter()
    for path in runs_dir.glob("runs-*.log"):
        starts.update(int(line) for line in path.read_text().split())
    return starts


async def check(store: SQLStore, ids: dict[str, int], since: float, runs_dir: Path) -> Outcome:
    jobs = store.tables.jobs
    query = select(jobs.c.id, jobs.c.state, jobs.c.result, jobs.c.attempts).where(
        jobs.c.name == JOB_NAME, jobs.c.enqueued_at >= since
    )
    async with store.db.read() as conn:
        rows = (await conn.execute(query)).all()
    found = {row.id: row for row in rows if row.id in ids}
    succeeded = 0
    wrong: list[int] = []
    others: Counter[str] = Counter()
    attempts: Counter[int] = Counter()
    for job_id, row in found.items():
        attempts[row.attempts] += 1
        if row.state != "succeeded":
            others[row.state] += 1
        elif row.result != str(ids[job_id]):
            wrong.append(ids[job_id])
        else:
            succeeded += 1
    starts = await asyncio.to_thread(count_starts, runs_dir)
    by_starts = Counter(starts[n] for n in ids.values())
    return Outcome(
        performed=len(ids),
        succeeded=succeeded,
        wrong_result=sorted(wrong),
        not_succeeded=others,
        missing=len(ids) - len(found),
        attempts=attempts,
        starts=by_starts,
        never_started=by_starts[0],
    )


async def forget(store: SQLStore, ids: Sequence[str]) -> None:
    """Delete this run's jobs, a few hundred at a time."""
    jobs = store.tables.jobs
    for start in range(0, len(ids), 500):
        async with store.db.write() as conn:
            await conn.execute(delete(jobs).where(jobs.c.id.in_(ids[start : start + 500])))


async def run(options: Options) -> int:
    rng = random.Random(options.seed)
    runs_dir = options.logs / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    store = SQLStore(options.store, poll_interval=0.05, lease=options.lease)
    workers = Workers(options, runs_dir)
    print(f"store    {options.store}")
    print(f"logs     {options.logs}")
    async with asyncjob.Runner(store, producer_only=True) as producer:
        since = time.time()  # enqueued_at is stamped from the same clock
        began = time.perf_counter()
        ids: dict[str, int] = {}
        for n in range(options.jobs):
            ids[await producer.perform(step, n, options.job_seconds)] = n
        performed = time.perf_counter() - began
        print(f"jobs     {options.jobs} performed in {performed:.1f} s")

        began = time.perf_counter()
        await workers.start()
        done = False
        for _ in range(options.rounds):
            life = rng.uniform(options.min_life, options.max_life)
            if await until_done(store, since, life):
                done = True
                break
            await workers.kill()
            await workers.start()
        done = done or await until_done(store, since, options.timeout)
        elapsed = time.perf_counter() - began
        code = await workers.stop()
        outcome = await check(store, ids, since, runs_dir)
        if outcome.lost == 0:
            await forget(store, list(ids))
    print(f"workers  {workers.started} started, {workers.killed} killed with SIGKILL,", end=" ")
    print(f"the last one stopped with SIGTERM (exit code {code})")
    print(f"time     {elapsed:.1f} s from the first worker's start to the last job's end")
    print(f"result   {outcome.succeeded} of {outcome.performed} jobs succeeded", end="")
    if not done:
        print(f" (gave up waiting after {options.timeout:.0f} s)", end="")
    print()
    twice_claimed = sum(count for attempts, count in outcome.attempts.items() if attempts > 1)
    twice_started = sum(count for starts, count in outcome.starts.items() if starts > 1)
    print(f"again    {twice_claimed} jobs claimed more than once, {twice_started} started", end="")
    print(" more than once (at least once)")
    print(f"         jobs by claims {sorted(outcome.attempts.items())},", end=" ")
    print(f"by starts {sorted(outcome.starts.items())}")
    if outcome.lost:
        print(f"LOST     {outcome.lost} jobs:", end=" ")
        print(f"{outcome.missing} missing from the store,", end=" ")
        print(f"{dict(outcome.not_succeeded)} in another state,", end=" ")
        print(f"{len(outcome.wrong_result)} with a wrong result", end=" ")
        print(f"{outcome.wrong_result[:10]}, {outcome.never_started} never started")
        print(f"         the store keeps them; worker logs in {options.logs}")
        return 1
    print("no job lost")
    return 0


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Kill asyncjob workers with SIGKILL while they run registered jobs, "
        "and check that every job still ends succeeded."
    )
    parser.add_argument(
        "--store", help="an SQL store's URL (default: a new SQLite file in a temporary directory)"
    )
    parser.add_argument("--jobs", type=int, default=2000, help="jobs to perform (default 2000)")
    parser.add_argument(
        "--rounds", type=int, default=20, help="workers killed, one after the other (default 20)"
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=1.0,
        help="the workers' lease (seconds): a killed worker's jobs run again after it",
    )
    parser.add_argument(
        "--concurrency", type=int, default=10, help="jobs a worker runs at once (default 10)"
    )
    parser.add_argument(
        "--job-seconds", type=float, default=0.05, help="how long each job works (default 0.05)"
    )
    parser.add_argument(
        "--min-life",
        type=float,
        default=0.3,
        help="a worker is killed at a random moment at least this long after it was "
        "started (default 0.3 s)",
    )
    parser.add_argument(
        "--max-life",
        type=float,
        default=2.0,
        help="... and at most this long after (default 2 s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the last worker to finish the jobs (default 300)",
    )
    parser.add_argument("--seed", type=int, help="seed of the random moments of the kills")
    parser.add_argument("--logs", type=Path, help="directory for the workers' logs")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.rounds < 0 or args.concurrency < 1:
        parser.error("--jobs and --concurrency must be at least 1, --rounds at least 0")
    if not 0 <= args.min_life <= args.max_life or args.lease <= 0:
        parser.error("need 0 <= --min-life <= --max-life, and --lease > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="asyncjob-stress-") as scratch:
        logs: Path = args.logs or Path(scratch)
        store: str = args.store or f"sqlite+aiosqlite:///{Path(scratch) / 'stress.db'}"
        options = Options(
            store=store,
            jobs=args.jobs,
            rounds=args.rounds,
            lease=args.lease,
            concurrency=args.concurrency,
            job_seconds=args.job_seconds,
            min_life=args.min_life,
            max_life=args.max_life,
            timeout=args.timeout,
            seed=args.seed,
            logs=logs,
        )
        code = asyncio.run(run(options))
        if code and args.logs is None:
            print("         (rerun with --logs DIR to keep the workers' logs)")
        return code


if __name__ == "__main__":
    raise SystemExit(main())

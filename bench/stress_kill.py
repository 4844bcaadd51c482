"""Workers killed, and workers whose loop is blocked: is any job lost, or run twice at once?

Usage::

    python bench/stress_kill.py [--stores sqlite,postgres] [--pg URL]
                                [--rounds N] [--jobs N] [--scenarios kill,blocking]

Two scenarios, on each store:

- ``kill``: performs ``--jobs`` registered jobs (each a short coroutine)
  with a producer-only runner, starts an ``asyncjob worker`` process, and
  ``--rounds`` times kills the current worker with SIGKILL at a random
  moment of its life and starts another, until every job is done. Jobs run
  at least once: those a kill caught mid-way run again once their lease
  runs out.
- ``blocking``: two workers with a lease of 1 s run jobs that block their
  event loop for 2.5 s (CPU work done on the loop by mistake) between short
  ones; nobody is killed, so every job must run exactly once.

Each job appends a line when it starts and when it ends to a file of its
worker (a SIGKILL leaves whole lines), with the system's monotonic clock,
so that runs a kill cut short are counted too, and any two runs of a job
at the same time are seen: a killed worker's runs end at its kill.

Printed, for each scenario and store: trials (kills), jobs, lost (not
ended succeeded with their own result), re-runs (jobs started more than
once) and overlapping runs (a job started while another run of it had not
ended). The exit code is 0 when no job was lost and none overlapped, and
(``blocking``) none ran twice; 1 otherwise.
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
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from scratch_pg import DEFAULT_PG
from sqlalchemy import delete, func, select

import asyncjob
from asyncjob.stores.sql import SQLStore

#: The registered name of the job: the same here (``__main__``) and in
#: the workers, which import this file as the module ``stress_kill``.
JOB_NAME = "bench.stress_kill.step"

#: Where the jobs record their runs: a directory, one file per worker.
RUNS_DIR = "ASYNCJOB_STRESS_RUNS_DIR"

#: This file's directory, put on the workers' path to import it.
HERE = Path(__file__).resolve().parent

_runs_file: int | None = None


@asyncjob.job(name=JOB_NAME)
async def step(n: int, seconds: float, block: float = 0.0) -> int:
    """Record the start, work ``seconds`` (or block the loop ``block``
    seconds), record the end, and return ``n``."""
    _record("start", n)
    if block:
        time.sleep(block)  # noqa: ASYNC251 - the blocked loop is the scenario
    else:
        await asyncio.sleep(seconds)  # the work
    _record("end", n)
    return n


def _record(what: str, n: int) -> None:
    """One line per event, in one write: a SIGKILL leaves whole lines."""
    global _runs_file
    directory = os.environ.get(RUNS_DIR)
    if directory is None:
        return
    if _runs_file is None:
        path = os.path.join(directory, f"runs-{os.getpid()}.log")
        _runs_file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_runs_file, f"{what} {n} {os.getpid()} {time.monotonic()!r}\n".encode())


# -- one trial set ----------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    scenario: str
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
class Result:
    """What one scenario on one store came to."""

    scenario: str
    store: str
    trials: int
    jobs: int
    lost: int
    reruns: int
    overlaps: int
    detail: str

    @property
    def ok(self) -> bool:
        return (
            not self.lost and not self.overlaps and (self.scenario != "blocking" or not self.reruns)
        )


class Workers:
    """The ``asyncjob worker`` processes of a trial set."""

    def __init__(self, options: Options, runs_dir: Path) -> None:
        self.options = options
        self.runs_dir = runs_dir
        self.started = 0
        self.processes: list[asyncio.subprocess.Process] = []
        #: When each killed worker died (the monotonic clock), by pid.
        self.killed_at: dict[int, float] = {}

    async def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env[RUNS_DIR] = str(self.runs_dir)
        log: IO[bytes] = (self.options.logs / f"worker-{self.started}.log").open("wb")
        try:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "asyncjob", "worker", "--store", self.options.store),
                *("--import", "stress_kill", "--concurrency", str(self.options.concurrency)),
                *("--lease", str(self.options.lease), "--poll-interval", "0.05"),
                *("--grace-period", "5"),
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        finally:
            log.close()  # the child has its own copy
        self.processes.append(process)
        self.started += 1

    async def kill_oldest(self) -> None:
        """SIGKILL: no grace, no hand-back; its jobs come back with their leases."""
        process = self.processes.pop(0)
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
        self.killed_at[process.pid] = time.monotonic()

    async def stop_all(self) -> list[int]:
        """SIGTERM, a graceful stop; the exit codes."""
        codes = []
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                async with asyncio.timeout(30):
                    codes.append(await process.wait())
            except TimeoutError:
                process.kill()
                codes.append(await process.wait())
        self.processes = []
        return codes


async def unfinished(store: SQLStore, ids: Sequence[str]) -> int:
    """How many jobs of this run are still queued or running."""
    jobs = store.tables.jobs
    query = (
        select(func.count())
        .select_from(jobs)
        .where(jobs.c.id.in_(ids), jobs.c.state.in_(("queued", "running")))
    )
    async with store.db.read() as conn:
        return int(await conn.scalar(query) or 0)


async def until_done(store: SQLStore, ids: Sequence[str], seconds: float) -> bool:
    """Wait up to ``seconds`` for every job to be done; True if they are."""
    deadline = time.monotonic() + seconds
    while True:
        if await unfinished(store, ids) == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))  # polls the store


def read_runs(runs_dir: Path, killed_at: dict[int, float]) -> dict[int, list[tuple[float, float]]]:
    """Each job's runs, as (start, end) on the monotonic clock; a run that
    never wrote its end ended when its worker was killed."""
    runs: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for path in runs_dir.glob("runs-*.log"):
        open_runs: dict[int, list[float]] = defaultdict(list)
        for line in path.read_text().splitlines():
            what, job, _pid, at = line.split()
            if what == "start":
                open_runs[int(job)].append(float(at))
            else:
                runs[int(job)].append((open_runs[int(job)].pop(0), float(at)))
        pid_of_file = int(path.stem.removeprefix("runs-"))
        for n, starts in open_runs.items():
            end = killed_at.get(pid_of_file, float("inf"))
            runs[n].extend((start, end) for start in starts)
    return runs


def overlapping(runs: dict[int, list[tuple[float, float]]]) -> int:
    """How many runs began while another run of the same job had not ended."""
    count = 0
    for intervals in runs.values():
        latest_end = float("-inf")
        for start, end in sorted(intervals):
            if start < latest_end:
                count += 1
            latest_end = max(latest_end, end)
    return count


async def check(store: SQLStore, ids: dict[str, int]) -> tuple[int, Counter[str]]:
    """How many jobs did not end succeeded with their own result, and why."""
    jobs = store.tables.jobs
    query = select(jobs.c.id, jobs.c.state, jobs.c.result).where(jobs.c.id.in_(list(ids)))
    async with store.db.read() as conn:
        rows = {row.id: row for row in (await conn.execute(query)).all()}
    why: Counter[str] = Counter()
    for job_id, n in ids.items():
        row = rows.get(job_id)
        if row is None:
            why["missing"] += 1
        elif row.state != "succeeded":
            why[row.state] += 1
        elif row.result != str(n):
            why["wrong result"] += 1
    return sum(why.values()), why


async def forget(store: SQLStore, ids: Sequence[str]) -> None:
    """Delete this run's jobs, a few hundred at a time."""
    jobs = store.tables.jobs
    for start in range(0, len(ids), 500):
        async with store.db.write() as conn:
            await conn.execute(delete(jobs).where(jobs.c.id.in_(ids[start : start + 500])))


async def run(options: Options) -> Result:
    rng = random.Random(options.seed)
    runs_dir = options.logs / f"runs-{options.scenario}-{os.urandom(3).hex()}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    store = SQLStore(options.store, poll_interval=0.05, lease=options.lease)
    workers = Workers(options, runs_dir)
    blocking = options.scenario == "blocking"
    async with asyncjob.Runner(store, producer_only=True) as producer:
        ids: dict[str, int] = {}
        for n in range(options.jobs):
            block = 2.5 if blocking and n % 2 else 0.0
            ids[await producer.perform(step, n, options.job_seconds, block)] = n
        listed = list(ids)
        trials = 0
        if blocking:
            for _ in range(2):
                await workers.start()
        else:
            await workers.start()
            for _ in range(options.rounds):
                if await until_done(store, listed, rng.uniform(options.min_life, options.max_life)):
                    break
                await workers.kill_oldest()
                trials += 1
                await workers.start()
        done = await until_done(store, listed, options.timeout)
        codes = await workers.stop_all()
        lost, why = await check(store, ids)
        runs = await asyncio.to_thread(read_runs, runs_dir, workers.killed_at)
        if not lost:
            await forget(store, listed)
    reruns = sum(1 for n in ids.values() if len(runs.get(n, ())) > 1)
    detail = f"workers {workers.started}, exit codes {codes}"
    if not done:
        detail += f"; gave up waiting after {options.timeout:.0f} s"
    if lost:
        detail += f"; lost: {dict(why)}"
    return Result(
        options.scenario,
        options.store.split("+", 1)[0],
        trials,
        options.jobs,
        lost,
        reruns,
        overlapping(runs),
        detail,
    )


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Kill asyncjob workers with SIGKILL, and block their loops, while they "
        "run registered jobs: check that every job still ends succeeded, and that none "
        "runs twice at once."
    )
    parser.add_argument("--stores", default="sqlite,postgres", help="sqlite, postgres, or both")
    parser.add_argument("--pg", default=DEFAULT_PG, help="the PostgreSQL database to use")
    parser.add_argument("--scenarios", default="kill,blocking", help="kill, blocking, or both")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs of the kill scenario")
    parser.add_argument(
        "--blocking-jobs", type=int, default=16, help="jobs of the blocking scenario (default 16)"
    )
    parser.add_argument(
        "--rounds", type=int, default=60, help="workers killed per store (default 60)"
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
    parser.add_argument("--min-life", type=float, default=0.3, help="a worker lives at least")
    parser.add_argument("--max-life", type=float, default=2.0, help="... and at most (seconds)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the last jobs"
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
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="asyncjob-stress-") as scratch:
        logs: Path = args.logs or Path(scratch)
        urls = {"sqlite": f"sqlite+aiosqlite:///{Path(scratch) / 'stress.db'}", "postgres": args.pg}
        for scenario in args.scenarios.split(","):
            for kind in args.stores.split(","):
                options = Options(
                    scenario=scenario,
                    store=urls[kind],
                    jobs=args.blocking_jobs if scenario == "blocking" else args.jobs,
                    rounds=args.rounds,
                    lease=args.lease,
                    concurrency=2 if scenario == "blocking" else args.concurrency,
                    job_seconds=args.job_seconds,
                    min_life=args.min_life,
                    max_life=args.max_life,
                    timeout=args.timeout,
                    seed=args.seed,
                    logs=logs,
                )
                print(f"{scenario} on {kind} ...", file=sys.stderr, flush=True)
                results.append(asyncio.run(run(options)))
    row = "{:<10}{:<12}{:>7}{:>7}{:>6}{:>9}{:>10}   {}"
    print(row.format("scenario", "store", "trials", "jobs", "lost", "re-runs", "overlaps", ""))
    for r in results:
        print(
            row.format(
                r.scenario, r.store, r.trials, r.jobs, r.lost, r.reruns, r.overlaps, r.detail
            )
        )
    sums = [
        sum(getattr(r, f) for r in results)
        for f in ("trials", "jobs", "lost", "reruns", "overlaps")
    ]
    print(row.format("total", "", *sums, ""))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

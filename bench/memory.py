"""Idle worker memory: the peak resident memory of each worker as its users
start it, waiting on an empty queue.

Each worker is started in a process of its own, from its own command line,
on a fresh database, and left idle for a few seconds; its ``VmHWM`` (peak
resident set) and ``VmRSS`` are then read from ``/proc/PID/status`` and it is
stopped with SIGTERM. The subjects:

- asyncjob: ``python -m asyncjob worker --store URL --import asyncjob_jobs``,
  on PostgreSQL and on SQLite;
- procrastinate: ``procrastinate --app procrastinate_jobs.app worker``;
- pgqueuer: ``PgQueuer.run()`` in a script (its command line fails at start);
- the floor: one asyncpg connection that listens (``raw_pg_loop.py``);
- asyncjob's floor: the same, with SQLAlchemy's Core and asyncpg dialect
  imported, as asyncjob's SQL store needs them (``sqlalchemy_floor.py``):
  what asyncjob's worker weighs beyond it is asyncjob's own.

The modules they load are in ``bench/idle/``, each importing its own library
only. Target (issue "close to the limit"): asyncjob's idle worker at most
40 MB. Linux only (``/proc``)::

    python bench/memory.py [--quick] [--repeat N] [--pg URL] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import sql  # noqa: E402 - the fresh databases of the SQL benchmark
from sql_subjects import Database  # noqa: E402

#: Seconds a worker is left idle before it is measured (its start, its
#: first look at the queue, done).
SETTLE = 4.0
QUICK_SETTLE = 2.0
#: Seconds a worker gets to stop on SIGTERM before it is killed.
STOP_TIMEOUT = 10.0
TARGET_MB = 40.0

#: (key, label, kind of database, the command in bench/idle/).
SUBJECTS: tuple[tuple[str, str, str, list[str]], ...] = (
    ("asyncjob.postgres", "asyncjob worker, PostgreSQL", "postgres",
     [sys.executable, "-m", "asyncjob", "worker", "--store", "{url}", "--import", "asyncjob_jobs"]),
    ("asyncjob.sqlite", "asyncjob worker, SQLite", "sqlite",
     [sys.executable, "-m", "asyncjob", "worker", "--store", "{url}", "--import", "asyncjob_jobs"]),
    ("raw", "raw asyncpg connection, listening", "postgres",
     [sys.executable, "raw_pg_loop.py"]),
    ("sqlalchemy", "the same + SQLAlchemy Core imported", "postgres",
     [sys.executable, "sqlalchemy_floor.py"]),
    ("pgqueuer", "pgqueuer (PgQueuer.run)", "postgres",
     [sys.executable, "pgqueuer_jobs.py"]),
    ("procrastinate", "procrastinate worker", "postgres",
     [sys.executable, "-m", "procrastinate", "--app", "procrastinate_jobs.app", "worker"]),
)  # fmt: skip


def status_mb(pid: int) -> dict[str, float]:
    """``VmHWM`` and ``VmRSS`` of a process, in MB (MiB)."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0]) / 1024
    return found


async def prepare(key: str, db: Database) -> None:
    """The schema a peer's worker expects to find (asyncjob makes its own)."""
    if key == "procrastinate":
        from sql_subjects import procrastinate_app

        app = procrastinate_app(db.dsn)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
    elif key == "pgqueuer":
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        conn = await asyncpg.connect(db.dsn)
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()


async def measure_one(key: str, kind: str, command: list[str], admin: str, settle: float) -> float:
    """The idle worker's VmHWM, in MB."""
    async with sql.fresh_database(kind, admin) as db:
        await prepare(key, db)
        argv = [part.format(url=db.url) for part in command]
        env = {**os.environ, "BENCH_DSN": db.dsn, "PYTHONPATH": str(HERE / "idle")}
        proc = subprocess.Popen(  # noqa: ASYNC220 - the child is only waited for at the end
            argv, cwd=HERE / "idle", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            await asyncio.sleep(settle)  # a benchmark's wait: nothing to synchronise with
            if proc.poll() is not None:
                said = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                raise RuntimeError(f"{' '.join(argv)} ended:\n{said}")
            memory = status_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return memory["VmHWM"]


def table(medians: dict[str, float]) -> str:
    """asyncjob's idle workers against the target, then every subject."""
    lines = [
        f"{'worker':<40} {'VmHWM':>9}  {'vs asyncjob (PG)':>16}  target",
        "-" * 80,
    ]
    ours = medians.get("asyncjob.postgres")
    for key, label, _, _ in SUBJECTS:
        if key not in medians:
            continue
        value = medians[key]
        ratio = "" if ours is None or key.startswith("asyncjob") else f"{ours / value:.2f}x"
        target = ""
        if key.startswith("asyncjob"):
            passed = "PASS" if value <= TARGET_MB else "MISS"
            target = f"<= {TARGET_MB:g} MB  {passed}"
        lines.append(f"{label:<40} {value:>6.1f} MB  {ratio:>16}  {target}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 repetition, a shorter settle")
    parser.add_argument("--repeat", type=int, help="repetitions (default 3, or 1 with --quick)")
    parser.add_argument("--pg", default=sql.DEFAULT_PG, help="the PostgreSQL server")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    if repeat < 1:
        sys.exit("--repeat must be at least 1")
    settle = QUICK_SETTLE if args.quick else SETTLE
    samples: dict[str, list[float]] = {}
    for i in range(repeat):
        for key, label, kind, command in SUBJECTS:
            print(f"repetition {i + 1}/{repeat}: {label}", file=sys.stderr, flush=True)
            value = asyncio.run(measure_one(key, kind, command, args.pg, settle))
            samples.setdefault(key, []).append(value)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    print(
        f"idle worker memory (VmHWM after {settle:g} s idle), Python "
        f"{sys.version.split()[0]}, medians of {repeat}; ratio = asyncjob (PostgreSQL) / worker\n"
    )
    print(table(medians))
    print("\nranges:")
    for key, values in samples.items():
        print(f"  {key:<20} {min(values):.1f} .. {max(values):.1f} MB")
    if args.json is not None:
        when = time.strftime("%Y-%m-%dT%H:%M:%S")
        args.json.write_text(json.dumps({"when": when, "samples": samples, "medians": medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An SQLite worker in this process: its jobs a second, and each thread's CPU a job.

``bench/sql.py`` times a worker in a process of its own and reads that
process's CPU; this runs the same worker (``Runner(SQLStore(...),
concurrency=50)`` and the no-op job, from ``sql_subjects``) in this process,
and reads what each of its threads spent from ``/proc/self/task``. It
answers what ``sql.py`` cannot: whether the loop's thread and the store's
writing thread work at the same time, or take turns. Their CPU a job
summed and compared with the wall time a job says it: a sum as long as
the wall time is two threads that never ran at once.

Each run: ``--jobs`` registered no-op jobs performed by a producer-only
runner (``perform_many`` of 500 at a time), then the worker started and timed until a
second connection to the file sees none queued or running (asked every
20 ms, in the loop's thread, through the store's indexes). Linux only.

To compare two versions of asyncjob, alternate runs with ``PYTHONPATH``
set to each checkout (the host's noise moves a run by a fifth)::

    python bench/sqlite_worker.py [--jobs N] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sql_subjects import ASYNCJOB_LEFT, AsyncjobServer, Database, asyncjob_producer

#: How often the second connection looks whether the jobs are done (seconds).
DONE_POLL = 0.02


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user and system) each thread of this process has spent, by id."""
    tick = os.sysconf("SC_CLK_TCK")
    spent = {}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            spent[tid] = (int(fields[11]) + int(fields[12])) / tick
    return spent


async def run_once(jobs: int) -> tuple[float, list[float]]:
    """Jobs a second of one worker run, and the CPU a job (seconds) of each
    thread that spent any, most first. The jobs are performed, and run, as
    ``sql.py`` does (``asyncjob_producer``, ``AsyncjobServer``), the worker
    timed from its start, as there."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "jobs.db"
        db = Database("sqlite", f"sqlite+aiosqlite:///{path}", str(path))
        async with asyncjob_producer(db) as producer:
            await producer.many(jobs)
        server = AsyncjobServer(db)
        await server.prepare()
        stop = asyncio.Event()
        with contextlib.closing(sqlite3.connect(path)) as probe:
            before, start = thread_cpu(), time.perf_counter()
            worker = asyncio.create_task(server.run(stop))
            # The file says when every end is written; nothing in this
            # process could (sql.py asks it the same way). Through two
            # indexes: a read of the table would take the loop's time.
            while probe.execute(ASYNCJOB_LEFT).fetchone():
                if worker.done():
                    worker.result()  # its error
                    raise RuntimeError("the worker stopped before its jobs were done")
                await asyncio.sleep(DONE_POLL)
            wall = time.perf_counter() - start
            after = thread_cpu()
            stop.set()
            await worker
    spent = [after[tid] - before.get(tid, 0.0) for tid in after]
    return jobs / wall, sorted((cpu / jobs for cpu in spent if cpu > 0), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs a run (default 20,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs (default 3)")
    args = parser.parse_args()
    rates = []
    for _ in range(args.repeat):
        rate, threads = asyncio.run(run_once(args.jobs))
        rates.append(rate)
        cpu = ", ".join(f"{1e6 * seconds:.1f}" for seconds in threads)
        print(
            f"{rate:9,.0f} jobs/s   wall {1e6 / rate:5.1f} us a job   "
            f"threads' CPU a job: {cpu} us (sum {1e6 * sum(threads):.1f})",
            flush=True,
        )
    print(f"median {statistics.median(rates):,.0f} jobs/s", flush=True)


if __name__ == "__main__":
    main()

"""Performs into a growing table: asyncjob's time-ordered ids against random ones.

A job's id is the primary key of the SQL stores' table. Random ids put
each new job on a page of that key's index of its own; ids that begin
with the time they were made (``asyncjob.new_job_id``: UUIDs of version 7)
put the jobs performed together on the same pages, at the index's end.
This measures what that is worth: two stores on fresh databases of the
same kind, one given asyncjob's ids and one given 128 random bits as 32
hexadecimal digits (asyncjob's ids before they were time-ordered), each
written ``--batches`` batches of 500 jobs by ``enqueue_many`` (a batch
into one, a batch into the other, so that the host's noise falls on
both alike). Each figure is the median of a quarter of the batches, in
microseconds a job: how an insert's cost grows with the table.

    python bench/ids.py [--batches N] [--only postgres|sqlite] [--pg URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sql import DEFAULT_PG, KINDS, fresh_database

import asyncjob
from asyncjob.stores import Job
from asyncjob.stores.sql import SQLStore

#: Jobs a batch, as ``bench/sql.py``'s producers perform them.
BATCH = 500


def random_id() -> str:
    """An id of 128 random bits, as asyncjob's were."""
    return os.urandom(16).hex()


def new_job(job_id: str) -> Job:
    """A registered job with no arguments, as a runner hands it to its store."""
    return Job(job_id, "bench.noop", print, (), {}, False, time.time(), True)


async def grow(kind: str, admin: str, batches: int) -> dict[str, list[float]]:
    """Microseconds a job of each batch, for each kind of id."""
    makers: dict[str, Callable[[], str]] = {
        "time-ordered": asyncjob.new_job_id,
        "random": random_id,
    }
    spent: dict[str, list[float]] = {name: [] for name in makers}
    async with fresh_database(kind, admin) as first, fresh_database(kind, admin) as second:
        stores = {"time-ordered": SQLStore(first.url), "random": SQLStore(second.url)}
        for store in stores.values():
            await store.open()
        try:
            for _ in range(batches):
                for name, make_id in makers.items():
                    jobs = [new_job(make_id()) for _ in range(BATCH)]
                    start = time.perf_counter()
                    await stores[name].enqueue_many(jobs)
                    spent[name].append((time.perf_counter() - start) / BATCH * 1e6)
        finally:
            for store in stores.values():
                await store.close()
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300, help="batches of 500 (default 300)")
    parser.add_argument("--only", choices=KINDS, help="one kind of database only")
    parser.add_argument("--pg", default=DEFAULT_PG, metavar="URL", help="PostgreSQL admin URL")
    args = parser.parse_args()
    if args.batches < 4:
        parser.error("--batches must be at least 4 (figures are medians of quarters)")
    quarter = args.batches // 4
    print(f"us a job, medians of each quarter of {args.batches} batches of {BATCH}")
    for kind in [args.only] if args.only else KINDS:
        spent = asyncio.run(grow(kind, args.pg, args.batches))
        for name, figures in spent.items():
            medians = [
                statistics.median(figures[q * quarter : (q + 1) * quarter]) for q in range(4)
            ]
            print(f"{kind:8} {name:12} " + "  ".join(f"{m:6.2f}" for m in medians))
        last = [statistics.median(figures[-quarter:]) for figures in spent.values()]
        print(f"{kind:8} last quarter: time-ordered / random = {last[0] / last[1]:.2f}x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How soon a cancel from another process stops a job's code, on SQLite and PostgreSQL.

One runner holds a running job (a worker, with the default lease of 30 s:
renewals every 10 s); another store object on the same database, as
another process would, cancels it. Measured: from just before ``cancel()``
to the job's ``CancelledError``, over many trials; p50 and p99 printed.
On PostgreSQL the cancel is pushed (``NOTIFY``); on SQLite the holder
looks every ``poll_interval`` (0.25 s by default).

    python bench/cancel.py [--trials N] [--pg URL]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from scratch_pg import DEFAULT_PG, drop_store_tables, new_prefix

import asyncjob
from asyncjob.stores.sql import SQLStore


async def trials(url: str, count: int, prefix: str) -> list[float]:
    """Milliseconds from cancel() in another store to the job's CancelledError."""
    stopped: asyncio.Queue[float] = asyncio.Queue()
    started = asyncio.Event()

    async def long_job() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # the work
        except asyncio.CancelledError:
            stopped.put_nowait(time.perf_counter())
            raise

    # A closure, so that it runs in the holding runner: not registered.
    async with asyncjob.Runner(SQLStore(url, table_prefix=prefix)) as holder:
        other = SQLStore(url, table_prefix=prefix)
        await other.open()
        try:
            delays = []
            for _ in range(count):
                started.clear()
                job_id = await holder.perform(long_job)
                await asyncio.wait_for(started.wait(), 10)
                sent = time.perf_counter()
                await other.cancel(job_id)
                delays.append((await asyncio.wait_for(stopped.get(), 60) - sent) * 1000)
                await holder.join(10)
            return delays
        finally:
            await other.close()


def report(kind: str, delays: list[float]) -> str:
    cut = statistics.quantiles(delays, n=100, method="inclusive")
    return (
        f"{kind:<10} cancel -> code stopped: p50 {statistics.median(delays):8.2f} ms   "
        f"p99 {cut[98]:8.2f} ms   max {max(delays):8.2f} ms   ({len(delays)} trials)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--pg", default=DEFAULT_PG, help="a PostgreSQL database to use")
    args = parser.parse_args()
    logging.getLogger("asyncjob").setLevel(logging.ERROR)  # each cancel logs a warning
    prefix = new_prefix()
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = f"sqlite+aiosqlite:///{Path(tmp) / 'jobs.db'}"
        print(report("sqlite", await trials(sqlite, args.trials, prefix)), flush=True)
    try:
        print(report("postgres", await trials(args.pg, args.trials, prefix)), flush=True)
    finally:
        await drop_store_tables(args.pg, prefix)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

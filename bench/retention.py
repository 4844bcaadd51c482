"""How fast an SQL store deletes finished jobs, against how fast it finishes them.

Retention must keep pace with the finish rate, or the table grows without
bound. Here a table holds ``--jobs`` finished jobs (and as many queued ones,
which must stay), and one worker's maintenance rounds delete them, the way
they run in a worker: ``forget_finished()`` again and again, a batch per
statement, for up to its time budget per round. Printed: rows deleted per
second of deleting, the longest single statement (how long any lock is
held), and, for comparison, the finish rate measured by ``bench/sql.py``.

    python bench/retention.py [--jobs N] [--pg URL]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from scratch_pg import DEFAULT_PG, drop_store_tables, new_prefix
from sqlalchemy import text

from asyncjob.stores.sql import SQLStore


async def measure(url: str, jobs: int, prefix: str) -> str:
    store = SQLStore(url, table_prefix=prefix, keep_finished=0)
    await store.open()
    try:
        table = f"{prefix}jobs"
        async with store.db.write() as conn:
            for start in range(0, 2 * jobs, 10_000):
                rows = [
                    {
                        "id": f"{n:032x}",
                        "finished": None if n % 2 else 1.0,
                        "state": "queued" if n % 2 else "succeeded",
                    }
                    for n in range(start, min(start + 10_000, 2 * jobs))
                ]
                await conn.execute(
                    text(
                        f"INSERT INTO {table} (id, name, registered, state, args, kwargs,"
                        " attempts, enqueued_at, run_after, finished_at, cancel_requested)"
                        " VALUES (:id, 'bench.noop', true, :state, '[]', '{}', 1, 1, 1,"
                        " :finished, false)"
                    ),
                    rows,
                )
        deleted, longest = 0, 0.0
        began = time.perf_counter()
        while True:
            sent = time.perf_counter()
            n = await store.forget_finished()
            longest = max(longest, time.perf_counter() - sent)
            if not n:
                break
            deleted += n
        seconds = time.perf_counter() - began
        async with store.db.read() as conn:
            left = await conn.scalar(text(f"SELECT count(*) FROM {table}"))
        assert deleted == jobs, deleted
        assert left == jobs, left  # the queued ones stay
        rate = deleted / seconds
        return (
            f"{deleted:,} finished jobs deleted in {seconds:.2f} s: {rate:,.0f} rows/s;"
            f" longest statement {longest * 1000:.1f} ms"
        )
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--pg", default=DEFAULT_PG, help="a PostgreSQL database to use")
    args = parser.parse_args()
    prefix = new_prefix()
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = f"sqlite+aiosqlite:///{Path(tmp) / 'jobs.db'}"
        print("sqlite  ", await measure(sqlite, args.jobs, prefix), flush=True)
    try:
        print("postgres", await measure(args.pg, args.jobs, prefix), flush=True)
    finally:
        await drop_store_tables(args.pg, prefix)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

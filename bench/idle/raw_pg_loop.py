"""The floor on PostgreSQL: one asyncpg connection that LISTENs and waits,
as the raw SKIP LOCKED loop of ``bench/sql.py`` does when idle; its
database from ``BENCH_DSN``."""

import asyncio
import os
import signal

import asyncpg


async def main() -> None:
    connection = await asyncpg.connect(os.environ["BENCH_DSN"])
    wake = asyncio.Event()
    stop = asyncio.Event()
    await connection.add_listener("bench_jobs", lambda *_: wake.set())
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await connection.close()


if __name__ == "__main__":
    asyncio.run(main())

"""An idle pgqueuer worker: ``PgQueuer.run()`` on one asyncpg connection,
its database from ``BENCH_DSN``. Started as a script: pgqueuer 1.6.0's own
command line (``pgq run module:factory``) fails at start (its default log
level is a string where it wants an enum); it would also import typer and
rich, which this leaves out in pgqueuer's favour."""

import asyncio
import os
import signal
from typing import Any

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver


async def main() -> None:
    connection = await asyncpg.connect(os.environ["BENCH_DSN"])
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint("noop")
    async def noop(job: Any) -> None:
        """Does nothing: the worker only waits for it."""

    work = asyncio.create_task(pgq.run())
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()
    work.cancel()
    await connection.close()


asyncio.run(main())

"""A PostgreSQL database borrowed by a benchmark: its store's tables, under a
prefix of their own, dropped afterwards."""

from __future__ import annotations

import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from asyncjob.stores.sql._postgres import ANNOUNCED_CHANGES, trigger_function
from asyncjob.stores.sql._schema import Tables

#: The database the benchmarks borrow (``--pg``).
DEFAULT_PG = os.environ.get(
    "ASYNCJOB_BENCH_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def new_prefix() -> str:
    """A table prefix no other run uses."""
    return f"bench_{os.urandom(3).hex()}_"


async def drop_store_tables(url: str, prefix: str) -> None:
    """Leave the database as it was: drop the store's tables and functions."""
    made = Tables(prefix)
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        for table in made.metadata.tables:
            await conn.execute(text(f"DROP TABLE IF EXISTS {table} CASCADE"))
        for change in ANNOUNCED_CHANGES:
            function = trigger_function(made.jobs.name, change)
            await conn.execute(text(f"DROP FUNCTION IF EXISTS {function}()"))
    await engine.dispose()

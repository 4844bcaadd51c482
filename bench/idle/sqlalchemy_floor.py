"""asyncjob's floor on PostgreSQL: the raw connection of ``raw_pg_loop.py``,
in a process that has imported what asyncjob's SQL store cannot do without,
SQLAlchemy's Core and its asyncpg dialect (SQLAlchemy is one of asyncjob's
three runtime dependencies). Nothing of SQLAlchemy runs: what this measures
beyond the raw loop is the price of the import alone, and what asyncjob's
worker measures beyond this is asyncjob's own."""

import asyncio

import sqlalchemy.dialects.postgresql.asyncpg  # noqa: F401 - imported to be measured
from raw_pg_loop import main

asyncio.run(main())

"""Stores in an SQL database, through SQLAlchemy's async engine.

``Runner(store="sqlite+aiosqlite:///jobs.db")`` or
``Runner(store="postgresql+asyncpg://...")`` make one.
"""

from __future__ import annotations

from ._rows import BadRecord
from ._schema import SCHEMA_VERSION, SchemaError
from ._store import SQLStore

__all__ = ("SCHEMA_VERSION", "BadRecord", "SQLStore", "SchemaError")

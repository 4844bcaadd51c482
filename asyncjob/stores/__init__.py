"""Where jobs are kept: the :class:`Store` interface and its implementations.

``Runner(store=...)`` takes a store object or a name that :func:`resolve_store`
turns into one.
"""

from __future__ import annotations

from asyncjob._models import Job, Outcome

from ._base import Store
from .memory import MemoryStore

__all__ = ("Job", "MemoryStore", "Outcome", "Store", "resolve_store")


def resolve_store(store: str | Store) -> Store:
    """Turn what ``Runner(store=...)`` was given into a store object.

    Raises:
        TypeError: ``store`` is neither a string nor a :class:`Store`.
        ValueError: the string names no store this version knows.
    """
    if isinstance(store, Store):
        return store
    if not isinstance(store, str):
        raise TypeError(
            f"store must be 'memory', a database URL or a Store object, not {type(store).__name__}"
        )
    if store == "memory":
        return MemoryStore()
    if store.startswith(_SQL_SCHEMES):
        from .sql import SQLStore  # SQLAlchemy is imported only by who needs it

        return SQLStore(store)
    raise ValueError(
        f"unknown store {store!r}: give 'memory', an SQLAlchemy async URL "
        "('sqlite+aiosqlite:///path/jobs.db', 'postgresql+asyncpg://user@host/db') "
        "or a Store object"
    )


_SQL_SCHEMES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")

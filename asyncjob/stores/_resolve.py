"""From what ``Runner(store=...)`` was given to a store object."""

from __future__ import annotations

from typing import Any

from ._base import Store, unknown_store
from .memory import MemoryStore

__all__ = ("resolve_store",)


def resolve_store(store: str | Store, **options: Any) -> Store:
    """Turn what ``Runner(store=...)`` was given into a store object.

    ``"memory"`` is a :class:`MemoryStore`; a database URL an
    :class:`~asyncjob.stores.sql.SQLStore` (``"sqlite+aiosqlite:///jobs.db"``,
    ``"postgresql+asyncpg://user@host/db"``), imported only then. A store
    object is returned as it is. ``options`` go to the store made.

    Raises:
        TypeError: ``store`` is neither a string nor a :class:`Store`, or
            an option is not the store's.
        ValueError: the string names no store this version knows.
    """
    if isinstance(store, Store):
        if options:
            raise TypeError("store options go with a store's name or URL, not with a store object")
        return store
    if not isinstance(store, str):
        raise TypeError(
            f"store must be 'memory', a database URL or a Store object, not {type(store).__name__}"
        )
    if store == "memory":
        return MemoryStore(**options)
    if "://" in store:
        from .sql import SQLStore  # SQLAlchemy is imported only by who needs it

        return SQLStore(store, **options)
    raise ValueError(unknown_store(store))

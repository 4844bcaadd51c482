"""What the parts of :class:`SQLStore` (its bases, one module each) share of it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._batch import GroupCommit
from ._engine import Database
from ._progress import ProgressBuffer
from ._schema import Tables
from ._signals import Signals
from ._writes import Ending, Writes

__all__ = ("StorePart",)


class StorePart:
    """The store's state that its parts use, declared once for type checking:
    :class:`SQLStore` sets all of it."""

    tables: Tables
    owner: str
    url: str
    lease: float
    held: set[str]
    on_queued: Callable[[], None] | None
    _loop: asyncio.AbstractEventLoop
    _signals: Signals
    _progress: ProgressBuffer
    _enqueues: GroupCommit[dict[str, Any], None]
    _finishes: GroupCommit[Ending, bool]

    if TYPE_CHECKING:

        @property
        def db(self) -> Database: ...

        @property
        def writes(self) -> Writes: ...

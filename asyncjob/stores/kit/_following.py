"""A store's ``watch`` for a store that publishes every change of a job
as the item itself (the memory store), made of its :class:`Watchers`.

An async generator, in a module left interpreted: mypyc compiles none
(docs/architecture.md, "Compiled modules").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from ._watchers import Watchers

__all__ = ("follow",)

T = TypeVar("T")


async def follow(
    watchers: Watchers[T], job_id: str, read: Callable[[], T], final: Callable[[T], bool]
) -> AsyncIterator[T]:
    """What ``read()`` says of the job now, then each item published for it
    through ``watchers``, until one is ``final``. The first read and the
    subscription come together, with no ``await`` between them, so that no
    change falls between the two; leaving early unsubscribes. ``read``
    raises for a job it does not know."""
    item = read()
    if final(item):
        yield item
        return
    with watchers.subscribe(job_id) as changes:
        yield item
        while not final(item):
            item = await changes.get()
            yield item

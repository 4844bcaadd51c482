"""Fan-out of a job's changes to the tasks watching it, in one event loop.

:func:`~asyncjob.stores.kit.follow` (``_following.py``) makes a store's
``watch`` of them: an async generator, which mypyc does not compile, in a
module of its own so that this one can be compiled with the memory store.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from asyncjob._core.compiler import mypyc_attr

__all__ = ("Changes", "Mailbox", "Watchers")

T = TypeVar("T")


class Mailbox(Generic[T]):
    """One watcher's mailbox: what was published for its job, in order.

    It holds at most ``backlog`` items; a watcher that falls that far behind
    loses the oldest ones. A store publishes a job's final status last, so
    that it is never the one lost.
    """

    __slots__ = ("_event", "_pending", "job_id")

    def __init__(self, job_id: str, backlog: int) -> None:
        self.job_id = job_id
        self._pending: deque[T] = deque(maxlen=backlog)
        self._event = asyncio.Event()

    def put(self, item: T) -> None:
        self._pending.append(item)
        self._event.set()

    async def get(self) -> T:
        """The next item published, waiting for one if needed."""
        while not self._pending:
            self._event.clear()
            await self._event.wait()
        return self._pending.popleft()

    async def wait(self, timeout: float) -> None:
        """Until something is published or ``timeout`` seconds pass; then
        empty the mailbox. For a store that re-reads the job on any change,
        and polls meanwhile for changes nobody announces."""
        if not self._pending:
            self._event.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._event.wait()
            except TimeoutError:
                pass
        self._pending.clear()


# Compiled by mypyc (docs/architecture.md, "Compiled modules"), a class
# refuses subclasses written in Python unless told otherwise: a store of
# yours may extend this one.
@mypyc_attr(allow_interpreted_subclasses=True)
class Watchers(Generic[T]):
    """Who watches which job, and a :class:`Mailbox` each.

    A watcher subscribes *before* it reads the job, so that a change made
    between its read and its wait is not missed: it lands in the mailbox.
    Not thread-safe: use it from its loop only. A change of a job nobody
    watches costs two dict tests (:meth:`changed`), and what would be
    published is not made.

    Args:
        backlog: items a mailbox holds before it drops the oldest: a
            status per change (the memory store), or 1 for a bare "it
            changed" (a store that re-reads the job).
    """

    def __init__(self, backlog: int) -> None:
        self._backlog = backlog
        self._boxes: dict[str, list[Mailbox[T]]] = {}
        # The followers of changes(), by id, through weak references that
        # take themselves out (a dict, not a WeakSet: testing a WeakSet for
        # emptiness is a Python call, three times a job).
        self._anyone: dict[int, weakref.ref[Changes]] = {}

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[Mailbox[T]]:
        """A mailbox for the job's changes, for as long as the ``with``
        block lasts."""
        box: Mailbox[T] = Mailbox(job_id, self._backlog)
        self._boxes.setdefault(job_id, []).append(box)
        try:
            yield box
        finally:
            boxes = self._boxes[job_id]
            boxes.remove(box)
            if not boxes:
                del self._boxes[job_id]

    def job_ids(self) -> list[str]:
        """The jobs someone watches."""
        return list(self._boxes)

    def __len__(self) -> int:
        """How many jobs someone watches."""
        return len(self._boxes)

    def changed(self, job_id: str, item: Callable[[], T]) -> None:
        """The job changed: :meth:`announce` it, and hand ``item()`` to its
        watchers, made only if it has any. One call for a change that
        concerns nobody, as most do."""
        if self._anyone:
            self.announce()
        boxes = self._boxes.get(job_id)
        if boxes:
            made = item()
            for box in boxes:
                box.put(made)

    def announce(self) -> None:
        """Something changed, of some job: wake the followers of
        :meth:`changes`. A store calls it at every change it makes or hears
        of; with nobody following, it costs a test of an empty dict (and
        only that, at every change of every job)."""
        if self._anyone:
            for ref in list(self._anyone.values()):
                follower = ref()
                if follower is not None:
                    follower.wake()

    def changes(self) -> Changes:
        """What :meth:`Store.changes` gives: an iterator that yields after
        :meth:`announce`, once for however many came while its consumer was
        busy; it follows from this call, not from its first iteration."""
        return Changes(self._anyone)


# A plain Python class even when this module is compiled: mypyc's native
# classes take no weak references, and the store holds its followers by one.
@mypyc_attr(native_class=False)
class Changes:
    """Announcements of changes, followed from its creation until it is
    closed or dropped (the store keeps no reference to it that would keep
    it alive)."""

    __slots__ = ("__weakref__", "_event", "_followers")

    def __init__(self, followers: dict[int, weakref.ref[Changes]]) -> None:
        self._event = asyncio.Event()
        self._followers: dict[int, weakref.ref[Changes]] | None = followers
        key = id(self)
        followers[key] = weakref.ref(self, functools.partial(_drop, followers, key))

    def wake(self) -> None:
        self._event.set()

    def __aiter__(self) -> Changes:
        return self

    async def __anext__(self) -> None:
        if self._followers is None:
            raise StopAsyncIteration
        await self._event.wait()
        self._event.clear()

    async def aclose(self) -> None:
        """Follow no more."""
        if self._followers is not None:
            self._followers.pop(id(self), None)
            self._followers = None


def _drop(followers: dict[int, weakref.ref[Changes]], key: int, ref: weakref.ref[Changes]) -> None:
    """A follower was dropped without closing: forget it (unless its id
    went to a newer follower meanwhile)."""
    if followers.get(key) is ref:
        del followers[key]

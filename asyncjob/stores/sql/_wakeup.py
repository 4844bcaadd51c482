"""Hearing of other processes' commits on SQLite, at once and for free.

SQLite announces nothing across processes: a process learns of another's
commit only by reading. Reading often enough to be quick (a few
milliseconds) costs an idle process its CPU; reading seldom (the store's
``poll_interval``) makes a job performed in one process wait in another.
But in WAL mode every commit appends to the write-ahead log, the file
``<database>-wal``, whoever makes it (a worker, a web process's
transaction, the ``sqlite3`` shell): the kernel can tell us, the moment it
happens, that the file was written. :class:`FileWatch` asks it, with inotify
on Linux; elsewhere it is not available and the store polls as before.

A wake-up says only that *something* was committed, not what: the store
then looks (a claim, its watched jobs, its held jobs' cancels), once for
however many commits came while it looked. The commits of the store's own
writing connection, most of a busy worker's (its claims and ends), do not
wake it: SQLite's ``PRAGMA data_version`` on that connection moves only
with the commits of *other* connections, and the store tells itself of its
own writes where they are made.

inotify is three calls of the C library, through :mod:`ctypes`, so that
no dependency is added for them. A watch is lost if the log is deleted,
which SQLite does only when the last connection to the database closes,
and the store keeps one open while it is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import struct
import sys
from collections.abc import Callable
from typing import Protocol

from asyncjob._core.log import logger

__all__ = ("CONFIRM_EVERY", "CONFIRM_FOR", "CommitWatch", "Versions")

#: After a write to the log, how often and for how long (seconds) to read
#: whether a commit became visible.
CONFIRM_EVERY = 0.0005
CONFIRM_FOR = 0.01

# From <sys/inotify.h>.
_IN_MODIFY = 0x00000002
_IN_IGNORED = 0x00008000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (of the name that follows)


class Versions(Protocol):
    """Where a watch reads whether other connections committed: SQLite's
    ``PRAGMA data_version`` of one connection, which changes only with the
    commits of the others (``WriterThread``: the store's own writes are
    not heard of)."""

    def data_version(self, ask_again: Callable[[], None]) -> int | None:
        """The version now; or None when it cannot be read at the moment,
        and then ``ask_again()`` is called, once, when it can."""


class CommitWatch:
    """Calls ``on_commit()`` on the loop after another connection than
    ``versions``' commits to the SQLite database at ``path`` (in WAL mode),
    from any process; several commits between two turns of the loop make
    one call.

    The log is written before the commit is visible (SQLite then publishes
    it in the shared-memory index), so a write is confirmed by
    ``versions.data_version``, which changes once another connection's
    commit is visible: read at once, then every :data:`CONFIRM_EVERY`
    seconds for up to :data:`CONFIRM_FOR` (a write that is not a commit,
    such as a large transaction spilling pages to the log, is followed by
    the commit's own write later, which is heard of in turn; a write of
    the connection itself is not a commit of another, and is confirmed by
    nothing).

    Raises (from :meth:`start`):
        OSError: the log cannot be watched (not Linux, no log file, or the
            system's limit of inotify watches reached): poll instead.
    """

    def __init__(self, path: str, on_commit: Callable[[], None], versions: Versions) -> None:
        self.path = path
        self._on_commit = on_commit
        self._versions = versions
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._version: int | None = None
        self._confirming: asyncio.TimerHandle | None = None
        self._confirm_until = 0.0

    def start(self) -> None:
        """Watch from now on; on the loop that will hear of the commits."""
        libc = _libc()
        if libc is None:
            raise OSError(f"files cannot be watched on {sys.platform}")
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise _os_error("inotify_init1")
        try:
            if libc.inotify_add_watch(fd, os.fsencode(f"{self.path}-wal"), _IN_MODIFY) < 0:
                raise _os_error(f"inotify_add_watch {self.path}-wal")
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(fd, self._read)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._version = self._versions.data_version(self._confirm)

    def stop(self) -> None:
        """Stop watching; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._confirming is not None:
            self._confirming.cancel()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        os.close(fd)

    def _read(self) -> None:
        """The kernel has events: read them all, then confirm the commit."""
        assert self._fd is not None
        assert self._loop is not None
        written = lost = False
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self._fd, 4096):
                offset = 0
                while offset < len(data):
                    _, mask, _, length = _EVENT.unpack_from(data, offset)
                    written |= bool(mask & _IN_MODIFY)
                    lost |= bool(mask & _IN_IGNORED)
                    offset += _EVENT.size + length
        if lost:
            logger.warning(
                "%s-wal was deleted: other processes' commits are seen at each poll now",
                self.path,
            )
            self.stop()
            self._on_commit()
        elif written:
            self._confirm_until = self._loop.time() + CONFIRM_FOR
            if self._confirming is None:
                self._confirm()

    def _confirm(self) -> None:
        self._confirming = None
        if self._fd is None:
            return
        assert self._loop is not None
        version = self._versions.data_version(self._confirm_again)
        if version is None:
            return  # busy: _confirm_again, once it is not
        if self._version is None:
            self._version = version  # the first reading, deferred from start()
        elif version != self._version:
            self._version = version
            self._on_commit()
            return
        if self._loop.time() < self._confirm_until:
            self._confirming = self._loop.call_later(CONFIRM_EVERY, self._confirm)

    def _confirm_again(self) -> None:
        """The version can be read again, after a wait that may have taken
        the whole window: confirm for as long again."""
        if self._loop is not None and self._confirming is None:
            self._confirm_until = max(self._confirm_until, self._loop.time() + CONFIRM_FOR)
            self._confirm()


def _os_error(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, where it has inotify."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc

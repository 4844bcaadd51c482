"""The benchmark's tasks, each twice: once for each backend (a Django task
names its backend; a worker runs the tasks of its own), the same functions.

``noop`` does nothing; ``stamp`` records when it started (``time.time()``,
its first line), returns it, and sends it at once to the benchmark, which
waits on a UDP port of 127.0.0.1 (so that it need not poll the database to
learn that the task started); ``warm_up`` tells the benchmark that a worker
is up and running."""

from __future__ import annotations

import socket
import time

from django.tasks import task


def _send(port: int, seq: int, now: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(f"{seq} {now!r}".encode(), ("127.0.0.1", port))


# Django's @task is untyped (Django ships no types): hence the ignores.
@task(backend="asyncjob")  # type: ignore[untyped-decorator]
def noop() -> None:
    """Nothing: the backend's own cost."""


@task(backend="asyncjob")  # type: ignore[untyped-decorator]
def stamp(port: int, seq: int) -> float:
    """Its start time: returned, and sent to ``port``."""
    now = time.time()
    _send(port, seq, now)
    return now


@task(backend="asyncjob")  # type: ignore[untyped-decorator]
def warm_up() -> None:
    """The first task a worker runs, before anything is measured."""


@task(backend="db")  # type: ignore[untyped-decorator]
def db_noop() -> None:
    """Nothing: the backend's own cost."""


@task(backend="db")  # type: ignore[untyped-decorator]
def db_stamp(port: int, seq: int) -> float:
    """Its start time: returned, and sent to ``port``."""
    now = time.time()
    _send(port, seq, now)
    return now


@task(backend="db")  # type: ignore[untyped-decorator]
def db_warm_up() -> None:
    """The first task a worker runs, before anything is measured."""

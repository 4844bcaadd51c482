"""The jobs of ``bench/scheduling.py``, in a module of their own.

The ``asyncjob worker`` processes that the benchmark starts import this
module (``--import scheduling_jobs``) and nothing else of the benchmark:
the idle worker whose CPU is measured holds asyncjob, its store and these
two jobs, not the benchmark's drivers and helpers.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import time

import asyncjob

NOOP = "bench_scheduling.noop"
STAMP = "bench_scheduling.stamp"

#: Set by the benchmark to its own process id in the workers it starts.
PARENT_ENV = "ASYNCJOB_BENCH_PARENT"

#: Linux's ``prctl`` option that signals a process when its parent dies.
_PR_SET_PDEATHSIG = 1

_sock: socket.socket | None = None


@asyncjob.job(name=NOOP)
async def noop() -> None:
    """The jobs that fill the queue of the claim measurement (claimed, never run)."""


@asyncjob.job(name=STAMP)
async def stamp(port: int) -> None:
    """The job of the lateness measurement: sends its id and the moment it
    started (``time.time()``, the clock the store's due times are compared
    with) to the benchmark's UDP ``port`` on 127.0.0.1."""
    started = time.time()
    global _sock
    if _sock is None:
        _sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _sock.sendto(f"{asyncjob.current_job_id()} {started!r}".encode(), ("127.0.0.1", port))


def _end_with_the_benchmark() -> None:
    """In a worker the benchmark started: end (gracefully, SIGTERM) when the
    benchmark's process ends, even if it was killed and could not stop us;
    a worker left behind would go on polling the server for nothing."""
    parent = os.environ.get(PARENT_ENV)
    if parent is None:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the benchmark stops us itself
        return
    if os.getppid() != int(parent):  # it ended before we asked to be told
        os.kill(os.getpid(), signal.SIGTERM)


_end_with_the_benchmark()

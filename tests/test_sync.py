"""asyncjob.sync: the framework-free sync facade, from plain threads and a
forked child, as a WSGI server's workers call it."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import asyncjob
import asyncjob.sync
from asyncjob.stores import MemoryStore

from .conftest import TIMEOUT


@pytest.fixture(autouse=True)
def stopped() -> Iterator[None]:
    """Each test starts the facade itself, and leaves it stopped."""
    yield
    asyncjob.sync.stop(TIMEOUT)
    asyncjob.sync._made = None


def crunch(n: int) -> int:
    asyncjob.set_progress(50, "half")
    return n * 2


def test_calls_before_start_say_how_to_start() -> None:
    with pytest.raises(RuntimeError, match=r"asyncjob.sync.start\(\) was not called"):
        asyncjob.sync.perform(crunch, 1)


def test_start_takes_the_memory_store_by_default() -> None:
    """As Runner() does (it raised TypeError: a store of None)."""
    assert isinstance(asyncjob.sync.start().store, MemoryStore)
    job_id = asyncjob.sync.perform(crunch, 21)
    assert asyncjob.sync.wait(job_id, TIMEOUT) == 42


def test_perform_and_read_from_many_threads(tmp_path: Path) -> None:
    runner = asyncjob.sync.start(f"sqlite+aiosqlite:///{tmp_path}/jobs.db", concurrency=4)
    assert asyncjob.sync.start() is runner is asyncjob.sync.runner()  # once per process
    results: dict[int, int] = {}

    def request(n: int) -> None:
        job_id = asyncjob.sync.perform(crunch, n)
        results[n] = asyncjob.sync.wait(job_id, TIMEOUT)

    threads = [threading.Thread(target=request, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert results == {n: n * 2 for n in range(8)}
    many = asyncjob.sync.perform_many(crunch, [(1,), {"n": 2}])
    assert [asyncjob.sync.wait(job_id, TIMEOUT) for job_id in many] == [2, 4]
    status = asyncjob.sync.status(many[0])
    assert (status.state, status.progress, status.data) == ("succeeded", 50, "half")
    assert asyncjob.sync.get_progress(many[0]) is None  # ended
    later = asyncjob.sync.perform(asyncjob.using(crunch, delay=3600), 3)
    assert asyncjob.sync.get_progress(later) == (-1, None)
    assert asyncjob.sync.cancel(later) is True
    with pytest.raises(asyncjob.JobCancelled):
        asyncjob.sync.wait(later, TIMEOUT)
    with pytest.raises(asyncjob.JobNotFound):
        asyncjob.sync.status("nope")


#: A process that started the facade, then forks (its runner stopped: a
#: child forked while threads hold locks may hang): the child performs a
#: job (not registered, so it runs where performed) and says which process
#: ran it and whether its runner is the parent's. In a process of its own:
#: the test process has threads of its own.
FORKING = """
import os, sys, warnings
import asyncjob.sync

def pid_of():
    return os.getpid()

parent = asyncjob.sync.start(sys.argv[1])
asyncjob.sync.stop(10)  # fork only while no runner runs (as gunicorn's master)
read, write = os.pipe()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    pid = os.fork()
if pid == 0:
    try:
        job_id = asyncjob.sync.perform(pid_of)
        here = asyncjob.sync.wait(job_id, 10) == os.getpid()
        shared = asyncjob.sync.runner() is parent
        os.write(write, f"{job_id} {here} {shared}".encode())
        asyncjob.sync.stop(10)
    finally:
        os._exit(0)
os.close(write)
with os.fdopen(read, "rb") as pipe:
    said = pipe.read().decode()
os.waitpid(pid, 0)
job_id = said.split()[0]
print(said, asyncjob.sync.status(job_id).state)  # the parent's runner, started again
asyncjob.sync.stop(10)
"""


def test_forking_with_the_runner_running_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asyncjob.sync.start(f"sqlite+aiosqlite:///{tmp_path}/jobs.db")
    asyncjob.sync._forking()
    assert "forks while asyncjob's runner runs" in caplog.text
    asyncjob.sync.stop(TIMEOUT)
    caplog.clear()
    asyncjob.sync._forking()
    assert caplog.text == ""


def test_a_forked_child_starts_its_own_runner(tmp_path: Path) -> None:
    """As gunicorn's workers, forked after start() in the master: the
    child's first call starts a runner of its own on the same store."""
    done = subprocess.run(
        [sys.executable, "-c", FORKING, f"sqlite+aiosqlite:///{tmp_path}/jobs.db"],
        capture_output=True, text=True, timeout=TIMEOUT * 3, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _, ran_in_child, shared, state = done.stdout.split()
    assert (ran_in_child, shared, state) == ("True", "False", "succeeded")

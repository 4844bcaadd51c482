"""The sync layer's own edges: its loop thread, process exit, and bad input.

The TurboGears2 application itself is exercised in ``test_tg.py``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import asyncjob
from asyncjob.stores import DurableStore
from asyncjob.tg import (
    asyncjob_get_progress,
    asyncjob_perform,
    asyncjob_running_uid,
    asyncjob_set_progress,
    asyncjob_timed_query,
    start_async_worker,
    stop_async_worker,
)

from .conftest import TIMEOUT


class Globals:
    """Stands for a TurboGears2 app globals object."""

    def __init__(self) -> None:
        self.handle = start_async_worker()


@pytest.fixture
def app_globals() -> Iterator[Globals]:
    """A worker started the seed's way, stopped after the test."""
    made = Globals()
    yield made
    stop_async_worker(TIMEOUT)


def test_the_handle_is_found_from_the_callers_frame(app_globals: Globals) -> None:
    """Called in Globals.__init__, the handle lands on that object."""
    assert app_globals.asyncjob_queue is app_globals.handle  # type: ignore[attr-defined]
    assert start_async_worker() is app_globals.handle


def test_perform_and_progress_from_a_thread(app_globals: Globals) -> None:
    """From plain threads: perform, progress with the seed semantics, the id inside."""
    reported = threading.Event()
    release = threading.Event()

    def job(x: int) -> str | None:
        asyncjob_set_progress(x, "half")
        reported.set()
        assert release.wait(TIMEOUT)
        return asyncjob_running_uid()

    uid = asyncjob_perform(job, 50)
    assert reported.wait(TIMEOUT)
    assert asyncjob_get_progress(uid) == (50, "half")
    release.set()
    queue = app_globals.handle
    assert queue._thread.call(queue.runner.wait, uid, TIMEOUT) == uid
    assert asyncjob_get_progress(uid) is None
    assert asyncjob_running_uid() is None


def test_bad_input(app_globals: Globals) -> None:
    """Each mistake is named where it is made."""
    with pytest.raises(TypeError, match="needs a callable"):
        asyncjob_perform(42)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="outside a job"):
        asyncjob_set_progress(1)
    with pytest.raises(asyncjob.NotInJob, match="outside a job"):
        asyncjob_timed_query(object())
    with pytest.raises(ValueError, match="retries"):
        asyncjob_timed_query(object(), retries=-1)


def test_calls_before_the_worker_starts() -> None:
    """Without start_async_worker, calls say how to start it."""
    stop_async_worker(TIMEOUT)
    with pytest.raises(asyncjob.RunnerNotRunning, match="start_async_worker"):
        asyncjob_perform(print)
    with pytest.raises(RuntimeError, match="plugme"):
        asyncjob_get_progress("x")


def test_a_bad_option_fails_at_start() -> None:
    """Runner options are checked when the worker starts, and nothing is left running."""
    with pytest.raises(ValueError, match="concurrency"):
        start_async_worker(concurrency=0)
    with pytest.raises(asyncjob.RunnerNotRunning):
        asyncjob_perform(print)


def test_the_process_exits_after_its_running_job_ends() -> None:
    """At interpreter exit the worker stops gracefully: the running job
    finishes (within the grace period) and the process ends, with no hang."""
    script = textwrap.dedent(
        """
        import threading
        from asyncjob.tg import start_async_worker, asyncjob_perform

        started = threading.Event()
        exiting = threading.Event()

        def job():
            started.set()
            exiting.wait(10)
            print("job finished after the main thread", flush=True)

        class Globals:
            def __init__(self):
                start_async_worker(grace_period=30)

        Globals()
        asyncjob_perform(job)
        assert started.wait(10)
        # Runs at exit just before the worker's own hook: the job learns
        # that the interpreter is exiting, and must still get to finish.
        threading._register_atexit(exiting.set)
        print("main thread ends", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "main thread ends",
        "job finished after the main thread",
    ]


def test_the_sync_api_inside_a_coroutine_job(app_globals: Globals) -> None:
    """On the runner's own loop the sync API would deadlock: it says to await."""

    async def job() -> str:
        try:
            asyncjob_perform(print)
        except RuntimeError as exc:
            return str(exc)
        return "no error"  # pragma: no cover

    uid = asyncjob_perform(job)
    queue = app_globals.handle
    assert "await asyncjob.perform" in queue.call(queue.runner.wait, uid, TIMEOUT)


def test_a_second_start_with_options_warns(
    app_globals: Globals, caplog: pytest.LogCaptureFixture
) -> None:
    """Options given to a second start cannot apply: that is said, not hidden."""
    assert start_async_worker(concurrency=8) is app_globals.handle
    assert "runs already" in caplog.text
    assert app_globals.handle.runner.options.concurrency == 1


def test_the_handle_waits_and_reads_status(app_globals: Globals) -> None:
    """Sync callers wait for a job, and read its status, through the handle."""
    queue = app_globals.handle
    uid = asyncjob_perform(sum, [1, 2, 3])
    assert queue.wait(uid, TIMEOUT) == 6
    assert queue.status(uid).state == "succeeded"


def test_options_the_layer_decides_itself(app_globals: Globals) -> None:
    """sync_sessionmaker= and job_scope= are refused with what to use instead."""
    stop_async_worker(TIMEOUT)
    with pytest.raises(TypeError, match="dbsession="):
        start_async_worker(sync_sessionmaker=object())


def test_after_fork_the_parents_worker_is_not_used(app_globals: Globals) -> None:
    """In a forked child the parent's thread is gone: a clear error, no hang."""
    import os

    read, write = os.pipe()
    with warnings.catch_warnings():
        # Newer Pythons warn that forking a threaded process is risky: that
        # is the very situation under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        try:
            asyncjob_perform(print)
            message = b"no error"
        except asyncjob.RunnerNotRunning as exc:
            message = str(exc).encode()
        os.write(write, message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode()
    os.waitpid(pid, 0)
    assert "start it in each worker process" in said


def test_a_tracker_over_a_shared_store(tmp_path: Path) -> None:
    """A progress tracker does not hide the SQL store: registered jobs are
    claimed and leased as without one, and the tracker follows them."""
    from . import worker_jobs
    from .test_stores import DictTracker

    stop_async_worker(TIMEOUT)
    tracker = DictTracker()
    queue = start_async_worker(
        Globals.__new__(Globals), tracker, store=f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    )
    try:
        assert isinstance(queue.runner.store, DurableStore)
        uid = asyncjob_perform(worker_jobs.whoami, 5)
        assert queue.wait(uid, TIMEOUT)["n"] == 5
        assert tracker.progress == {}  # tracked, then removed at the end
    finally:
        stop_async_worker(TIMEOUT)

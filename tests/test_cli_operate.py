"""The operator's commands, each run as a process on a real store:
``asyncjob jobs``, ``status``, ``cancel``, ``retry``, ``purge``, ``workers``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import asyncjob
from asyncjob._cli import main
from asyncjob.stores.sql import SQLStore

from . import worker_jobs
from .conftest import TIMEOUT, Database, RunnerFactory, edit_by_hand
from .processes import ROOT, Workers

#: A command runs to its end within this; it bounds a hang, not its speed.
COMMAND_TIMEOUT = 60.0

#: Not passed on to the commands: the store is given, and slow steps of
#: the commands' loops must not be reported on the stderr the tests read.
UNSET = ("PYTHONASYNCIODEBUG", "ASYNCJOB_STORE")


async def asyncjob_command(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``python -m asyncjob ARGS``, to its end, without blocking the loop (a
    runner of the test may be running the jobs the command looks at)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncjob", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
        env={k: v for k, v in os.environ.items() if k not in UNSET},
    )  # fmt: skip
    async with asyncio.timeout(COMMAND_TIMEOUT):
        out, err = await process.communicate()
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


@pytest.fixture
async def producer(database: Database, make_runner: RunnerFactory) -> asyncjob.Runner:
    """A runner that performs into the store, and runs nothing."""
    runner: asyncjob.Runner = await make_runner(SQLStore(database.async_url), producer_only=True)
    return runner


@pytest.fixture
async def worker(database: Database, make_runner: RunnerFactory) -> asyncjob.Runner:
    """A runner that runs the store's jobs, in this process."""
    runner: asyncjob.Runner = await make_runner(SQLStore(database.async_url, poll_interval=0.05))
    return runner


async def test_jobs_lists_newest_first_filtered_and_paged(
    database: Database, worker: asyncjob.Runner
) -> None:
    ids = [await worker.perform(worker_jobs.whoami, n) for n in range(3)]
    for job_id in ids:
        await worker.wait(job_id, timeout=TIMEOUT)
    store = database.async_url
    table = await asyncjob_command("jobs", "--store", store)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "QUEUE", "STATE", "PROGRESS", "PERFORMED"]
    assert [line.split()[0] for line in lines[1:]] == ids[::-1]
    assert all("tests.worker_jobs.whoami  default  succeeded" in line for line in lines[1:])

    first = await asyncjob_command("jobs", "--store", store, "--limit", "2", "--json")
    page = json.loads(first.stdout)
    assert [job["id"] for job in page] == ids[:0:-1]
    assert page[0]["state"] == "succeeded"
    assert page[0]["result"] == {"n": 2, "pid": os.getpid()}
    rest = await asyncjob_command("jobs", "--store", store, "--json", "--before", page[-1]["id"])
    assert [job["id"] for job in json.loads(rest.stdout)] == ids[:1]
    none = await asyncjob_command("jobs", "--store", store, "--state", "failed")
    assert none.stdout.strip() == "(none)"
    recent = await asyncjob_command("jobs", "--store", store, "--since", "1h", "--json")
    assert len(json.loads(recent.stdout)) == 3
    old = await asyncjob_command("jobs", "--store", store, "--until", "2000-01-01T00:00", "--json")
    assert json.loads(old.stdout) == []
    wrong = await asyncjob_command("jobs", "--store", store, "--since", "last week")
    assert wrong.returncode == 2
    assert "'last week' is not a time" in wrong.stderr


async def test_status_exit_says_whether_the_job_succeeded(
    database: Database, worker: asyncjob.Runner, tmp_path: Path
) -> None:
    good = await worker.perform(worker_jobs.whoami, 7)
    bad = await worker.perform(worker_jobs.fails_once, str(tmp_path / "marker"))
    await worker.wait(good, timeout=TIMEOUT)
    with pytest.raises(asyncjob.JobFailed):
        await worker.wait(bad, timeout=TIMEOUT)
    shown = await asyncjob_command("status", good, "--store", database.async_url)
    assert shown.returncode == 0
    assert "state: succeeded" in shown.stdout
    assert f'result: {{"n": 7, "pid": {os.getpid()}}}' in shown.stdout
    failed = await asyncjob_command("status", bad, "--store", database.async_url)
    assert failed.returncode == 1
    assert "error: OSError: first attempt" in failed.stdout
    assert "Traceback (most recent call last)" in failed.stdout


async def test_status_follow_shows_progress_until_the_end(
    database: Database, producer: asyncjob.Runner, make_runner: RunnerFactory
) -> None:
    """Followed from another process, a queued job's progress is shown as
    it runs, and the command ends with the job: its result, exit 0."""
    name = f"follow-{os.urandom(4).hex()}"  # a gate of its own
    job_id = await producer.perform(worker_jobs.wait_for_gate, name)
    gate = worker_jobs.GATES.setdefault(name, asyncio.Event())
    await make_runner(SQLStore(database.async_url, poll_interval=0.05))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncjob", "status", job_id, "--follow",
        "--store", database.async_url,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in UNSET},
    )  # fmt: skip
    assert process.stderr is not None
    async with asyncio.timeout(COMMAND_TIMEOUT):
        first = (await process.stderr.readline()).decode()  # following: the job as it is
        gate.set()
        out, err = await process.communicate()
    assert first.startswith("["), (first, out, err)
    assert process.returncode == 0, err
    assert "state: succeeded" in out.decode()
    assert f"result: {name}" in out.decode()
    last = err.decode().splitlines()[-1]  # not a terminal: a line per change
    assert last.startswith("[##############################] 100.0% succeeded")


async def test_cancel_then_retry(
    database: Database, producer: asyncjob.Runner, make_runner: RunnerFactory
) -> None:
    """A queued job cancelled from the command line never runs; retried,
    it is queued again and a worker runs it. Each says what it did; what
    could not be done gives exit 1, an unknown id exit 2."""
    job_id = await producer.perform(worker_jobs.whoami, 3)
    store = database.async_url
    cancelled = await asyncjob_command("cancel", job_id, "--store", store)
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, f"{job_id}: cancelled"), (
        cancelled.stderr
    )
    again = await asyncjob_command("cancel", job_id, "nope", "--store", store)
    assert again.returncode == 2
    assert f"{job_id}: not cancelled, it had ended (cancelled)" in again.stdout
    assert "nope: no such job" in again.stderr

    retried = await asyncjob_command("retry", job_id, "--store", store)
    assert (retried.returncode, retried.stdout.strip()) == (0, f"{job_id}: queued again")
    worker = await make_runner(SQLStore(store, poll_interval=0.05))
    assert (await worker.wait(job_id, timeout=TIMEOUT))["n"] == 3
    twice = await asyncjob_command("retry", job_id, "--store", store)
    assert twice.returncode == 1
    assert "not retried: it is succeeded" in twice.stdout


async def test_a_failed_job_retried_runs_again(
    database: Database, worker: asyncjob.Runner, tmp_path: Path
) -> None:
    job_id = await worker.perform(worker_jobs.fails_once, str(tmp_path / "marker"))
    with pytest.raises(asyncjob.JobFailed):
        await worker.wait(job_id, timeout=TIMEOUT)
    retried = await asyncjob_command("retry", job_id, "--store", database.async_url)
    assert retried.returncode == 0, retried.stderr
    assert await worker.wait(job_id, timeout=TIMEOUT) == "second time lucky"
    status = await worker.status(job_id)
    assert status.attempts == 2
    assert status.errors[0].startswith("OSError: first attempt")


async def test_purge_deletes_what_ended_long_enough_ago(
    database: Database, worker: asyncjob.Runner, tmp_path: Path
) -> None:
    ok = await worker.perform(worker_jobs.whoami, 1)
    bad = await worker.perform(worker_jobs.fails_once, str(tmp_path / "marker"))
    await worker.wait(ok, timeout=TIMEOUT)
    with pytest.raises(asyncjob.JobFailed):
        await worker.wait(bad, timeout=TIMEOUT)
    store = database.async_url
    kept = await asyncjob_command("purge", "--older-than", "1h", "--store", store)
    assert (kept.returncode, kept.stdout.strip()) == (0, "deleted 0 job(s)")
    done = await asyncjob_command("purge", "--older-than", "0", "--store", store)
    assert done.stdout.strip() == "deleted 1 job(s)"  # failed jobs kept unless named
    assert [s.id for s in await worker.jobs()] == [bad]
    failed = await asyncjob_command(
        "purge", "--state", "failed", "--older-than", "0s", "--store", store
    )
    assert failed.stdout.strip() == "deleted 1 job(s)"
    wrong = await asyncjob_command("purge", "--older-than", "a week", "--store", store)
    assert wrong.returncode == 2
    assert "'a week' is not a duration" in wrong.stderr


async def test_workers_lists_a_worker_process(
    database: Database, producer: asyncjob.Runner, tmp_path: Path
) -> None:
    """A worker process is listed with its host, pid and queues while it
    runs, and no longer once stopped."""
    workers = Workers(tmp_path, url=database.async_url)
    try:
        process = workers.start(queues=["video", "mail"], concurrency=3)
        store = database.async_url
        # Once it has run a job, it has started: its first heartbeat is
        # recorded as it starts, before it takes any job.
        job_id = await producer.perform(asyncjob.using(worker_jobs.whoami, queue="mail"), 1)
        assert (await producer.wait(job_id, timeout=TIMEOUT * 2))["pid"] == process.pid
        listed = json.loads((await asyncjob_command("workers", "--json", "--store", store)).stdout)
        (worker,) = listed
        assert (worker["pid"], worker["queues"], worker["concurrency"], worker["alive"]) == (
            process.pid, ["mail", "video"], 3, True,
        )  # fmt: skip
        table = await asyncjob_command("workers", "--store", store)
        assert f"{process.pid}  mail,video  0/3" in table.stdout
        workers.stop_all()
        assert process.returncode == 0, workers.output()
        gone = await asyncjob_command("workers", "--store", store)
        assert gone.stdout.strip() == "(none)"
    finally:
        workers.stop_all()


#: Each operator's command, with what it needs besides the store.
COMMANDS = [
    ["jobs"],
    ["status", "x"],
    ["cancel", "x"],
    ["retry", "x"],
    ["workers"],
    ["purge", "--older-than", "1d"],
]


@pytest.mark.parametrize("command", COMMANDS)
async def test_an_unreachable_store_is_exit_2_saying_so(command: list[str]) -> None:
    done = await asyncjob_command(
        *command, "--store", "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    )
    assert done.returncode == 2
    assert "asyncjob: cannot open the store" in done.stderr


async def test_an_unknown_job_is_exit_2(database: Database, producer: asyncjob.Runner) -> None:
    done = await asyncjob_command("status", "nope", "--store", database.async_url)
    assert (done.returncode, done.stderr.strip()) == (2, "asyncjob: no such job: nope")


@pytest.mark.parametrize(
    "command", ["jobs", "status", "cancel", "retry", "purge", "workers", "dashboard"]
)
def test_each_command_has_help_with_examples(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asyncjob", command, "--help"],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0
    assert "examples:" in done.stdout
    assert "--store" in done.stdout


def test_the_store_may_come_from_the_environment() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asyncjob", "jobs"],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
        env={**os.environ, "ASYNCJOB_STORE": "memory"},
    )  # fmt: skip
    assert done.returncode == 2
    assert "'memory' is not a shared store" in done.stderr


@pytest.mark.parametrize("command", COMMANDS)
async def test_an_sqlite_file_that_does_not_exist_is_exit_2_and_not_made(
    command: list[str], tmp_path: Path
) -> None:
    """A misspelt SQLite path is an error: the commands read a store, and
    made a new empty file there (``jobs`` then said ``(none)``, exit 0).
    What they refuse is theirs alone: a runner (a worker, an application)
    opening the store makes its file, which the commands then use."""
    typo = tmp_path / "typo.db"
    done = await asyncjob_command(*command, "--store", f"sqlite+aiosqlite:///{typo}")
    assert (done.returncode, done.stderr) == (2, f"asyncjob: no such database file: {typo}\n")
    # A relative path is the working directory's, and said in full.
    relative = await asyncjob_command(
        *command, "--store", "sqlite+aiosqlite:///typo.db", cwd=tmp_path
    )
    assert (relative.returncode, relative.stderr) == (
        2,
        f"asyncjob: no such database file: {typo}\n",
    )
    assert await asyncio.to_thread(os.listdir, tmp_path) == []

    async with asyncjob.Runner(f"sqlite+aiosqlite:///{typo}"):
        pass
    made = await asyncjob_command("jobs", "--store", f"sqlite+aiosqlite:///{typo}")
    assert (made.returncode, made.stdout, made.stderr) == (0, "(none)\n", "")


@pytest.mark.parametrize("command", COMMANDS)
async def test_a_file_that_is_not_a_database_is_exit_2_saying_so(
    command: list[str], tmp_path: Path
) -> None:
    """sqlite3's own error, raised as the store opens its file, was a
    traceback and exit 1 (which says a job did not succeed)."""
    notes = tmp_path / "notes.db"
    notes.write_text("not a database, some notes\n" * 100)
    done = await asyncjob_command(*command, "--store", f"sqlite+aiosqlite:///{notes}")
    assert (done.returncode, done.stderr) == (
        2,
        "asyncjob: cannot open the store: file is not a database\n",
    )


async def test_a_row_edited_into_nonsense_is_exit_2_saying_so(
    database: Database, producer: asyncjob.Runner
) -> None:
    """A job whose row was edited by hand into what asyncjob never writes
    is an error on one line, exit 2, no traceback (each command raised
    BadRecord, exit 1); cancel and retry act on the other jobs given."""
    bad = await producer.perform(worker_jobs.whoami, 1)
    good = await producer.perform(worker_jobs.whoami, 2)
    await asyncio.to_thread(
        edit_by_hand,
        database.sync_url,
        f"UPDATE asyncjob_jobs SET data = '{{nope' WHERE id = '{bad}'",
    )
    store = database.async_url
    damaged = f"job {bad} holds invalid JSON in its data"

    status = await asyncjob_command("status", bad, "--store", store)
    assert status.returncode == 2
    assert status.stderr.startswith(
        f"asyncjob: a job's row is damaged (edited by hand?): {damaged}"
    )
    assert status.stderr.count("\n") == 1, status.stderr

    cancelled = await asyncjob_command("cancel", bad, good, "--store", store)
    assert cancelled.returncode == 2
    assert cancelled.stdout == f"{good}: cancelled\n"
    assert cancelled.stderr.startswith(f"{bad}: not cancelled, its row is damaged: {damaged}")
    assert cancelled.stderr.count("\n") == 1, cancelled.stderr

    retried = await asyncjob_command("retry", bad, good, "--store", store)
    assert retried.returncode == 2
    assert retried.stdout == f"{good}: queued again\n"
    assert retried.stderr.startswith(f"{bad}: not retried, its row is damaged: {damaged}")
    assert retried.stderr.count("\n") == 1, retried.stderr
    assert (await producer.status(good)).state is asyncjob.JobState.queued


@pytest.mark.parametrize(
    "ago",
    [
        "1000000d",  # before the year 1
        "99999999999w",  # more than timedelta holds
        pytest.param("9" * 400, id="400-digits"),  # an infinity of seconds
    ],
)
@pytest.mark.parametrize("option", ["--since", "--until"])
def test_a_time_too_long_ago_is_a_usage_error(
    option: str, ago: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """As any time that cannot be read (it was OverflowError's traceback)."""
    with pytest.raises(SystemExit) as exited:
        main(["jobs", "--store", "sqlite+aiosqlite:///unused.db", option, ago])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: asyncjob jobs")
    assert err.endswith(f"error: argument {option}: {ago!r} is too long ago for a time\n")


# -- asyncjob dashboard: what keeps it from serving ------------------------------------------------


def dashboard_command(store: str, port: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncjob", "dashboard", "--store", store, "--port", str(port)],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in UNSET},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("store", "why"),
    [
        (
            "postgresql+asyncpg://nobody@127.0.0.1:1/none",
            "[Errno 111] Connect call failed ('127.0.0.1', 1)",
        ),
        ("sqlite+aiosqlite:////nonexistent/dir/jobs.db", "unable to open database file"),
    ],
)
def test_the_dashboard_of_a_store_it_cannot_open_is_exit_2(store: str, why: str) -> None:
    """It was uvicorn's exit 3 after the store's traceback in its log: the
    store is opened before uvicorn starts."""
    done = dashboard_command(store)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"asyncjob dashboard: cannot open the store: {why}\n"


def test_the_dashboard_on_a_port_taken_is_exit_2(tmp_path: Path) -> None:
    """It was uvicorn's exit 3, the reason a line of its log."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = dashboard_command(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}", port)
    assert done.returncode == 2, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"asyncjob dashboard: cannot serve on 127.0.0.1:{port}: ")
    assert last.endswith("address already in use")
    assert "Traceback" not in done.stderr

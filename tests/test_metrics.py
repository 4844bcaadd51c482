"""Hooks told of each job's life, and the Prometheus metrics built on them:
in process, on the dashboard's ``/metrics``, and served by a worker."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import asyncjob
import asyncjob.web
from asyncjob.metrics import JobMetrics, store_metrics
from asyncjob.stores import MemoryStore
from asyncjob.stores.sql import SQLStore

from . import retry_jobs, worker_jobs
from .conftest import TIMEOUT, Database, RunnerFactory, edit_by_hand
from .processes import ROOT, Workers
from .web_server import app_with_dashboard, serving


class Recorder(asyncjob.JobHooks):
    """Every call, in order: ``(method, job id, details...)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def enqueued(self, jobs: Sequence[asyncjob.JobInfo]) -> None:
        self.calls += [("enqueued", job) for job in jobs]

    def started(self, job: asyncjob.JobInfo) -> None:
        self.calls.append(("started", job))

    def progress(self, job_id: str, value: float, data: Any) -> None:
        self.calls.append(("progress", job_id, value))

    def retrying(self, job: asyncjob.JobInfo, error: str, delay: float) -> None:
        self.calls.append(("retrying", job, error))

    async def ending(self, job_id: str) -> None:
        self.calls.append(("ending", job_id))

    def finished(
        self,
        job: asyncjob.JobInfo,
        state: asyncjob.JobState,
        duration: float | None,
        error: str | None,
    ) -> None:
        self.calls.append(("finished", job, state, duration is not None, error))


async def reports(n: int) -> int:
    asyncjob.set_progress(0.5)
    return n


async def fails() -> None:
    raise ValueError("bad input")


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite+aiosqlite:///{tmp_path}/m.db"


def store_of(url: str) -> Any:
    return MemoryStore() if url == "memory://" else SQLStore(url, poll_interval=0.05)


async def test_hooks_hear_each_step_of_a_job(make_runner: RunnerFactory, store_url: str) -> None:
    """enqueued, started, progress, ending, finished: in that order, with
    the job's name, queue and attempt."""
    heard = Recorder()
    runner = await make_runner(store_of(store_url), hooks=[heard])
    job_id = await runner.perform(asyncjob.using(reports, queue="mail"), 7)
    assert await runner.wait(job_id, timeout=TIMEOUT) == 7
    await runner.stop()  # every hook has run once the runner has stopped
    about = asyncjob.JobInfo(job_id, f"{__name__}.reports", "mail", 1)
    assert heard.calls == [
        ("enqueued", about),
        ("started", about),
        ("progress", job_id, 0.5),
        ("ending", job_id),
        ("finished", about, asyncjob.JobState.succeeded, True, None),
    ]


async def test_hooks_hear_retries_and_failures(
    make_runner: RunnerFactory, store_url: str, clean_registry: None
) -> None:
    heard = Recorder()
    runner = await make_runner(store_of(store_url), hooks=[heard])
    key = f"hooks-{uuid.uuid4()}"
    job_id = await runner.perform(retry_jobs.flaky, key, 1)
    assert await runner.wait(job_id, timeout=TIMEOUT) == "ok on attempt 2"
    failed = await runner.perform(fails)
    with pytest.raises(asyncjob.JobFailed):
        await runner.wait(failed, timeout=TIMEOUT)
    await runner.stop()
    steps = [(call[0], call[1].attempt) for call in heard.calls if call[0] != "ending"]
    first = asyncjob.JobInfo(job_id, "tests.retry_jobs.flaky", "default", 1)
    assert ("retrying", first, "ConnectionError: attempt 1 failed") in heard.calls
    assert steps[:5] == [("enqueued", 1), ("started", 1), ("retrying", 1), ("started", 2),
                         ("finished", 2)]  # fmt: skip
    assert heard.calls[-1][2:] == (asyncjob.JobState.failed, True, "ValueError: bad input")


async def test_a_job_cancelled_while_queued_is_finished_without_a_duration(
    make_runner: RunnerFactory,
) -> None:
    heard = Recorder()
    runner = await make_runner(hooks=[heard])
    job_id = await runner.perform(asyncjob.using(reports, delay=3600), 1)
    assert await runner.cancel(job_id)
    assert heard.calls[-2:] == [
        ("ending", job_id),
        ("finished", asyncjob.JobInfo(job_id, f"{__name__}.reports", "default", 1),
         asyncjob.JobState.cancelled, False, None),
    ]  # fmt: skip


async def test_a_perform_whose_unique_key_is_held_is_told_as_ending(
    make_runner: RunnerFactory, store_url: str
) -> None:
    """Hooks hear of a job before it is written; one not written after all
    ends for them at once, and never starts."""
    heard = Recorder()
    runner = await make_runner(store_of(store_url), hooks=[heard])
    once = asyncjob.using(reports, unique="report", delay=3600)
    first = await runner.perform(once, 1)
    assert await runner.perform(once, 2) == first
    told = [call for call in heard.calls if call[0] == "enqueued"]
    assert len(told) == 2
    second = told[1][1].id
    assert second != first
    assert heard.calls[-2:] == [("enqueued", told[1][1]), ("ending", second)]


class Broken(asyncjob.JobHooks):
    def started(self, job: asyncjob.JobInfo) -> None:
        raise RuntimeError("metrics backend down")

    def finished(self, *args: Any) -> None:
        raise RuntimeError("metrics backend down")


async def test_an_observing_hook_that_raises_breaks_no_job(
    make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    runner = await make_runner(hooks=[Broken()])
    with caplog.at_level(logging.ERROR, logger="asyncjob"):
        job_id = await runner.perform(reports, 3)
        assert await runner.wait(job_id, timeout=TIMEOUT) == 3
        await runner.stop()
    said = [r for r in caplog.records if "hook Broken" in r.getMessage()]
    assert [r.getMessage().split(" raised")[0] for r in said] == [
        "hook Broken.started", "hook Broken.finished",
    ]  # fmt: skip
    assert all(getattr(r, "job_id", None) == job_id for r in said)


class EndingFails(asyncjob.JobHooks):
    """An application's record of its own, whose database is away."""

    async def ending(self, job_id: str) -> None:
        raise ConnectionError("the application's database is away")


async def test_an_ending_hook_that_raises_leaves_no_job_running(
    make_runner: RunnerFactory, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """At a job's end, a hook's ``ending`` that raises is logged and the end
    recorded all the same: the job stayed running, in memory for good, in
    an SQL store held and renewed by its worker."""
    runner = await make_runner(store_of(store_url), hooks=[EndingFails()])
    with caplog.at_level(logging.ERROR, logger="asyncjob"):
        ok = await runner.perform(reports, 3)
        assert await runner.wait(ok, timeout=TIMEOUT) == 3
        bad = await runner.perform(fails)
        with pytest.raises(asyncjob.JobFailed, match="bad input"):
            await runner.wait(bad, timeout=TIMEOUT)
    said = [r for r in caplog.records if "EndingFails.ending" in r.getMessage()]
    assert [getattr(r, "job_id", None) for r in said] == [ok, bad]
    assert all("recorded all the same" in r.getMessage() for r in said)


class HeldAtEnding(Recorder):
    """A recorder whose ``ending`` waits for ``release``: the job's code has
    returned, its end is not recorded yet."""

    def __init__(self) -> None:
        super().__init__()
        self.reached, self.release = asyncio.Event(), asyncio.Event()

    async def ending(self, job_id: str) -> None:
        await super().ending(job_id)
        self.reached.set()
        await self.release.wait()


async def test_hooks_are_told_the_state_recorded(
    make_runner: RunnerFactory, store_url: str
) -> None:
    """A cancel requested after a job's code returned, before its end is
    recorded: the store records it cancelled (a cancel requested ends a job
    so); the hooks, and so the metrics, were told it succeeded."""
    heard = HeldAtEnding()
    runner = await make_runner(store_of(store_url), hooks=[heard])
    job_id = await runner.perform(reports, 3)
    async with asyncio.timeout(TIMEOUT):
        await heard.reached.wait()
    assert await runner.cancel(job_id)
    heard.release.set()
    with pytest.raises(asyncjob.JobCancelled):
        await runner.wait(job_id, timeout=TIMEOUT)
    await runner.join(TIMEOUT)
    (finished,) = [call for call in heard.calls if call[0] == "finished"]
    assert finished[2:] == (asyncjob.JobState.cancelled, True, None)


async def test_an_end_another_worker_holds_is_not_counted_here(
    make_runner: RunnerFactory, sqlite_db: Database
) -> None:
    """A job whose end this worker could not record (another worker holds
    it now: its lease was taken over) was told to the hooks as finished,
    and counted by both workers' metrics; only a recorded end is."""
    heard = Recorder()
    runner = await make_runner(store_of(sqlite_db.async_url), hooks=[heard])
    gate = f"taken-{uuid.uuid4().hex}"
    job_id = await runner.perform(worker_jobs.wait_for_gate, gate)
    async with asyncio.timeout(TIMEOUT):
        async for status in runner.watch(job_id):
            if status.state is asyncjob.JobState.running:
                break
    await asyncio.to_thread(  # another worker's now, as after its lease ran out
        edit_by_hand,
        sqlite_db.sync_url,
        f"UPDATE asyncjob_jobs SET locked_by = 'elsewhere' WHERE id = '{job_id}'",
    )
    worker_jobs.GATES.setdefault(gate, asyncio.Event()).set()
    await runner.join(TIMEOUT)
    assert [call[0] for call in heard.calls if call[0] in ("ending", "finished")] == ["ending"]
    assert (await runner.status(job_id)).state is asyncjob.JobState.running  # elsewhere
    assert not runner._engine._began  # nothing kept for it


async def test_job_metrics_count_what_ran(make_runner: RunnerFactory, clean_registry: None) -> None:
    metrics = JobMetrics()
    runner = await make_runner(hooks=[metrics])
    ok = [await runner.perform(reports, n) for n in range(3)]
    flaky = await runner.perform(retry_jobs.flaky, f"metrics-{uuid.uuid4()}", 1)
    bad = await runner.perform(fails)
    for job_id in [*ok, flaky]:
        await runner.wait(job_id, timeout=TIMEOUT)
    with pytest.raises(asyncjob.JobFailed):
        await runner.wait(bad, timeout=TIMEOUT)
    await runner.stop()
    value = metrics.registry.get_sample_value
    reported = {"name": f"{__name__}.reports", "queue": "default"}
    assert value("asyncjob_jobs_enqueued_total", reported) == 3
    assert value("asyncjob_jobs_started_total", reported) == 3
    assert value("asyncjob_jobs_finished_total", {**reported, "state": "succeeded"}) == 3
    assert value("asyncjob_job_duration_seconds_count", {**reported, "state": "succeeded"}) == 3
    retried = {"name": "tests.retry_jobs.flaky", "queue": "default"}
    assert value("asyncjob_jobs_retried_total", retried) == 1
    assert value("asyncjob_jobs_started_total", retried) == 2
    failed = {"name": f"{__name__}.fails", "queue": "default", "state": "failed"}
    assert value("asyncjob_jobs_finished_total", failed) == 1


def test_two_job_metrics_in_one_process_do_not_clash() -> None:
    """Each has a registry of its own unless given one."""
    assert JobMetrics().registry is not JobMetrics().registry


def families(text: str) -> dict[str, Any]:
    """The exposition parsed as Prometheus would: it must parse."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(found: dict[str, Any], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    family = found[name]
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


async def test_the_dashboard_serves_metrics(tmp_path: Path) -> None:
    """Over real HTTP: the store's gauges, and the runner's JobMetrics."""
    runner = asyncjob.Runner(
        SQLStore(f"sqlite+aiosqlite:///{tmp_path}/d.db", poll_interval=0.05),
        hooks=[JobMetrics()],
        producer_only=True,  # registered jobs wait for a worker; the others run here
    )
    async with serving(app_with_dashboard(runner)) as (url, _):
        done = await runner.perform(reports, 1)
        await runner.wait(done, timeout=TIMEOUT)
        for queue in ("default", "mail", "mail"):
            await runner.perform(asyncjob.using(worker_jobs.whoami, queue=queue), 1)
        await runner.perform(asyncjob.using(worker_jobs.whoami, delay=3600), 2)
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
            answer = await client.get("/jobs/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = families(answer.text)
    assert samples(found, "asyncjob_queue_jobs") == {
        (("queue", "default"), ("state", "waiting")): 1.0,
        (("queue", "mail"), ("state", "waiting")): 2.0,
        (("queue", "default"), ("state", "scheduled")): 1.0,
    }
    ages = samples(found, "asyncjob_queue_oldest_due_age_seconds")
    assert set(ages) == {(("queue", "default"),), (("queue", "mail"),)}
    assert all(0 <= age < TIMEOUT * 6 for age in ages.values())
    assert samples(found, "asyncjob_jobs_ended_last_hour")[(("state", "succeeded"),)] == 1.0
    assert samples(found, "asyncjob_workers_alive") == {(): 0.0}  # a producer is no worker
    assert samples(found, "asyncjob_queue_jobs_capped") == {(): 0.0}
    started = samples(found, "asyncjob_jobs_started")
    assert started[(("name", f"{__name__}.reports"), ("queue", "default"))] == 1.0


async def test_metrics_on_a_read_only_dashboard_change_nothing(runner: asyncjob.Runner) -> None:
    """``/metrics`` only reads: served by a read-only dashboard, GET only."""
    app = asyncjob.web.dashboard(runner)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.post("/metrics")).status_code == 405


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_a_worker_serves_its_counters(
    make_runner: RunnerFactory, database: Database, tmp_path: Path
) -> None:
    """``asyncjob worker --metrics-port``: a real worker process, scraped."""
    workers = Workers(tmp_path, url=database.async_url)
    port = free_port()
    producer = await make_runner(
        SQLStore(database.async_url, poll_interval=0.05), producer_only=True
    )
    try:
        workers.start(extra=["--metrics-port", str(port)])
        ids = [await producer.perform(worker_jobs.sync_whoami, n) for n in range(3)]
        for job_id in ids:
            await producer.wait(job_id, timeout=TIMEOUT)
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            answer = await client.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        workers.stop_all()
    assert answer.status_code == 200, workers.output()
    found = families(answer.text)
    started = samples(found, "asyncjob_jobs_started")
    # Started before each job's code ran, so before the producer saw it end.
    assert started[(("name", "tests.worker_jobs.sync_whoami"), ("queue", "default"))] == 3
    assert "asyncjob_job_duration_seconds" in found
    assert "asyncjob_queue_jobs" not in found  # the store's figures: the dashboard's


def test_a_worker_refuses_a_metrics_port_it_cannot_use(tmp_path: Path) -> None:
    """A port taken, or no port at all: exit 2, saying so."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for given, said in (
            (str(port), f"cannot serve metrics on 127.0.0.1:{port}: Address already in use"),
            ("70000", "a port is from 0 to 65535, not 70000"),
        ):
            done = subprocess.run(
                [sys.executable, "-m", "asyncjob", "worker", "--store",
                 f"sqlite+aiosqlite:///{tmp_path}/w.db", "--import", "tests.worker_jobs",
                 "--metrics-port", given],
                cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT * 3,
            )  # fmt: skip
            assert (done.returncode, said in done.stderr) == (2, True), done.stderr


def test_store_metrics_of_an_empty_store() -> None:
    overview = asyncjob.Overview({}, {}, {}, False, {}, ())
    found = {metric.name: metric for metric in store_metrics(overview)}
    assert found["asyncjob_queue_jobs"].samples == []
    assert [s.value for s in found["asyncjob_jobs_ended_last_hour"].samples] == [0, 0, 0]

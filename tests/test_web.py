"""asyncjob.web over real HTTP: the dashboard's JSON API, its live streams
(Server-Sent Events), its actions and their guards, served by uvicorn on
loopback and read with httpx; and the ``asyncjob dashboard`` command."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

import asyncjob
import asyncjob.web
from asyncjob._worker.scheduler import tick_job_id
from asyncjob.stores.sql import BadRecord

from . import worker_jobs
from .conftest import TIMEOUT, Database, edit_by_hand
from .web_server import app_with_dashboard, serving

#: Each test's steps: the job waits for the test to let it take the next one.
steps: dict[str, asyncio.Queue[str]] = {}


async def stepper(key: str, n: int) -> dict[str, int]:
    """Reports its progress ``n`` times, each when the test lets it; then
    returns, or fails if told to."""
    for done in range(1, n + 1):
        async with asyncio.timeout(TIMEOUT):
            order = await steps[key].get()
        if order == "fail":
            raise ValueError("told to fail")
        asyncjob.set_progress(done * 100 / n, f"step {done} of {n}")
    return {"steps": n}


async def hot(n: int) -> int:
    """Reports progress as fast as it can."""
    for done in range(n):
        asyncjob.set_progress(done)
        await asyncio.sleep(0)
    return n


@contextlib.asynccontextmanager
async def dashboard(**options: Any) -> AsyncIterator[tuple[asyncjob.Runner, httpx.AsyncClient]]:
    """A memory runner with its dashboard at /jobs, served over loopback."""
    runner = asyncjob.Runner()
    async with (
        serving(app_with_dashboard(runner, **options)) as (url, _),
        httpx.AsyncClient(base_url=f"{url}/jobs", timeout=TIMEOUT) as client,
    ):
        yield runner, client


def events_of(lines: list[str]) -> list[dict[str, Any]]:
    """The events of an SSE text: each as {"id": ..., "data": parsed JSON}."""
    found: list[dict[str, Any]] = []
    event: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in event:
                found.append(event)
            event = {}
        elif line.startswith("id:"):
            event["id"] = line[3:].strip()
        elif line.startswith("data:"):
            event["data"] = json.loads(line[5:].strip())
    return found


class Stream:
    """An SSE response read event by event."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self) -> dict[str, Any] | None:
        """The next event, or None when the stream has ended."""
        pending: list[str] = []
        async with asyncio.timeout(TIMEOUT):
            async for line in self._lines:
                pending.append(line)
                if line == "" and any(p.startswith("data:") for p in pending):
                    return events_of(pending)[0]
        return None


@contextlib.asynccontextmanager
async def stream(
    client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[Stream]:
    async with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


# -- the JSON API ------------------------------------------------------------------------


async def test_a_job_as_json_has_every_status_field_and_iso_times() -> None:
    """GET /api/jobs/{id} is the job's JobStatus, field for field, with
    times as ISO 8601 strings that parse back to the same instants."""
    async with dashboard() as (runner, client):
        job_id = await runner.perform(hot, 3)
        await runner.wait(job_id, timeout=TIMEOUT)
        response = await client.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200
        body = response.json()
        status = await runner.status(job_id)
        assert set(body) == {f.name for f in dataclasses.fields(asyncjob.JobStatus)}
        assert body["state"] == "succeeded"
        assert body["result"] == 3
        assert body["errors"] == []
        for name in ("enqueued_at", "started_at", "finished_at"):
            assert datetime.fromisoformat(body[name]) == getattr(status, name)
        assert body["run_after"] is None


async def test_an_unknown_job_is_a_404_in_json() -> None:
    async with dashboard() as (_, client):
        for path in ("/api/jobs/nope", "/api/jobs/nope/events", "/api/events?id=nope"):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert "nope" in response.json()["error"]


async def test_a_value_json_cannot_hold_is_shown_as_its_repr() -> None:
    """An in-process job may return any object: its status still renders,
    with the object's repr, and the stream ends as for any other."""

    async def odd() -> object:
        return {1, 2}

    async with dashboard() as (runner, client):
        job_id = await runner.perform(odd)
        await runner.wait(job_id, timeout=TIMEOUT)
        assert (await client.get(f"/api/jobs/{job_id}")).json()["result"] == "{1, 2}"
        async with stream(client, f"/api/jobs/{job_id}/events") as events:
            last = await events.next()
            assert last is not None
            assert last["data"]["result"] == "{1, 2}"
            assert await events.next() is None


async def broken() -> None:
    raise ValueError("broken")


async def test_listing_filters_and_pages_newest_first() -> None:
    async with dashboard() as (runner, client):
        ids = [await runner.perform(hot, 1) for _ in range(5)]
        failing = await runner.perform(broken)
        for job_id in ids:
            await runner.wait(job_id, timeout=TIMEOUT)
        with pytest.raises(asyncjob.JobFailed):
            await runner.wait(failing, timeout=TIMEOUT)

        first = (await client.get("/api/jobs", params={"limit": 4})).json()
        assert [j["id"] for j in first["jobs"]] == [failing, *ids[::-1][:3]]
        assert first["next"] == ids[2]
        rest = (await client.get("/api/jobs", params={"limit": 4, "before": first["next"]})).json()
        assert [j["id"] for j in rest["jobs"]] == ids[1::-1]
        assert rest["next"] is None

        failed = (await client.get("/api/jobs", params={"state": "failed"})).json()
        assert [j["id"] for j in failed["jobs"]] == [failing]
        both = await client.get("/api/jobs", params="state=failed&state=succeeded")
        assert len(both.json()["jobs"]) == 6
        named = await client.get("/api/jobs", params={"name": f"{__name__}.hot"})
        assert len(named.json()["jobs"]) == 5
        assert (await client.get("/api/jobs", params={"queue": "other"})).json()["jobs"] == []
        performed = (await runner.status(failing)).enqueued_at
        assert performed is not None
        since = {"since": performed.isoformat()}
        assert [j["id"] for j in (await client.get("/api/jobs", params=since)).json()["jobs"]] == [
            failing
        ]
        until = {"until": performed.isoformat(), "limit": "1"}
        assert [j["id"] for j in (await client.get("/api/jobs", params=until)).json()["jobs"]] == [
            ids[-1]
        ]


async def held(release: asyncio.Event) -> None:
    """Runs until ``release`` is set."""
    await release.wait()


async def test_the_next_page_starts_where_a_forgotten_job_stood() -> None:
    """The memory store forgets the oldest ended jobs past its bound: the
    last job of a page may be gone when the next page is asked for, while
    older jobs still run. With the page's ``next_at``, the next page starts
    where that job stood; with its id alone, the store cannot say where."""
    release = asyncio.Event()
    runner = asyncjob.Runner(asyncjob.stores.MemoryStore(max_finished=8))
    async with (
        serving(app_with_dashboard(runner)) as (url, _),
        httpx.AsyncClient(base_url=f"{url}/jobs", timeout=TIMEOUT) as client,
    ):
        running = [await runner.perform(held, release) for _ in range(3)]
        ended = [await runner.perform(hot, 1) for _ in range(8)]
        for job_id in ended:
            await runner.wait(job_id, timeout=TIMEOUT)
        first = (await client.get("/api/jobs", params={"limit": 3})).json()
        assert [j["id"] for j in first["jobs"]] == ended[:4:-1]
        assert (first["next"], first["next_at"]) == (ended[5], first["jobs"][-1]["enqueued_at"])
        for job_id in [await runner.perform(hot, 1) for _ in range(6)]:
            await runner.wait(job_id, timeout=TIMEOUT)
        with pytest.raises(asyncjob.JobNotFound):
            await runner.status(ended[5])  # forgotten, with the five before it

        after = {"limit": 3, "before": first["next"], "before_at": first["next_at"]}
        rest = (await client.get("/api/jobs", params=after)).json()
        assert [j["id"] for j in rest["jobs"]] == running[::-1]
        lost = await client.get("/api/jobs", params={"limit": 3, "before": first["next"]})
        assert lost.status_code == 400
        release.set()
        for job_id in running:
            await runner.wait(job_id, timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "many"}, "limit must be a number"),
        ({"limit": "0"}, "limit must be from 1"),
        ({"limit": "100000"}, "limit must be from 1"),
        ({"state": "lost"}, "lost"),
        ({"before": "nope"}, "before names no job"),
        ({"since": "yesterday"}, "since must be a time in ISO 8601"),
        ({"until": "2026-12-05T10:00:00"}, "until must be an aware datetime"),
        ({"before_at": "2026-12-05T10:00:00Z"}, "before_at goes with before"),
        ({"before": "nope", "before_at": "soon"}, "before_at must be a time in ISO 8601"),
    ],
)
async def test_a_bad_listing_is_a_400_saying_what_is_wrong(
    params: dict[str, str], message: str
) -> None:
    async with dashboard() as (_, client):
        response = await client.get("/api/jobs", params=params)
        assert response.status_code == 400
        assert message in response.json()["error"]


async def nightly() -> None:
    """A periodic job of the test below, registered by it."""


@pytest.mark.usefixtures("clean_registry")
async def test_schedules_are_listed() -> None:
    asyncjob.periodic("0 3 * * *", name="tests.web.nightly")(nightly)
    async with dashboard() as (_, client):
        (schedule,) = (await client.get("/api/schedules")).json()
        assert schedule["name"] == "tests.web.nightly"
        assert schedule["cron"] == "0 3 * * *"
        assert datetime.fromisoformat(schedule["next_tick"]).hour == 3
        assert schedule["last_job"] is None  # no tick performed yet


#: Set by :func:`every_second` when it runs.
TICKED: list[asyncio.Event] = []


async def every_second() -> None:
    """A periodic job of the test below, registered by it."""
    TICKED[-1].set()


@pytest.mark.usefixtures("clean_registry")
async def test_a_schedule_shows_its_last_ticks_job() -> None:
    """The last tick's job is named, with its state: an operator sees at
    once whether the last run of a periodic job went well."""
    TICKED.append(asyncio.Event())
    asyncjob.periodic("* * * * * *", name="tests.web.every_second")(every_second)
    async with dashboard() as (runner, client):
        async with asyncio.timeout(TIMEOUT):
            await TICKED[-1].wait()
        (schedule,) = (await client.get("/api/schedules")).json()
        last = schedule["last_job"]
        assert last["id"] == tick_job_id(
            "tests.web.every_second", datetime.fromisoformat(schedule["last_tick"]).timestamp()
        )
        assert last["state"] in {"queued", "running", "succeeded"}
        await runner.wait(last["id"], timeout=TIMEOUT)  # the next ticks may be under way


async def test_the_page_and_its_script_are_served_under_the_mount_point() -> None:
    async with dashboard() as (_, client):
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert 'data-base="/jobs"' in page.text
        assert 'src="/jobs/static/asyncjob.js"' in page.text
        script = await client.get("/static/asyncjob.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "asyncjob-progress" in script.text


# -- the live stream -------------------------------------------------------------------------


async def test_a_stream_sends_each_change_then_the_final_state_and_ends() -> None:
    steps["live"] = asyncio.Queue()
    async with dashboard() as (runner, client):
        job_id = await runner.perform(stepper, "live", 3)
        async with stream(client, f"/api/jobs/{job_id}/events") as events:
            first = await events.next()
            assert first is not None
            assert first["data"]["progress"] is None
            event: dict[str, Any] | None = first
            for step in (1, 2, 3):
                steps["live"].put_nowait("go")
                event = await events.next()
                # Each step shows (one event may cover a step and the end).
                while event is not None and event["data"]["data"] != f"step {step} of 3":
                    event = await events.next()
                assert event is not None, f"step {step} never shown"
            last = event
            while (event := await events.next()) is not None:
                last = event  # the stream ends after the final state
            assert last is not None
            assert last["data"]["state"] == "succeeded"
            assert last["data"]["result"] == {"steps": 3}
            assert last["data"]["data"] == "step 3 of 3"
        ids = [int(e) for e in (first["id"], last["id"])]
        assert ids[0] < ids[1]


async def test_a_failed_job_ends_its_stream_with_its_error() -> None:
    steps["fail"] = asyncio.Queue()
    async with dashboard() as (runner, client):
        job_id = await runner.perform(stepper, "fail", 2)
        async with stream(client, f"/api/jobs/{job_id}/events") as events:
            await events.next()
            steps["fail"].put_nowait("fail")
            last = None
            while (event := await events.next()) is not None:
                last = event
        assert last is not None
        assert last["data"]["state"] == "failed"
        assert last["data"]["error"] == "ValueError: told to fail"
        assert "Traceback" in last["data"]["traceback"]


async def test_hot_progress_is_coalesced_and_the_final_state_always_comes() -> None:
    """A job reporting thousands of times a second gives a few events a
    second, the last one always its final state."""
    async with dashboard() as (runner, client):
        gate = asyncio.Event()

        async def gated_hot(n: int) -> int:
            async with asyncio.timeout(TIMEOUT):
                await gate.wait()
            return await hot(n)

        job_id = await runner.perform(gated_hot, 20_000)
        async with stream(client, f"/api/jobs/{job_id}/events") as events:
            found = [await events.next()]
            gate.set()
            while (event := await events.next()) is not None:
                found.append(event)
        assert found[-1] is not None
        assert found[-1]["data"]["state"] == "succeeded"
        assert found[-1]["data"]["result"] == 20_000
        assert len(found) < 2_000, len(found)


async def test_reconnecting_with_last_event_id_gives_a_snapshot_first() -> None:
    """A browser that lost its stream reconnects with Last-Event-ID: it gets
    the job as it is now at once, then the changes, with ids going on."""
    steps["again"] = asyncio.Queue()
    async with dashboard() as (runner, client):
        job_id = await runner.perform(stepper, "again", 2)
        async with stream(client, f"/api/jobs/{job_id}/events") as events:
            first = await events.next()
        assert first is not None
        steps["again"].put_nowait("go")
        async with asyncio.timeout(TIMEOUT):
            async for status in runner.watch(job_id):
                if status.progress == 50:
                    break
        headers = {"Last-Event-ID": first["id"]}
        async with stream(client, f"/api/jobs/{job_id}/events", headers) as events:
            snapshot = await events.next()
            assert snapshot is not None
            assert snapshot["data"]["progress"] == 50  # missed while away: in the snapshot
            assert int(snapshot["id"]) > int(first["id"])
            steps["again"].put_nowait("go")
            last = snapshot
            while (event := await events.next()) is not None:
                last = event
            assert last["data"]["state"] == "succeeded"


@pytest.mark.parametrize("last", ["abc", "-1", "1.5", "9" * 40])
async def test_a_malformed_last_event_id_is_a_400(last: str) -> None:
    """Only numbers of this stream come back as Last-Event-ID."""
    async with dashboard() as (runner, client):
        job_id = await runner.perform(hot, 1)
        response = await client.get(f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": last})
        assert response.status_code == 400
        assert "Last-Event-ID must be an event number" in response.json()["error"]


async def test_the_api_through_an_asgi_transport() -> None:
    """In-process, with no server (as an application's own tests drive it):
    the status, and the stream to its end."""
    runner = asyncjob.Runner()
    app = app_with_dashboard(runner)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://app.test/jobs"
        ) as client,
    ):
        job_id = await runner.perform(hot, 5)
        await runner.wait(job_id, timeout=TIMEOUT)
        assert (await client.get(f"/api/jobs/{job_id}")).json()["result"] == 5
        async with client.stream("GET", f"/api/jobs/{job_id}/events") as response:
            lines = [line async for line in response.aiter_lines()]
        (last,) = events_of(lines)
        assert last["data"]["state"] == "succeeded"


async def test_one_stream_follows_many_jobs_until_all_have_ended() -> None:
    steps["a"], steps["b"] = asyncio.Queue(), asyncio.Queue()
    async with dashboard() as (runner, client):
        a = await runner.perform(stepper, "a", 1)
        b = await runner.perform(stepper, "b", 1)
        async with stream(client, f"/api/events?id={a}&id={b}") as events:
            ended: list[str] = []
            snapshots = {
                (e or {})["data"]["id"] for e in [await events.next(), await events.next()]
            }
            assert snapshots == {a, b}
            steps["b"].put_nowait("go")
            steps["a"].put_nowait("go")
            while (event := await events.next()) is not None:
                if event["data"]["state"] == "succeeded":
                    ended.append(event["data"]["id"])
        assert sorted(ended) == sorted([a, b])


async def test_a_stream_names_its_jobs_and_not_too_many() -> None:
    async with dashboard() as (_, client):
        response = await client.get("/api/events")
        assert response.status_code == 400
        assert "name the jobs" in response.json()["error"]
        many = "&".join(f"id={n}" for n in range(101))
        response = await client.get("/api/events", params=many)
        assert response.status_code == 400
        assert "100 jobs at most" in response.json()["error"]


async def test_the_client_going_away_stops_the_watch() -> None:
    """A closed browser tab must not leave a watch behind in the server."""
    steps["away"] = asyncio.Queue()
    async with dashboard() as (runner, client):
        job_id = await runner.perform(stepper, "away", 1)
        store = runner.store
        async with stream(client, f"/api/jobs/{job_id}/events") as events:
            await events.next()
            assert store._watchers.job_ids() == [job_id]  # type: ignore[attr-defined]
        async with asyncio.timeout(TIMEOUT):
            while store._watchers.job_ids():  # type: ignore[attr-defined]  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        steps["away"].put_nowait("go")
        await runner.wait(job_id, timeout=TIMEOUT)


async def test_a_server_stopping_ends_its_streams_promptly() -> None:
    """A deploy stops the server: open streams end (the browser reconnects
    to the next one) rather than holding the shutdown for ever."""
    steps["stop"] = asyncio.Queue()
    runner = asyncjob.Runner()
    async with (
        serving(app_with_dashboard(runner)) as (url, server),
        httpx.AsyncClient(base_url=f"{url}/jobs", timeout=TIMEOUT) as client,
    ):
        job_id = await runner.perform(stepper, "stop", 1)
        async with stream(client, f"/api/jobs/{job_id}/events") as events:
            await events.next()
            server.should_exit = True
            async with asyncio.timeout(TIMEOUT):
                with contextlib.suppress(httpx.RemoteProtocolError):
                    assert await events.next() is None
        steps["stop"].put_nowait("go")  # the runner stops with the server: let it end


async def test_a_stream_of_a_job_on_an_sql_store_follows_it(database: Database) -> None:
    """On an SQL store, the stream follows a registered job run by a worker
    of the same store, to its end."""
    store = asyncjob.stores.resolve_store(database.async_url)
    runner = asyncjob.Runner(store)
    async with (
        serving(app_with_dashboard(runner)) as (url, _),
        httpx.AsyncClient(base_url=f"{url}/jobs", timeout=TIMEOUT) as client,
    ):
        job_id = await runner.perform(worker_jobs.whoami, 3)
        async with stream(client, f"/api/jobs/{job_id}/events") as events:
            last = None
            while (event := await events.next()) is not None:
                last = event
        assert last is not None
        assert last["data"]["state"] == "succeeded"
        assert last["data"]["result"] == {"n": 3, "pid": os.getpid()}


#: A row's column edited by hand into what asyncjob never writes, on
#: both databases (SQL text for the SET), and only on SQLite, which keeps
#: any value in any column.
NONSENSE = [
    ("state", "'lost'", "the state 'lost'"),
    ("data", "'{nope'", "invalid JSON in its data"),
    ("progress", "'NaN'", "in its progress"),
    ("errors", "'5'", "5 in its errors"),
    ("errors", "'[NaN]'", "invalid JSON in its errors: NaN is not JSON"),
]
NONSENSE_ON_SQLITE = [
    ("progress", "'half'", "'half' in its progress"),
    ("enqueued_at", "'yesterday'", "never writes"),
    ("attempts", "'many'", "'many' in its attempts"),
    ("priority", "'high'", "'high' in its priority"),
]


@pytest.mark.parametrize(("column", "value", "said"), NONSENSE + NONSENSE_ON_SQLITE)
async def test_a_row_of_nonsense_breaks_only_its_own_job(
    database: Database, column: str, value: str, said: str
) -> None:
    """One job's row edited by hand: its status is a 422 saying what is
    wrong, and every listing and page leaves it out and shows the others
    (it was a 500 for the whole list, on every page, for everyone)."""
    if database.kind != "sqlite" and (column, value, said) in NONSENSE_ON_SQLITE:
        pytest.skip("PostgreSQL keeps a column's type")
    store = asyncjob.stores.resolve_store(database.async_url)
    runner = asyncjob.Runner(store)
    async with (
        serving(app_with_dashboard(runner)) as (url, _),
        httpx.AsyncClient(base_url=f"{url}/jobs", timeout=TIMEOUT) as client,
    ):
        ids = [await runner.perform(hot, n) for n in range(5)]
        for job_id in ids:
            await runner.wait(job_id, timeout=TIMEOUT)
        bad = ids[2]
        await asyncio.to_thread(
            edit_by_hand,
            database.sync_url,
            f"UPDATE asyncjob_jobs SET {column} = {value} WHERE id = '{bad}'",
        )
        good = [job_id for job_id in reversed(ids) if job_id != bad]

        answer = await client.get(f"/api/jobs/{bad}")
        assert answer.status_code == 422
        assert bad in answer.json()["error"]
        assert said in answer.json()["error"]
        with pytest.raises(BadRecord, match=re.escape(said)):
            await runner.status(bad)

        listed = await client.get("/api/jobs")
        assert listed.status_code == 200
        assert [job["id"] for job in listed.json()["jobs"]] == good
        assert [job.id for job in await runner.jobs()] == good
        paged, after = [], None
        for _ in ids:  # pages of 2: the bad row's page is short, and the next goes on
            page = await client.get(
                "/api/jobs", params={"limit": 2, **({"before": after} if after else {})}
            )
            paged += [job["id"] for job in page.json()["jobs"]]
            if (after := page.json()["next"]) is None:
                break
        assert paged == good
        assert (await client.get("/api/overview")).status_code == 200


async def test_a_due_time_of_nonsense_leaves_the_overview_readable(sqlite_db: Database) -> None:
    """A queued job's due time edited into text (SQLite keeps it): the
    overview, its stream and the metrics were a 500 for everyone."""
    runner = asyncjob.Runner(sqlite_db.async_url, producer_only=True)
    async with (
        serving(app_with_dashboard(runner)) as (url, _),
        httpx.AsyncClient(base_url=f"{url}/jobs", timeout=TIMEOUT) as client,
    ):
        job_id = await runner.perform(worker_jobs.whoami, 1)  # no worker: it waits
        await asyncio.to_thread(
            edit_by_hand,
            sqlite_db.sync_url,
            f"UPDATE asyncjob_jobs SET run_after = 'soon' WHERE id = '{job_id}'",
        )
        overview = await client.get("/api/overview")
        assert overview.status_code == 200
        assert (await runner.overview()).waiting == {"default": 1}


# -- actions ----------------------------------------------------------------------------------


ACTION = {asyncjob.web.ACTION_HEADER: "cancel"}


async def test_read_only_serves_no_action() -> None:
    steps["ro"] = asyncio.Queue()
    async with dashboard() as (runner, client):
        job_id = await runner.perform(stepper, "ro", 1)
        response = await client.post(f"/api/jobs/{job_id}/cancel", headers=ACTION)
        assert response.status_code in (404, 405)
        assert (await runner.status(job_id)).state is asyncjob.JobState.running
        steps["ro"].put_nowait("go")
        await runner.wait(job_id, timeout=TIMEOUT)


async def test_cancel_when_allowed() -> None:
    steps["cancel"] = asyncio.Queue()
    async with dashboard(read_only=False) as (runner, client):
        job_id = await runner.perform(stepper, "cancel", 1)
        response = await client.post(f"/api/jobs/{job_id}/cancel", headers=ACTION)
        assert response.status_code == 200
        assert response.json()["done"] is True
        with pytest.raises(asyncjob.JobCancelled):
            await runner.wait(job_id, timeout=TIMEOUT)
        again = await client.post(f"/api/jobs/{job_id}/cancel", headers=ACTION)
        assert (again.json()["done"], again.json()["why"]) == (False, "it has ended")
        assert again.json()["status"]["state"] == "cancelled"
        assert (await client.post("/api/jobs/nope/cancel", headers=ACTION)).status_code == 404


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "carries the header"),
        ({asyncjob.web.ACTION_HEADER: "delete"}, "carries the header"),
        ({**ACTION, "Origin": "https://evil.example"}, "another site"),
    ],
)
async def test_an_action_from_another_site_is_refused(
    headers: dict[str, str], message: str
) -> None:
    """A form or a script on another site cannot set the action header
    without the server's consent (CORS), which it never gives; an Origin
    that is not the dashboard's own is refused too."""
    steps["csrf"] = asyncio.Queue()
    async with dashboard(read_only=False) as (runner, client):
        job_id = await runner.perform(stepper, "csrf", 1)
        response = await client.post(f"/api/jobs/{job_id}/cancel", headers=headers)
        assert response.status_code == 403
        assert message in response.json()["error"]
        assert not (await runner.status(job_id)).cancel_requested
        steps["csrf"].put_nowait("go")
        await runner.wait(job_id, timeout=TIMEOUT)


async def test_authorize_decides_each_action(caplog: pytest.LogCaptureFixture) -> None:
    """The hook sees the request, the action and the job; refused actions
    and allowed ones are logged with who asked."""
    asked: list[tuple[str, str]] = []

    async def authorize(request: Request, action: str, job_id: str) -> bool:
        asked.append((action, job_id))
        return request.headers.get("x-user") == "admin"

    steps["auth"] = asyncio.Queue()
    async with dashboard(authorize=authorize) as (runner, client):
        job_id = await runner.perform(stepper, "auth", 1)
        refused = await client.post(f"/api/jobs/{job_id}/cancel", headers=ACTION)
        assert refused.status_code == 403
        allowed = await client.post(
            f"/api/jobs/{job_id}/cancel", headers={**ACTION, "x-user": "admin"}
        )
        assert allowed.status_code == 200
        with pytest.raises(asyncjob.JobCancelled):
            await runner.wait(job_id, timeout=TIMEOUT)
    assert asked == [("cancel", job_id), ("cancel", job_id)]
    messages = [r.getMessage() for r in caplog.records]
    assert any("may not cancel job" in m and "127.0.0.1" in m for m in messages)
    assert any(f"cancel job {job_id}: done" in m for m in messages)


async def test_a_bulk_action_answers_for_each_job_authorize_refuses() -> None:
    """One job of a bulk action refused by ``authorize``: the others are
    acted on, and the answer says which was refused (the request stopped
    at it with a 403, the jobs before it cancelled and those after it not,
    and the answer said neither)."""

    async def authorize(request: Request, action: str, job_id: str) -> bool:
        return job_id != protected

    steps["bulk"] = asyncio.Queue()
    async with dashboard(authorize=authorize) as (runner, client):
        ids = [await runner.perform(stepper, "bulk", 1) for _ in range(3)]
        protected = ids[1]
        answer = await client.post(
            "/api/actions", json={"action": "cancel", "ids": ids}, headers=ACTION
        )
        assert answer.status_code == 200
        assert answer.json()["results"] == [
            {"id": ids[0], "done": True, "why": None},
            {"id": ids[1], "done": False, "why": "you may not cancel this job"},
            {"id": ids[2], "done": True, "why": None},
        ]
        steps["bulk"].put_nowait("go")  # the one left running ends
        assert await runner.wait(protected, timeout=TIMEOUT) == {"steps": 1}


async def test_retry_delete_and_bulk_actions_on_a_shared_store(
    database: Database, tmp_path: Path
) -> None:
    """On an SQL store: a failed job retried runs again; an ended one is
    deleted, a queued one is not; one request acts on many jobs, and says
    what it did to each."""
    store = asyncjob.stores.resolve_store(database.async_url)
    runner = asyncjob.Runner(store)
    async with (
        serving(app_with_dashboard(runner, read_only=False)) as (url, _),
        httpx.AsyncClient(base_url=f"{url}/jobs", timeout=TIMEOUT) as client,
    ):
        failing = await runner.perform(worker_jobs.fails_once, str(tmp_path / "marker"))
        with pytest.raises(asyncjob.JobFailed):
            await runner.wait(failing, timeout=TIMEOUT)
        retry = {asyncjob.web.ACTION_HEADER: "retry"}
        answer = (await client.post(f"/api/jobs/{failing}/retry", headers=retry)).json()
        assert answer["done"] is True
        assert await runner.wait(failing, timeout=TIMEOUT) == "second time lucky"
        again = (await client.post(f"/api/jobs/{failing}/retry", headers=retry)).json()
        assert again["done"] is False
        assert "failed or was cancelled" in again["why"]

        delete = {asyncjob.web.ACTION_HEADER: "delete"}
        gate = f"bulk-{os.urandom(4).hex()}"
        waiting = await runner.perform(worker_jobs.wait_for_gate, gate)
        bulk = await client.post(
            "/api/actions", json={"action": "delete", "ids": [failing, waiting]}, headers=delete
        )
        results = {r["id"]: r["done"] for r in bulk.json()["results"]}
        assert results == {failing: True, waiting: False}
        assert (await client.get(f"/api/jobs/{failing}")).status_code == 404
        cancel = {asyncjob.web.ACTION_HEADER: "cancel"}
        cancelled = await client.post(
            "/api/actions", json={"action": "cancel", "ids": [waiting]}, headers=cancel
        )
        assert cancelled.json()["results"] == [{"id": waiting, "done": True, "why": None}]
        worker_jobs.GATES.setdefault(gate, asyncio.Event()).set()
        with pytest.raises(asyncjob.JobCancelled):
            await runner.wait(waiting, timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"action": "explode", "ids": ["a"]}, "the actions are cancel, retry, delete"),
        ({"action": "cancel", "ids": []}, "ids must be a list"),
        ({"action": "cancel", "ids": "a"}, "ids must be a list"),
        ({"action": "cancel", "ids": [str(n) for n in range(101)]}, "100 jobs at most"),
    ],
)
async def test_a_bad_bulk_action_is_a_400(body: dict[str, Any], message: str) -> None:
    async with dashboard(read_only=False) as (_, client):
        response = await client.post("/api/actions", json=body, headers=ACTION)
        assert response.status_code == 400
        assert message in response.json()["error"]


async def test_retry_and_delete_need_a_shared_store() -> None:
    """The memory store keeps no ended job's function: the page is told so."""
    async with dashboard(read_only=False) as (runner, client):
        job_id = await runner.perform(hot, 1)
        await runner.wait(job_id, timeout=TIMEOUT)
        answer = await client.post(
            f"/api/jobs/{job_id}/delete", headers={asyncjob.web.ACTION_HEADER: "delete"}
        )
        assert answer.json()["done"] is False
        assert "memory store" in answer.json()["why"]


async def test_overview_and_workers(database: Database) -> None:
    """The overview counts by queue and minute; the workers list this
    runner, which runs the store's jobs."""
    store = asyncjob.stores.resolve_store(database.async_url)
    runner = asyncjob.Runner(store)
    async with (
        serving(app_with_dashboard(runner)) as (url, _),
        httpx.AsyncClient(base_url=f"{url}/jobs", timeout=TIMEOUT) as client,
    ):
        job_id = await runner.perform(worker_jobs.whoami, 1)
        await runner.wait(job_id, timeout=TIMEOUT)
        later = await runner.perform(asyncjob.using(worker_jobs.whoami, delay=3600), 2)
        overview = (await client.get("/api/overview")).json()
        assert overview["scheduled"] == {"default": 1}
        assert (overview["waiting"], overview["capped"], overview["oldest_due"]) == (
            {},
            False,
            None,
        )
        assert len(overview["ended"]) == 60
        assert sum(m["succeeded"] for m in overview["ended"]) == 1
        datetime.fromisoformat(overview["ended"][-1]["minute"])
        (worker,) = (await client.get("/api/workers")).json()
        assert (worker["pid"], worker["alive"], worker["queues"]) == (os.getpid(), True, None)
        datetime.fromisoformat(worker["last_seen"])
        await runner.cancel(later)


async def test_the_overview_is_pushed_when_jobs_change() -> None:
    """The overview's stream sends the counts now, then again when jobs
    change (not at the next poll): a job performed shows as waiting."""
    async with dashboard() as (runner, client):
        gate = asyncio.Event()

        async def held() -> None:
            async with asyncio.timeout(TIMEOUT):
                await gate.wait()

        async with stream(client, "/api/overview/events") as events:
            first = await events.next()
            assert first is not None
            assert first["data"]["overview"]["running"] == {}
            assert first["data"]["workers"] == []
            job_id = await runner.perform(held)
            event = await events.next()
            while event is not None and event["data"]["overview"]["running"] != {"default": 1}:
                event = await events.next()  # a reading between two changes
            assert event is not None
            gate.set()
            await runner.wait(job_id, timeout=TIMEOUT)
            event = await events.next()
            while event is not None and event["data"]["overview"]["running"]:
                event = await events.next()
            assert event is not None
            ended = event["data"]["overview"]["ended"]
            assert sum(minute["succeeded"] for minute in ended) == 1


async def test_one_reading_serves_every_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    """However many browsers follow the overview, the store is read once
    per change (and at the start)."""
    async with dashboard() as (runner, client):
        readings = 0
        overview = runner.overview

        async def counted() -> asyncjob.Overview:
            nonlocal readings
            readings += 1
            return await overview()

        monkeypatch.setattr(runner, "overview", counted)
        async with contextlib.AsyncExitStack() as followers:
            streams = [
                await followers.enter_async_context(stream(client, "/api/overview/events"))
                for _ in range(4)
            ]
            for each in streams:
                assert await each.next() is not None
            assert readings == 1


def test_dashboard_takes_a_runner() -> None:
    with pytest.raises(TypeError, match=r"takes an asyncjob\.Runner"):
        asyncjob.web.dashboard("sqlite:///jobs.db")  # type: ignore[arg-type]


def test_read_only_with_authorize_is_refused() -> None:
    """Read-only serves no action: a hook to decide them is a mistake."""
    with pytest.raises(ValueError, match="authorize= would decide nothing"):
        asyncjob.web.dashboard(asyncjob.Runner(), read_only=True, authorize=lambda *_: True)


async def test_a_change_made_while_an_event_is_sent_is_not_lost() -> None:
    """The stream's generator is paused in a yield while an event goes out:
    a change recorded meanwhile (here, the job's end) must still come out,
    or the browser would show the job running for ever."""
    from asyncjob.web._stream import Feeds, job_events

    gate = asyncio.Event()

    async def gated() -> str:
        async with asyncio.timeout(TIMEOUT):
            await gate.wait()
        return "ended"

    async with asyncjob.Runner() as runner:
        job_id = await runner.perform(gated)
        events = job_events(Feeds(runner), [job_id])
        async with asyncio.timeout(TIMEOUT):
            first = await anext(events)  # paused here, in the yield
            gate.set()
            await runner.wait(job_id, timeout=TIMEOUT)
            last = await anext(events)
            assert await anext(events, None) is None  # and the stream ends
        assert json.loads(str(first.data))["state"] != "succeeded"
        assert json.loads(str(last.data))["state"] == "succeeded"


async def test_streams_of_one_job_share_one_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """However many streams follow a job, the dashboard watches it once and
    encodes each status once; each stream still gets the status now first,
    then the end, and a stream that joins late gets the latest status."""
    from asyncjob.web._stream import Feeds, job_events

    gate = asyncio.Event()

    async def gated() -> str:
        asyncjob.set_progress(50)
        async with asyncio.timeout(TIMEOUT):
            await gate.wait()
        return "ended"

    async with asyncjob.Runner() as runner:
        watches = []
        watch = runner.watch

        def counted(job_id: str) -> Any:
            watches.append(job_id)
            return watch(job_id)

        monkeypatch.setattr(runner, "watch", counted)
        job_id = await runner.perform(gated)
        feeds = Feeds(runner)
        streams = [job_events(feeds, [job_id]) for _ in range(3)]
        async with asyncio.timeout(TIMEOUT):
            firsts = [await anext(stream) for stream in streams]
            late = job_events(feeds, [job_id])
            late_first = await anext(late)
            gate.set()
            ends = [
                [json.loads(str(e.data))["state"] async for e in stream]
                for stream in [*streams, late]
            ]
        assert watches == [job_id]
        assert all(json.loads(str(e.data))["id"] == job_id for e in [*firsts, late_first])
        assert all(states[-1] == "succeeded" for states in ends)


# -- asyncjob dashboard ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_command_serves_a_store_until_sigterm(database: Database) -> None:
    """``asyncjob dashboard --store URL`` shows the jobs that another process
    performed into the store, read-only, on 127.0.0.1, and stops cleanly."""
    producer = asyncjob.Runner(
        asyncjob.stores.resolve_store(database.async_url), producer_only=True
    )
    async with producer:
        job_id = await producer.perform(worker_jobs.whoami, 2)
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncjob", "dashboard", "--store", database.async_url,
        "--port", str(port),
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert process.stderr is not None
        async with asyncio.timeout(TIMEOUT * 2):
            while b"Uvicorn running" not in (line := await process.stderr.readline()):
                assert line, "the dashboard exited before serving"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as c:
            body = (await c.get(f"/api/jobs/{job_id}")).json()
            assert body["state"] == "queued"
            assert body["name"] == "tests.worker_jobs.whoami"
            assert (await c.post(f"/api/jobs/{job_id}/cancel", headers=ACTION)).status_code in (
                404,
                405,
            )
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_the_command_refuses_a_store_that_is_not_shared() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asyncjob", "dashboard", "--store", "memory"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=False,
    )
    assert done.returncode == 2
    assert "is not a shared store" in done.stderr

"""A real ASGI application: Starlette with the runner in its lifespan, driven with httpx."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import String, create_engine, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import asyncjob

from .conftest import TIMEOUT, Database


class Base(DeclarativeBase):
    """The application's models."""


class Thumbnail(Base):
    """What the background job makes."""

    __tablename__ = "thumbnails"
    id: Mapped[int] = mapped_column(primary_key=True)
    photo: Mapped[str] = mapped_column(String(100))
    width: Mapped[int]


async def make_thumbnails(photo: str, widths: list[int], fail_at: int | None = None) -> int:
    """The job: one row per width, progress after each, all or nothing."""
    db = asyncjob.session()
    for done, width in enumerate(widths, 1):
        if width == fail_at:
            raise ValueError(f"cannot resize {photo} to {width}")
        db.add(Thumbnail(photo=photo, width=width))
        await db.flush()
        asyncjob.set_progress(done * 100 // len(widths), {"width": width})
        await asyncio.sleep(0)
    return len(widths)


async def create(request: Request) -> JSONResponse:
    """POST /thumbnails: perform the job, answer at once with its id."""
    body = await request.json()
    job_id = await asyncjob.perform(
        make_thumbnails, body["photo"], body["widths"], body.get("fail_at")
    )
    return JSONResponse({"job": job_id}, status_code=202)


async def progress(request: Request) -> JSONResponse:
    """GET /jobs/{id}: the seed's progress, and the job's state."""
    job_id = request.path_params["job_id"]
    try:
        status = await asyncjob.status(job_id)
    except asyncjob.JobNotFound:
        return JSONResponse({"error": "no such job"}, status_code=404)
    return JSONResponse(
        {
            "state": status.state,
            "progress": await asyncjob.get_progress(job_id),
            "error": status.error,
        }
    )


def make_app(database: Database) -> Starlette:
    """The application: its lifespan runs the runner with a session per job."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = create_async_engine(database.async_url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        runner = asyncjob.Runner(sessionmaker=async_sessionmaker(engine))
        app.state.runner = runner
        async with runner:
            yield
        await engine.dispose()

    return Starlette(
        routes=[
            Route("/thumbnails", create, methods=["POST"]),
            Route("/jobs/{job_id}", progress),
        ],
        lifespan=lifespan,
    )


@pytest.fixture
async def client(database: Database) -> AsyncIterator[tuple[httpx.AsyncClient, Starlette]]:
    """An httpx client on the application, its lifespan entered."""
    app = make_app(database)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://app.test"
        ) as http,
    ):
        yield http, app


def rows(database: Database) -> list[tuple[str, int]]:
    """What the database holds, read by a connection of its own."""
    engine = create_engine(database.sync_url)
    with engine.connect() as conn:
        found = [(r.photo, r.width) for r in conn.execute(select(Thumbnail).order_by("id"))]
    engine.dispose()
    return found


async def test_a_job_performed_by_a_request_commits_its_rows(
    client: tuple[httpx.AsyncClient, Starlette], database: Database
) -> None:
    """POST answers 202 at once; polling shows progress; the rows are committed."""
    http, app = client
    answer = await http.post("/thumbnails", json={"photo": "cat.jpg", "widths": [64, 128, 256]})
    assert answer.status_code == 202
    job_id = answer.json()["job"]
    first = (await http.get(f"/jobs/{job_id}")).json()
    assert first["state"] in ("queued", "running")
    assert first["progress"] is not None  # (-1, None) or a value: not ended
    assert await app.state.runner.wait(job_id, timeout=TIMEOUT) == 3
    last = (await http.get(f"/jobs/{job_id}")).json()
    assert last == {"state": "succeeded", "progress": None, "error": None}
    assert rows(database) == [("cat.jpg", 64), ("cat.jpg", 128), ("cat.jpg", 256)]


async def test_a_failing_job_leaves_no_rows(
    client: tuple[httpx.AsyncClient, Starlette], database: Database
) -> None:
    """The job's error is shown, and what it wrote is rolled back."""
    http, app = client
    answer = await http.post(
        "/thumbnails", json={"photo": "dog.jpg", "widths": [64, 128], "fail_at": 128}
    )
    job_id = answer.json()["job"]
    with pytest.raises(asyncjob.JobFailed):
        await app.state.runner.wait(job_id, timeout=TIMEOUT)
    state = (await http.get(f"/jobs/{job_id}")).json()
    assert state == {
        "state": "failed",
        "progress": None,
        "error": "ValueError: cannot resize dog.jpg to 128",
    }
    assert rows(database) == []


async def test_progress_while_the_job_runs(
    client: tuple[httpx.AsyncClient, Starlette],
) -> None:
    """A request made while the job runs sees its latest progress."""
    http, app = client
    answer = await http.post("/thumbnails", json={"photo": "owl.jpg", "widths": [1, 2, 3, 4]})
    job_id = answer.json()["job"]
    async with asyncio.timeout(TIMEOUT):
        async for status in app.state.runner.watch(job_id):
            if status.progress == 50 and status.state == "running":
                state = (await http.get(f"/jobs/{job_id}")).json()
                assert state["progress"][0] >= 50
                break
    await app.state.runner.wait(job_id, timeout=TIMEOUT)
    assert (await http.get("/jobs/nope")).status_code == 404

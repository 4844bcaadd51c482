"""Background jobs in a Starlette application (FastAPI is the same).

The runner lives in the application's lifespan, with a database session for
each job. One endpoint performs an import, one reads its progress, one
streams its every change as server-sent events.

``main()`` drives the application in-process with httpx, against an SQLite
file in a temporary directory. Run it with ``python starlette_app.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import asyncjob


class Base(DeclarativeBase):
    pass


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


# --8<-- [start:job]
async def import_contacts(names: list[str]) -> int:
    """The job: a row per name, progress after each, all or nothing."""
    db = asyncjob.session()  # committed when the job returns
    for done, name in enumerate(names, start=1):
        if not name:
            raise ValueError(f"contact {done} has no name")
        db.add(Contact(name=name))
        await db.flush()
        asyncjob.set_progress(100 * done // len(names), f"{done} of {len(names)}")
    return len(names)


# --8<-- [end:job]


# --8<-- [start:endpoints]
async def start_import(request: Request) -> JSONResponse:
    """POST /imports: perform the job and answer at once with its id."""
    body = await request.json()
    job_id = await asyncjob.perform(import_contacts, body["names"])
    return JSONResponse({"job": job_id}, status_code=202)


async def import_progress(request: Request) -> JSONResponse:
    """GET /imports/{job_id}: what a page polls."""
    job_id = request.path_params["job_id"]
    progress = await asyncjob.get_progress(job_id)
    if progress is not None:
        value, message = progress  # (-1, None) until the job reports
        return JSONResponse({"done": False, "percent": value, "message": message})
    try:
        status = await asyncjob.status(job_id)
    except asyncjob.JobNotFound:
        return JSONResponse({"error": "no such job"}, status_code=404)
    return JSONResponse({"done": True, "state": status.state, "error": status.error})


async def import_events(request: Request) -> Response:
    """GET /imports/{job_id}/events: every change, as server-sent events."""
    job_id = request.path_params["job_id"]
    try:
        await asyncjob.status(job_id)
    except asyncjob.JobNotFound:
        return JSONResponse({"error": "no such job"}, status_code=404)

    async def events() -> AsyncIterator[str]:
        async for status in asyncjob.watch(job_id):  # ends after the final state
            event = {"state": status.state, "progress": status.progress, "data": status.data}
            yield f"data: {json.dumps(event)}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


# --8<-- [end:endpoints]


async def list_contacts(request: Request) -> JSONResponse:
    """GET /contacts: what the imports wrote."""
    async with request.app.state.sessions() as db:
        names = await db.scalars(select(Contact.name).order_by(Contact.id))
        return JSONResponse(list(names))


# --8<-- [start:app]
def make_app(database_url: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = create_async_engine(database_url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)  # or your migrations
        app.state.sessions = async_sessionmaker(engine)
        async with asyncjob.Runner(sessionmaker=app.state.sessions, grace_period=30):
            yield  # the application serves requests here
        await engine.dispose()

    return Starlette(
        routes=[
            Route("/imports", start_import, methods=["POST"]),
            Route("/imports/{job_id}", import_progress),
            Route("/imports/{job_id}/events", import_events),
            Route("/contacts", list_contacts),
        ],
        lifespan=lifespan,
    )


# --8<-- [end:app]


# --8<-- [start:main]
async def import_and_follow(client: httpx.AsyncClient, names: list[str]) -> None:
    answer = await client.post("/imports", json={"names": names})
    job_id = answer.json()["job"]
    print("POST /imports:", answer.status_code)
    # The stream ends with the job's final state: reading it waits for the job.
    async with client.stream("GET", f"/imports/{job_id}/events") as stream:
        events = [json.loads(line[6:]) async for line in stream.aiter_lines() if line]
    print("last event:", events[-1])
    print("GET /imports/{job}:", (await client.get(f"/imports/{job_id}")).json())


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(f"sqlite+aiosqlite:///{Path(tmp) / 'app.db'}")
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://app.test") as client,
        ):
            await import_and_follow(client, ["Ada", "Grace", "Linus"])
            # A failing job is rolled back, and logged on the "asyncjob" logger.
            await import_and_follow(client, ["Alan", ""])
            contacts: list[Any] = (await client.get("/contacts")).json()
            print("GET /contacts:", contacts)


# --8<-- [end:main]

if __name__ == "__main__":
    asyncio.run(main())

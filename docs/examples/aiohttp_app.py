"""Background jobs in an aiohttp application.

A cleanup context runs the runner for as long as the application runs, with
a database session for each job. One handler performs a job, another reads
its progress and, once it has ended, its outcome.

``main()`` drives the application in-process with aiohttp's test client,
against an SQLite file in a temporary directory. Run it with
``python aiohttp_app.py``.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import asyncjob


class Base(DeclarativeBase):
    pass


class Invoice(Base):
    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))
    month: Mapped[int]


# --8<-- [start:job]
async def make_invoices(customer: str, months: list[int]) -> int:
    """The job: an invoice per month, progress after each."""
    db = asyncjob.session()  # committed when the job returns
    for done, month in enumerate(months, start=1):
        db.add(Invoice(customer=customer, month=month))
        await db.flush()
        asyncjob.set_progress(100 * done // len(months), f"month {month}")
    return len(months)


# --8<-- [end:job]

# --8<-- [start:app]
database_url = web.AppKey("database_url", str)
runner_key = web.AppKey("runner", asyncjob.Runner)
sessions_key = web.AppKey("sessions", async_sessionmaker[AsyncSession])


async def run_jobs(app: web.Application) -> AsyncIterator[None]:
    """Runs the runner from the application's start to its cleanup."""
    engine: AsyncEngine = create_async_engine(app[database_url])
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)  # or your migrations
    app[sessions_key] = async_sessionmaker(engine)
    async with asyncjob.Runner(sessionmaker=app[sessions_key]) as runner:
        app[runner_key] = runner
        yield  # the application serves requests here
    await engine.dispose()


async def start_invoices(request: web.Request) -> web.Response:
    """POST /invoices: perform the job and answer at once with its id."""
    body = await request.json()
    job_id = await request.app[runner_key].perform(make_invoices, body["customer"], body["months"])
    return web.json_response({"job": job_id}, status=202)


async def job_progress(request: web.Request) -> web.Response:
    """GET /jobs/{job_id}: progress while the job runs, its outcome after."""
    runner = request.app[runner_key]
    job_id = request.match_info["job_id"]
    progress = await runner.get_progress(job_id)
    if progress is not None:
        value, message = progress  # (-1, None) until the job reports
        return web.json_response({"done": False, "percent": value, "message": message})
    try:
        status = await runner.status(job_id)
    except asyncjob.JobNotFound:
        raise web.HTTPNotFound(text="no such job") from None
    return web.json_response({"done": True, "state": status.state, "result": status.result})


async def list_invoices(request: web.Request) -> web.Response:
    """GET /invoices: what the jobs wrote."""
    async with request.app[sessions_key]() as db:
        rows = await db.execute(select(Invoice.customer, Invoice.month).order_by(Invoice.id))
        return web.json_response([f"{customer} {month}" for customer, month in rows])


def make_app(url: str) -> web.Application:
    app = web.Application()
    app[database_url] = url
    app.cleanup_ctx.append(run_jobs)
    app.router.add_post("/invoices", start_invoices)
    app.router.add_get("/jobs/{job_id}", job_progress)
    app.router.add_get("/invoices", list_invoices)
    return app


# --8<-- [end:app]


# --8<-- [start:main]
async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(f"sqlite+aiosqlite:///{Path(tmp) / 'app.db'}")
        async with TestClient(TestServer(app)) as client:
            answer = await client.post("/invoices", json={"customer": "ACME", "months": [1, 2, 3]})
            job_id = (await answer.json())["job"]
            print("POST /invoices:", answer.status)

            # A test waits for the job; a browser would poll until "done".
            await app[runner_key].wait(job_id, timeout=10)
            print("GET /jobs/{job}:", await (await client.get(f"/jobs/{job_id}")).json())
            print("GET /jobs/nope:", (await client.get("/jobs/nope")).status)
            print("GET /invoices:", await (await client.get("/invoices")).json())


# --8<-- [end:main]

if __name__ == "__main__":
    asyncio.run(main())

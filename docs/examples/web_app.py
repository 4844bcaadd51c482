"""The dashboard and a live progress bar in a Starlette application.

The dashboard is mounted at ``/jobs``; a page of the application's own shows
a report's progress with the ``<asyncjob-progress>`` element, which follows
the job's live stream from the dashboard.

``main()`` performs a report and reads its stream as a browser would, over
httpx, in-process. Run it with ``python web_app.py``; to look at the pages
in a browser, serve ``make_app()`` with uvicorn (``uvicorn --factory
web_app:make_app``) and open http://127.0.0.1:8000/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route

import asyncjob
import asyncjob.web


async def make_report(year: int) -> str:
    """The job: twelve months, progress after each."""
    for month in range(1, 13):
        await asyncio.sleep(0.01)  # the work
        asyncjob.set_progress(month * 100 / 12, f"month {month} of 12")
    return f"report-{year}.pdf"


# --8<-- [start:app]
PAGE = """<!doctype html>
<script src="/jobs/static/asyncjob.js" defer></script>
<p>Your report: <asyncjob-progress job="{job}" src="/jobs"></asyncjob-progress></p>
"""


async def start_report(request: Request) -> JSONResponse:
    """POST /reports: perform the job, answer with the page that shows it."""
    job_id = await asyncjob.perform(make_report, 2026)
    return JSONResponse({"job": job_id, "page": f"/reports/{job_id}"}, status_code=202)


async def report_page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE.format(job=request.path_params["job_id"]))


def make_app() -> Starlette:
    runner = asyncjob.Runner()  # or Runner("postgresql+asyncpg://...")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with runner:
            yield

    return Starlette(
        routes=[
            Route("/reports", start_report, methods=["POST"]),
            Route("/reports/{job_id}", report_page),
            # Read-only: it shows jobs, and changes none.
            Mount("/jobs", asyncjob.web.dashboard(runner)),
        ],
        lifespan=lifespan,
    )


# --8<-- [end:app]


# --8<-- [start:main]
async def main() -> None:
    app = make_app()
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://app.test") as client,
    ):
        answer = (await client.post("/reports")).json()
        page = await client.get(answer["page"])
        print("page:", "<asyncjob-progress" in page.text)
        # What the element reads: one event per change (a few a second at
        # most), the last one with the result; then the stream ends.
        url = f"/jobs/api/jobs/{answer['job']}/events"
        async with client.stream("GET", url) as stream:
            events = [json.loads(line[5:]) async for line in stream.aiter_lines()
                      if line.startswith("data:")]  # fmt: skip
        last = events[-1]
        print("last event:", last["state"], last["progress"], last["data"], last["result"])
        status = (await client.get(f"/jobs/api/jobs/{answer['job']}")).json()
        print("GET /jobs/api/jobs/{id}:", status["state"], status["finished_at"] is not None)


# --8<-- [end:main]

if __name__ == "__main__":
    asyncio.run(main())

"""asyncjob.web in a real browser: the dashboard's page and the
``<asyncjob-progress>`` element, run by Chromium (driven by Playwright) on
pages served by uvicorn over loopback, for jobs of a real runner.

Every job here advances only when its test says so, and the test checks
what the page shows at each step with Playwright's waiting assertions
(bounded by :data:`WAIT`), never with sleeps. The browser is started once
for the module: the tests run in the module's event loop, with the server
and the runner of each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect
from playwright.async_api import Request as BrowserRequest
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

import asyncjob

from . import web_jobs
from .conftest import TIMEOUT, Database
from .web_server import app_with_dashboard, serving

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: The browser the tests drive: Debian's Chromium (Playwright cannot download
#: its own here). CI installs it; without it the tests fail, saying so.
CHROMIUM = "/usr/bin/chromium"

#: A headless browser in a container, which fetches nothing but the pages.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

#: Playwright counts in milliseconds: what it waits for, at most.
WAIT = TIMEOUT * 1000

#: Where the tests leave the screenshots the guides show, when set
#: (``nox -s screenshots`` sets it to docs/images).
SCREENSHOTS = os.environ.get("ASYNCJOB_SCREENSHOTS")


async def screenshot(page: Page, name: str, **options: Any) -> None:
    """Take the page as the test left it: kept as ``name``.png for the
    guides when :data:`SCREENSHOTS` is set; otherwise taken all the same,
    so that a page that cannot be drawn fails here and not in the docs."""
    path = None if SCREENSHOTS is None else os.path.join(SCREENSHOTS, f"{name}.png")
    taken = await page.screenshot(path=path, animations="disabled", **options)
    assert taken[:8] == b"\x89PNG\r\n\x1a\n"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the module (each test has a context of its
    own: no cookie, cache or script is shared between tests)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM}, which is missing "
            "(Debian: apt-get install chromium); they do not skip, since CI installs it"
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Tab:
    """A page in a fresh browser context, and what it asked the server."""

    page: Page
    requests: list[BrowserRequest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def asked(self, pattern: str, kind: str | None = None) -> list[str]:
        """The paths (with their queries) of the requests whose path matches
        ``pattern`` entirely, of the resource type ``kind`` if given
        (``"eventsource"`` for a stream, ``"fetch"`` for ``fetch()``)."""
        found = []
        for request in self.requests:
            path = request.url.split("://", 1)[1].partition("/")[2]
            if re.fullmatch(pattern, "/" + path.partition("?")[0]) and (
                kind is None or request.resource_type == kind
            ):
                found.append("/" + path)
        return found


@contextlib.asynccontextmanager
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    """A page of its own, closed when the block ends (before the server it
    reads stops: open it inside ``serving``). An uncaught error in the
    page's scripts fails the test."""
    context = await browser.new_context()
    context.set_default_timeout(WAIT)
    try:
        page = await context.new_page()
        opened = Tab(page)
        page.on("request", lambda request: opened.requests.append(request))
        page.on("pageerror", lambda error: opened.errors.append(str(error)))
        yield opened
        assert opened.errors == [], "the page's scripts failed"
    finally:
        await context.close()


# -- jobs that do what the test says ---------------------------------------------------------


@dataclass(frozen=True)
class Order:
    """What a :func:`puppet` job does next: report ``progress`` (with
    ``data``), fail with ``error``, or return ``result``."""

    progress: float | None = None
    data: Any = None
    error: str | None = None
    result: Any = None


class Puppet:
    """The test's side of a :func:`puppet` job: each call lets it take one step."""

    def __init__(self) -> None:
        self.orders: asyncio.Queue[Order] = asyncio.Queue()

    def report(self, progress: float, data: Any = None) -> None:
        self.orders.put_nowait(Order(progress=progress, data=data))

    def fail(self, error: str) -> None:
        self.orders.put_nowait(Order(error=error))

    def finish(self, result: Any) -> None:
        self.orders.put_nowait(Order(result=result))


async def puppet(orders: asyncio.Queue[Order]) -> Any:
    """A job that does what the test tells it, one order at a time (on the
    memory store, its argument is the test's own queue)."""
    while True:
        async with asyncio.timeout(TIMEOUT):
            order = await orders.get()
        if order.error is not None:
            raise ValueError(order.error)
        if order.progress is None:
            return order.result
        asyncjob.set_progress(order.progress, order.data)


async def perform_puppet(runner: asyncjob.Runner) -> tuple[str, Puppet]:
    """Perform a :func:`puppet` job, and wait until it runs."""
    control = Puppet()
    job_id = await runner.perform(puppet, control.orders)
    await until(runner, job_id, lambda s: s.state is asyncjob.JobState.running)
    return job_id, control


async def until(
    runner: asyncjob.Runner, job_id: str, check: Callable[[asyncjob.JobStatus], bool]
) -> asyncjob.JobStatus:
    """The job's first status (now or later) that passes ``check``."""
    async with asyncio.timeout(TIMEOUT):
        async for status in runner.watch(job_id):
            if check(status):
                return status
    raise AssertionError(f"job {job_id} ended before passing the check")


async def quick(n: int) -> int:
    return n


async def broken(n: int) -> None:
    raise ValueError(f"broken {n}")


# -- the dashboard's list ---------------------------------------------------------------------


async def column(page: Page, title: str) -> int:
    """Where the list's column ``title`` is, counting from 0 (found by its
    heading: the columns before it vary, a checkbox when actions are allowed)."""
    titles = await page.locator("table:has(> tbody#jobs) > thead th").all_inner_texts()
    return [t.strip() for t in titles].index(title)


async def row_ids(page: Page) -> list[str]:
    """The ids of the list's rows, top to bottom."""
    found: list[str] = await page.locator("tbody#jobs tr").evaluate_all(
        "rows => rows.map((row) => row.dataset.id)"
    )
    return found


async def test_the_list_shows_jobs_and_follows_live_ones_on_one_stream(browser: Browser) -> None:
    """The list shows each job's id, name and state; the rows of the jobs
    still running follow their progress and end live, all on one stream:
    a browser keeps six connections per host, and a page of fifty bars
    must not take them all (nor open one per row)."""
    runner = asyncjob.Runner()
    async with serving(app_with_dashboard(runner)) as (url, _):
        done = await runner.perform(quick, 1)
        await runner.wait(done, timeout=TIMEOUT)
        failed = await runner.perform(broken, 2)
        with pytest.raises(asyncjob.JobFailed):
            await runner.wait(failed, timeout=TIMEOUT)
        first, first_control = await perform_puppet(runner)
        second, second_control = await perform_puppet(runner)

        async with tab(browser) as opened:
            page = opened.page
            await page.goto(f"{url}/jobs/")
            rows = page.locator("tbody#jobs tr")
            await expect(rows).to_have_count(4, timeout=WAIT)
            # Newest first, each with its id (a link to its page), name and state.
            expected = [
                (second, "running", "puppet"),
                (first, "running", "puppet"),
                (failed, "failed", "broken"),
                (done, "succeeded", "quick"),
            ]
            name = await column(page, "name")
            for n, (job_id, state, function) in enumerate(expected):
                row = rows.nth(n)
                await expect(row).to_have_attribute("data-id", job_id, timeout=WAIT)
                await expect(row).to_have_attribute("data-state", state, timeout=WAIT)
                await expect(row.locator(".state")).to_have_text(state, timeout=WAIT)
                await expect(row.locator("td").nth(name)).to_have_text(
                    f"{__name__}.{function}", timeout=WAIT
                )
                await expect(row.get_by_role("link", name=job_id)).to_have_attribute(
                    "href", f"#{job_id}", timeout=WAIT
                )
            await expect(rows.nth(3).locator("progress")).to_have_js_property(
                "value", 100, timeout=WAIT
            )

            row_of = {
                job_id: page.locator(f'tbody#jobs tr[data-id="{job_id}"]')
                for job_id in (first, second)
            }
            first_control.report(30)
            await expect(row_of[first].locator("progress")).to_have_js_property(
                "value", 30, timeout=WAIT
            )
            second_control.report(60)
            await expect(row_of[second].locator("progress")).to_have_js_property(
                "value", 60, timeout=WAIT
            )
            await expect(row_of[first].locator("progress")).to_have_js_property(
                "value", 30, timeout=WAIT
            )
            await screenshot(page, "dashboard", full_page=True)
            second_control.finish("ok")
            await expect(row_of[second]).to_have_attribute("data-state", "succeeded", timeout=WAIT)
            await expect(row_of[second].locator(".state")).to_have_text("succeeded", timeout=WAIT)
            await expect(row_of[second].locator("progress")).to_have_js_property(
                "value", 100, timeout=WAIT
            )
            first_control.fail("no luck")
            await expect(row_of[first]).to_have_attribute("data-state", "failed", timeout=WAIT)
            await expect(row_of[first].locator(".state")).to_have_text("failed", timeout=WAIT)

            # One stream for both live rows, none for the rows that had ended.
            assert opened.asked(r"/jobs/api/events", "eventsource") == [
                f"/jobs/api/events?id={second}&id={first}"
            ]
            assert opened.asked(r"/jobs/api/jobs/.*/events") == []


# -- a job's page --------------------------------------------------------------------------------


async def test_the_job_page_follows_the_job_to_its_result(browser: Browser) -> None:
    """``/jobs/#ID`` shows the job: its bar advances with each
    ``set_progress``, the label says the percentage and the data reported,
    and at the end the fields say ``succeeded`` and give the result."""
    runner = asyncjob.Runner()
    async with serving(app_with_dashboard(runner)) as (url, _):
        job_id, control = await perform_puppet(runner)
        async with tab(browser) as opened:
            page = opened.page
            await page.goto(f"{url}/jobs/#{job_id}")
            element = page.locator("#job asyncjob-progress#job-progress")
            bar = element.locator("progress")
            label = element.locator(".asyncjob-label")
            fields = page.locator("#job dl#job-fields")
            await expect(page.locator("#job")).to_be_visible(timeout=WAIT)
            await expect(page.locator("#job h2")).to_have_text(f"{__name__}.puppet", timeout=WAIT)
            await expect(element).to_have_attribute("state", "running", timeout=WAIT)
            await expect(label).to_have_text("running", timeout=WAIT)
            await expect(fields.locator('dd[data-field="id"]')).to_have_text(job_id, timeout=WAIT)
            await expect(fields.locator('dd[data-field="state"]')).to_have_text(
                "running", timeout=WAIT
            )

            for progress, data, shown in [
                (10, "resizing", "running 10% · resizing"),
                (
                    45,
                    {"photo": "cat.jpg", "width": 128},
                    'running 45% · {"photo":"cat.jpg","width":128}',
                ),
                (90, None, "running 90%"),
            ]:
                control.report(progress, data)
                await expect(bar).to_have_js_property("value", progress, timeout=WAIT)
                await expect(label).to_have_text(shown, timeout=WAIT)
                if progress == 45:
                    # Nothing but the job: no stray text where an action is not offered.
                    await expect(page.locator("#job")).not_to_contain_text("null")
                    await screenshot(page, "dashboard-job")

            control.finish({"thumbnails": 3})
            await expect(element).to_have_attribute("state", "succeeded", timeout=WAIT)
            await expect(bar).to_have_js_property("value", 100, timeout=WAIT)
            await expect(label).to_have_text('succeeded · {"thumbnails":3}', timeout=WAIT)
            await expect(fields.locator('dd[data-field="state"]')).to_have_text(
                "succeeded", timeout=WAIT
            )
            await expect(fields.locator('dd[data-field="result"]')).to_have_text(
                '{"thumbnails":3}', timeout=WAIT
            )
            await expect(fields.locator('dd[data-field="finished"]')).not_to_be_empty(timeout=WAIT)
            assert await runner.wait(job_id, timeout=TIMEOUT) == {"thumbnails": 3}


async def test_the_job_page_shows_a_failure_and_its_traceback(browser: Browser) -> None:
    """A job that fails ends its page ``failed``, with its error in the
    label and the fields, and the traceback to debug it; the page follows a
    job picked by changing the URL's hash, without reloading."""
    runner = asyncjob.Runner()
    async with serving(app_with_dashboard(runner)) as (url, _):
        other = await runner.perform(quick, 1)
        await runner.wait(other, timeout=TIMEOUT)
        job_id, control = await perform_puppet(runner)
        async with tab(browser) as opened:
            page = opened.page
            await page.goto(f"{url}/jobs/#{other}")
            element = page.locator("#job-progress")
            await expect(element).to_have_attribute("state", "succeeded", timeout=WAIT)
            await page.goto(f"{url}/jobs/#{job_id}")  # the same document: a hashchange
            await expect(element).to_have_attribute("job", job_id, timeout=WAIT)
            await expect(element).to_have_attribute("state", "running", timeout=WAIT)
            control.report(20, "step 1")
            await expect(element.locator(".asyncjob-label")).to_have_text(
                "running 20% · step 1", timeout=WAIT
            )
            control.fail("the disk is full")
            fields = page.locator("#job-fields")
            await expect(element).to_have_attribute("state", "failed", timeout=WAIT)
            await expect(element.locator(".asyncjob-label")).to_have_text(
                "failed · step 1 · ValueError: the disk is full", timeout=WAIT
            )
            await expect(element.locator("progress")).to_have_js_property("value", 20, timeout=WAIT)
            await expect(fields.locator('dd[data-field="state"]')).to_have_text(
                "failed", timeout=WAIT
            )
            await expect(fields.locator('dd[data-field="error"]')).to_have_text(
                "ValueError: the disk is full", timeout=WAIT
            )
            await expect(fields.locator('dd[data-field="result"]')).to_have_count(0, timeout=WAIT)
            traceback = fields.locator("dd pre")
            await expect(traceback).to_contain_text(
                "Traceback (most recent call last)", timeout=WAIT
            )
            await expect(traceback).to_contain_text(", in puppet\n", timeout=WAIT)
            await expect(traceback).to_contain_text("ValueError: the disk is full", timeout=WAIT)
            await screenshot(page, "dashboard-failed-job")
            assert opened.asked(r"/jobs/", "document") == ["/jobs/"]  # loaded once
            with pytest.raises(asyncjob.JobFailed):
                await runner.wait(job_id, timeout=TIMEOUT)


# -- the element on the application's own page ---------------------------------------------------

#: A page of the application's own, showing a job with the element; its
#: script keeps what the element tells it (the events bubble to the document).
APP_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Your export</title>
<script>
  window.changes = [];
  window.ends = [];
  window.ended = new Promise((resolve) => {
    document.addEventListener("asyncjob-end", (event) => {
      window.ends.push(event.detail.state);
      document.body.dataset.ended = event.detail.state;
      resolve(event.detail);
    });
  });
  document.addEventListener("asyncjob-change", (event) => {
    window.changes.push([event.target.id, event.detail.state, event.detail.progress]);
  });
</script>
</head>
<body>
<h1>Your export</h1>
<script src="/jobs/static/asyncjob.js"{defer}></script>
<asyncjob-progress id="export" job="{job}" src="/jobs"{attributes}></asyncjob-progress>
</body>
</html>
"""


async def app_page(request: Request) -> HTMLResponse:
    """``/export/{job_id}``, the page an application shows while a job runs;
    ``?poll=`` gives the element its ``poll`` attribute, ``?defer`` loads
    the script as docs/web.md shows it (deferred: the element is upgraded
    once the page is parsed, instead of being made by the parser)."""
    poll = request.query_params.get("poll")
    return HTMLResponse(
        APP_PAGE.replace("{job}", html.escape(request.path_params["job_id"]))
        .replace("{attributes}", "" if poll is None else f' poll="{html.escape(poll)}"')
        .replace("{defer}", " defer" if "defer" in request.query_params else "")
    )


APP_ROUTES: list[BaseRoute] = [Route("/export/{job_id}", app_page)]


async def ended(page: Page) -> dict[str, Any]:
    """The detail of the page's first ``asyncjob-end`` event, once it came."""
    async with asyncio.timeout(TIMEOUT):
        detail: dict[str, Any] = await page.evaluate("window.ended")
    return detail


async def follow_to_the_end(
    page: Page, runner: asyncjob.Runner, job_id: str, control: Puppet
) -> None:
    """The element on ``page`` shows each step of the job, then its end,
    and tells the page, once."""
    element = page.locator("asyncjob-progress#export")
    bar = element.locator("progress")
    label = element.locator(".asyncjob-label")
    await expect(element).to_have_attribute("state", "running", timeout=WAIT)
    await expect(element).to_have_attribute("role", "status", timeout=WAIT)
    control.report(25, "page 1 of 4")
    await expect(bar).to_have_js_property("value", 25, timeout=WAIT)
    await expect(label).to_have_text("running 25% · page 1 of 4", timeout=WAIT)
    control.report(75, "page 3 of 4")
    await expect(bar).to_have_js_property("value", 75, timeout=WAIT)
    await expect(label).to_have_text("running 75% · page 3 of 4", timeout=WAIT)
    await screenshot(page, "progress-element", clip={"x": 0, "y": 0, "width": 640, "height": 160})
    control.finish("export.csv")
    detail = await ended(page)
    assert detail["id"] == job_id
    assert detail["state"] == "succeeded"
    assert detail["result"] == "export.csv"
    await expect(element).to_have_attribute("state", "succeeded", timeout=WAIT)
    await expect(page.locator("body")).to_have_attribute("data-ended", "succeeded", timeout=WAIT)
    await expect(bar).to_have_js_property("value", 100, timeout=WAIT)
    await expect(label).to_have_text("succeeded · page 3 of 4 · export.csv", timeout=WAIT)
    changes = await page.evaluate("window.changes")
    assert changes[0] == ["export", "running", None]
    assert ["export", "running", 25] in changes
    assert ["export", "running", 75] in changes
    assert changes[-1] == ["export", "succeeded", 75]
    assert await page.evaluate("window.ends") == ["succeeded"]
    assert await runner.wait(job_id, timeout=TIMEOUT) == "export.csv"


@pytest.mark.parametrize("query", ["", "?defer"], ids=["script-first", "deferred-script"])
async def test_the_element_on_the_applications_page_follows_its_stream(
    browser: Browser, query: str
) -> None:
    """The drop-in element, on a page of the application's own with only
    the script and the tag (before it, or deferred as the docs show it): it
    follows the job's stream live, and tells the page with bubbling events,
    ``asyncjob-end`` once at the end."""
    runner = asyncjob.Runner()
    async with serving(app_with_dashboard(runner, routes=APP_ROUTES)) as (url, _):
        job_id, control = await perform_puppet(runner)
        async with tab(browser) as opened:
            await opened.page.goto(f"{url}/export/{job_id}{query}")
            await follow_to_the_end(opened.page, runner, job_id, control)
            assert opened.asked(r"/jobs/api/jobs/.*", "eventsource") == [
                f"/jobs/api/jobs/{job_id}/events"
            ]
            assert opened.asked(r"/jobs/api/jobs/.*", "fetch") == []  # no polling


async def test_the_element_polls_when_told_to(browser: Browser) -> None:
    """With ``poll="0.2"`` the element reads the job's JSON every 0.2 s (for
    where a stream cannot be had: a proxy that buffers), and reaches the end
    the same way."""
    runner = asyncjob.Runner()
    async with serving(app_with_dashboard(runner, routes=APP_ROUTES)) as (url, _):
        job_id, control = await perform_puppet(runner)
        async with tab(browser) as opened:
            await opened.page.goto(f"{url}/export/{job_id}?poll=0.2")
            await follow_to_the_end(opened.page, runner, job_id, control)
            assert opened.asked(r"/jobs/api/.*", "eventsource") == []
            assert len(opened.asked(f"/jobs/api/jobs/{job_id}", "fetch")) >= 3


async def test_the_element_polls_in_a_browser_without_event_source(browser: Browser) -> None:
    """A browser without ``EventSource`` gets the same element by polling
    (once a second, by default)."""
    runner = asyncjob.Runner()
    async with serving(app_with_dashboard(runner, routes=APP_ROUTES)) as (url, _):
        job_id, control = await perform_puppet(runner)
        async with tab(browser) as opened:
            await opened.page.add_init_script("delete window.EventSource")
            await opened.page.goto(f"{url}/export/{job_id}")
            assert await opened.page.evaluate("typeof window.EventSource") == "undefined"
            await follow_to_the_end(opened.page, runner, job_id, control)
            assert opened.asked(r"/jobs/api/.*", "eventsource") == []
            assert len(opened.asked(f"/jobs/api/jobs/{job_id}", "fetch")) >= 3


async def test_the_element_says_so_of_an_unknown_job(browser: Browser) -> None:
    """For a job the store does not know (a stale link, a purged job), the
    stream is refused before it ever worked: the element falls back to
    polling, which gets a 404 too, and says so, once, instead of showing a
    busy bar for ever."""
    runner = asyncjob.Runner()
    async with (
        serving(app_with_dashboard(runner, routes=APP_ROUTES)) as (url, _),
        tab(browser) as opened,
    ):
        await opened.page.goto(f"{url}/export/nope")
        element = opened.page.locator("asyncjob-progress#export")
        await expect(element).to_have_attribute("state", "unknown", timeout=WAIT)
        await expect(element.locator(".asyncjob-label")).to_have_text("no such job", timeout=WAIT)
        assert opened.asked(r"/jobs/api/.*", "eventsource") == ["/jobs/api/jobs/nope/events"]
        assert opened.asked(r"/jobs/api/.*", "fetch") == ["/jobs/api/jobs/nope"]


# -- filters and pages --------------------------------------------------------------------------


async def test_jobs_performed_later_appear_on_top_without_a_reload(browser: Browser) -> None:
    """The overview's stream says jobs changed: the page reads the newest
    jobs then, and puts those it lacks on top (an empty list included),
    following the live ones."""
    runner = asyncjob.Runner()
    async with serving(app_with_dashboard(runner)) as (url, _), tab(browser) as opened:
        page = opened.page
        await page.goto(f"{url}/jobs/")
        rows = page.locator("tbody#jobs tr")
        await expect(page.locator("#oldest")).not_to_be_empty(timeout=WAIT)
        first = await runner.perform(quick, 1)
        await expect(rows).to_have_count(1, timeout=WAIT)
        await expect(rows.nth(0)).to_have_attribute("data-id", first, timeout=WAIT)
        second, control = await perform_puppet(runner)
        await expect(rows).to_have_count(2, timeout=WAIT)
        await expect(rows.nth(0)).to_have_attribute("data-id", second, timeout=WAIT)
        control.report(40)
        await expect(rows.nth(0).locator("progress")).to_have_js_property("value", 40, timeout=WAIT)
        control.finish("done")
        await expect(rows.nth(0)).to_have_attribute("data-state", "succeeded", timeout=WAIT)
        assert opened.asked(r"/jobs/", "document") == ["/jobs/"]  # never reloaded


#: The jobs of a page of the list: the page asks for the server's default.
PAGE = 50

#: The pages of jobs performed since its last reading that the list reads at
#: most (``NEWER_PAGES`` in asyncjob.js) before it reads itself again.
NEWER_PAGES = 10


async def open_the_list(page: Page, url: str, runner: asyncjob.Runner) -> str:
    """Open the dashboard's list on ``page``, showing one job that ended,
    and wait until the page reads the overview's stream: what is performed
    next is news to it. Returns the job's id."""
    shown = await runner.perform(quick, -1)
    await runner.wait(shown, timeout=TIMEOUT)
    await page.goto(f"{url}/jobs/")
    await expect(page.locator("tbody#jobs tr")).to_have_count(1, timeout=WAIT)
    await expect(page.locator("#oldest")).not_to_be_empty(timeout=WAIT)
    return shown


async def test_more_than_a_page_performed_at_once_all_appear_on_top(browser: Browser) -> None:
    """More jobs than a page holds, performed at once (one write) while the
    page is open: the page reads the newest page, then older ones (with
    ``before``, as "Older jobs" does) until it meets the row it showed on
    top, and puts every job on top, each once, newest first; nothing is
    left to "Older jobs"."""
    runner = asyncjob.Runner()
    async with serving(app_with_dashboard(runner)) as (url, _), tab(browser) as opened:
        page = opened.page
        shown = await open_the_list(page, url, runner)
        rows = page.locator("tbody#jobs tr")
        later = await runner.perform_many(quick, [(n,) for n in range(2 * PAGE + 20)])
        newest_first = [status.id for status in await runner.jobs(limit=1000)]
        assert sorted(newest_first) == sorted([shown, *later])

        await expect(rows).to_have_count(len(newest_first), timeout=WAIT)
        assert await row_ids(page) == newest_first
        await expect(page.locator("button#more")).to_be_hidden(timeout=WAIT)
        # Read page by page from the newest, as "Older jobs" reads: with `before`.
        assert any("before=" in asked for asked in opened.asked(r"/jobs/api/jobs", "fetch"))
        assert opened.asked(r"/jobs/", "document") == ["/jobs/"]  # never reloaded
        for job_id in later:
            assert await runner.wait(job_id, timeout=TIMEOUT) is not None


async def test_past_its_bound_the_list_is_read_again_from_the_top(browser: Browser) -> None:
    """More jobs performed at once than the page reads pages for
    (:data:`NEWER_PAGES`): it reads the list again from the top, as at
    first, the newest page shown and "Older jobs" offered for the rest,
    which it then reads to the last job, each once."""
    runner = asyncjob.Runner()
    async with serving(app_with_dashboard(runner)) as (url, _), tab(browser) as opened:
        page = opened.page
        shown = await open_the_list(page, url, runner)
        rows = page.locator("tbody#jobs tr")
        more = page.locator("button#more")
        later = await runner.perform_many(quick, [(n,) for n in range(NEWER_PAGES * PAGE + 20)])
        newest_first = [status.id for status in await runner.jobs(limit=1000)]
        assert sorted(newest_first) == sorted([shown, *later])

        await expect(rows.nth(0)).to_have_attribute("data-id", newest_first[0], timeout=WAIT)
        await expect(rows).to_have_count(PAGE, timeout=WAIT)
        await expect(more).to_be_visible(timeout=WAIT)
        assert await row_ids(page) == newest_first[:PAGE]
        for count in range(2 * PAGE, len(newest_first) + PAGE, PAGE):
            await more.click()
            await expect(rows).to_have_count(min(count, len(newest_first)), timeout=WAIT)
        await expect(more).to_be_hidden(timeout=WAIT)
        assert await row_ids(page) == newest_first
        assert opened.asked(r"/jobs/", "document") == ["/jobs/"]  # the list only, read again
        for job_id in later:
            assert await runner.wait(job_id, timeout=TIMEOUT) is not None


async def test_filters_and_older_jobs(browser: Browser) -> None:
    """The filter form lists only the jobs asked for (here, the failed
    ones); "Older jobs" appends the next page (the page asks for the
    server's default of 50 jobs a page) until there is none left, newest
    first, each job once."""
    runner = asyncjob.Runner()
    async with serving(app_with_dashboard(runner)) as (url, _):
        ids = await runner.perform_many(quick, [(n,) for n in range(60)])
        failing = [await runner.perform(broken, n) for n in range(2)]
        for job_id in ids:
            await runner.wait(job_id, timeout=TIMEOUT)
        for job_id in failing:
            with pytest.raises(asyncjob.JobFailed):
                await runner.wait(job_id, timeout=TIMEOUT)
        newest_first = [status.id for status in await runner.jobs(limit=100)]
        assert sorted(newest_first) == sorted([*ids, *failing])

        async with tab(browser) as opened:
            page = opened.page
            await page.goto(f"{url}/jobs/")
            rows = page.locator("tbody#jobs tr")
            more = page.locator("button#more")
            await expect(rows).to_have_count(50, timeout=WAIT)
            await expect(more).to_be_visible(timeout=WAIT)
            assert await row_ids(page) == newest_first[:50]
            await more.click()
            await expect(rows).to_have_count(62, timeout=WAIT)
            await expect(more).to_be_hidden(timeout=WAIT)
            assert await row_ids(page) == newest_first

            filters = page.locator("form#filters")
            await filters.locator('select[name="state"]').select_option("failed")
            await filters.get_by_role("button", name="Filter").click()
            await expect(rows).to_have_count(2, timeout=WAIT)
            await expect(page.locator('tbody#jobs tr:not([data-state="failed"])')).to_have_count(
                0, timeout=WAIT
            )
            await expect(more).to_be_hidden(timeout=WAIT)
            assert await row_ids(page) == failing[::-1]
            assert opened.asked(r"/jobs/api/jobs", "fetch")[-1] == "/jobs/api/jobs?state=failed"

            await filters.locator('select[name="state"]').select_option("")
            await filters.locator('input[name="name"]').fill(f"{__name__}.quick")
            await filters.get_by_role("button", name="Filter").click()
            await expect(page.locator('tbody#jobs tr[data-state="failed"]')).to_have_count(
                0, timeout=WAIT
            )
            await expect(rows).to_have_count(50, timeout=WAIT)
            await more.click()
            await expect(rows).to_have_count(60, timeout=WAIT)
            assert await row_ids(page) == [i for i in newest_first if i in set(ids)]
            await expect(page.locator("p#list-error")).to_be_empty(timeout=WAIT)


async def test_older_jobs_come_after_a_job_deleted_meanwhile(
    browser: Browser, database: Database
) -> None:
    """The list's last job deleted before "Older jobs" is clicked: the next
    page starts where that job stood (the page keeps its time with its id),
    with no error and no job left out."""
    runner = asyncjob.Runner(database.async_url)
    async with serving(app_with_dashboard(runner)) as (url, _):
        ids = await runner.perform_many(quick, [(n,) for n in range(60)])
        for job_id in ids:
            await runner.wait(job_id, timeout=TIMEOUT)
        newest_first = [status.id for status in await runner.jobs(limit=100)]
        async with tab(browser) as opened:
            page = opened.page
            await page.goto(f"{url}/jobs/")
            rows = page.locator("tbody#jobs tr")
            await expect(rows).to_have_count(50, timeout=WAIT)
            assert await runner.delete([newest_first[49]]) == 1
            await page.locator("button#more").click()
            await expect(rows).to_have_count(60, timeout=WAIT)
            assert await row_ids(page) == newest_first  # the deleted job's row as it was
            await expect(page.locator("p#list-error")).to_be_empty(timeout=WAIT)
            await expect(page.locator("button#more")).to_be_hidden(timeout=WAIT)


# -- actions ------------------------------------------------------------------------------------

#: A cancel request sent from the page, as its own script sends one (same
#: origin, with the action header): only a missing route can refuse it.
CANCEL_FROM_PAGE = """async (url) => {
  const response = await fetch(url, {
    method: "POST",
    headers: { "X-Asyncjob-Action": "cancel", Accept: "application/json" },
  });
  return response.status;
}"""


async def test_a_read_only_dashboard_offers_and_serves_no_cancel(browser: Browser) -> None:
    """Read-only (the default), the job's page has no Cancel button, and a
    cancel request sent from the page itself, with the header the page's
    own script would send, finds no route: nothing changes the job."""
    runner = asyncjob.Runner()
    async with serving(app_with_dashboard(runner)) as (url, _):
        job_id, control = await perform_puppet(runner)
        async with tab(browser) as opened:
            page = opened.page
            await page.goto(f"{url}/jobs/#{job_id}")
            await expect(page.locator("#job-progress")).to_have_attribute(
                "state", "running", timeout=WAIT
            )
            await expect(page.locator('#job-fields dd[data-field="state"]')).to_have_text(
                "running", timeout=WAIT
            )
            await expect(page.locator("main#asyncjob-dashboard")).to_have_attribute(
                "data-actions", "false", timeout=WAIT
            )
            await expect(page.locator("#cancel")).to_have_count(0, timeout=WAIT)
            await expect(page.get_by_role("button", name="Cancel")).to_have_count(0, timeout=WAIT)
            async with asyncio.timeout(TIMEOUT):
                answer = await page.evaluate(CANCEL_FROM_PAGE, f"/jobs/api/jobs/{job_id}/cancel")
            assert answer in (404, 405)
            status = await runner.status(job_id)
            assert status.state is asyncjob.JobState.running
            assert not status.cancel_requested
            control.finish(None)
            await expect(page.locator("#job-progress")).to_have_attribute(
                "state", "succeeded", timeout=WAIT
            )
        assert await runner.wait(job_id, timeout=TIMEOUT) is None


async def test_cancel_from_the_job_page_when_allowed(browser: Browser) -> None:
    """With ``read_only=False`` the page of a running job has a Cancel
    button; clicking it stops the job, and the page shows it ``cancelled``
    (its fields, its bar, and its row in the list), the button gone."""
    runner = asyncjob.Runner()
    async with serving(app_with_dashboard(runner, read_only=False)) as (url, _):
        job_id, control = await perform_puppet(runner)
        async with tab(browser) as opened:
            page = opened.page
            await page.goto(f"{url}/jobs/#{job_id}")
            element = page.locator("#job-progress")
            cancel = page.locator("button#cancel")
            control.report(40, "halfway there")
            await expect(element.locator(".asyncjob-label")).to_have_text(
                "running 40% · halfway there", timeout=WAIT
            )
            await expect(cancel).to_be_visible(timeout=WAIT)
            await cancel.click()
            await expect(element).to_have_attribute("state", "cancelled", timeout=WAIT)
            await expect(element.locator(".asyncjob-label")).to_have_text(
                "cancelled · halfway there", timeout=WAIT
            )
            await expect(page.locator('#job-fields dd[data-field="state"]')).to_have_text(
                "cancelled", timeout=WAIT
            )
            await expect(page.locator("#action-result")).to_have_text(
                re.compile(r"^cancel: (running|cancelled)$"), timeout=WAIT
            )
            await expect(cancel).to_be_hidden(timeout=WAIT)
            row = page.locator(f'tbody#jobs tr[data-id="{job_id}"]')
            await expect(row).to_have_attribute("data-state", "cancelled", timeout=WAIT)
            await expect(row.locator(".state")).to_have_text("cancelled", timeout=WAIT)
        with pytest.raises(asyncjob.JobCancelled):
            await runner.wait(job_id, timeout=TIMEOUT)


# -- an SQL store --------------------------------------------------------------------------------


@pytest.fixture
def steps_key() -> Iterator[str]:
    """A key for :func:`web_jobs.advance`, its steps forgotten after the test."""
    key = uuid.uuid4().hex
    yield key
    web_jobs.STEPS.pop(key, None)


async def test_the_job_page_follows_a_registered_job_on_an_sql_store(
    browser: Browser, database: Database, steps_key: str
) -> None:
    """On an SQL store, a registered job run by the application's runner
    (its worker) is followed live on its page: the store tells the stream of
    each progress it writes, and the element keeps to its stream."""
    steps = web_jobs.steps(steps_key)
    runner = asyncjob.Runner(database.async_url)
    async with serving(app_with_dashboard(runner)) as (url, _):
        job_id = await runner.perform(web_jobs.advance, steps_key, 4)
        await until(runner, job_id, lambda s: s.state is asyncjob.JobState.running)
        async with tab(browser) as opened:
            page = opened.page
            await page.goto(f"{url}/jobs/#{job_id}")
            element = page.locator("#job-progress")
            bar = element.locator("progress")
            label = element.locator(".asyncjob-label")
            await expect(page.locator("#job h2")).to_have_text(
                "tests.web_jobs.advance", timeout=WAIT
            )
            await expect(element).to_have_attribute("state", "running", timeout=WAIT)
            await expect(page.locator('#job-fields dd[data-field="arguments"]')).to_have_text(
                f'"{steps_key}", 4', timeout=WAIT
            )
            for done in range(1, 4):
                steps.put_nowait(None)
                await expect(bar).to_have_js_property("value", done * 25, timeout=WAIT)
                await expect(label).to_have_text(
                    f"running {done * 25}% · {done} of 4", timeout=WAIT
                )
            steps.put_nowait(None)
            await expect(element).to_have_attribute("state", "succeeded", timeout=WAIT)
            await expect(label).to_have_text("succeeded · 4 of 4 · 4 done", timeout=WAIT)
            await expect(page.locator('#job-fields dd[data-field="result"]')).to_have_text(
                "4 done", timeout=WAIT
            )
            assert opened.asked(r"/jobs/api/jobs/.*", "eventsource") == [
                f"/jobs/api/jobs/{job_id}/events"
            ]
            # One read by the page to draw the job; the element itself never polled.
            assert opened.asked(f"/jobs/api/jobs/{job_id}", "fetch") == [f"/jobs/api/jobs/{job_id}"]
        assert await runner.wait(job_id, timeout=TIMEOUT) == "4 done"

"""The dashboard: an ASGI application (Starlette) that shows a runner's jobs,
their live progress, and its periodic jobs; and, when allowed, acts on them.

Routes, under wherever it is mounted:

- ``GET /``: the page (HTML, with the script and styles it needs, served
  from the package: no build step, no CDN).
- ``GET /static/asyncjob.js``: the page's script, which also defines the
  ``<asyncjob-progress>`` element that other pages can use.
- ``GET /api/jobs``: a page of jobs, newest first, filtered (``state``,
  repeated for several; ``name``; ``queue``; ``since`` and ``until``, ISO
  8601 times; ``limit``; ``before`` and ``before_at``, the previous page's
  ``next`` and ``next_at``); ``{"jobs": [...], "next": id | null,
  "next_at": time | null}``. A filtered page may be short (or empty) with
  ``next`` set: the store looks at so many jobs a page
  (:meth:`Runner.jobs_page`). With ``before_at``, the next page is found
  even if the job ``before`` names was deleted meanwhile.
- ``GET /api/jobs/{id}``: the job's status; 404 for an unknown id.
- ``GET /api/jobs/{id}/events``: its live stream (``text/event-stream``).
- ``GET /api/events?id=A&id=B``: one stream for many jobs (a browser keeps
  six connections per host at most over HTTP/1.1).
- ``GET /api/schedules``: the periodic jobs, their last and next ticks, and
  the last tick's job (``{"id", "state"}``, or ``null`` if there is none).
- ``GET /api/overview``: jobs waiting, delayed and running by queue, the
  oldest due, what ended over the last hour by minute.
- ``GET /api/overview/events``: the overview and the workers, as a stream:
  read again when the store says jobs changed (at most once a second, at
  least every 15), by one reader however many browsers follow.
- ``GET /api/workers``: the workers, as their heartbeats tell.
- ``GET /metrics``: the store's figures and the runner's
  :class:`~asyncjob.metrics.JobMetrics`, in Prometheus' text format
  (see :mod:`asyncjob.metrics`).
- ``POST /api/jobs/{id}/{action}`` (``cancel``, ``retry``, ``delete``) and
  ``POST /api/actions`` (``{"action": ..., "ids": [...]}``, up to
  :data:`MAX_BULK` jobs): only when actions are allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from asyncjob._core.errors import BadRecord, JobNotFound, RunnerNotRunning
from asyncjob._core.log import logger
from asyncjob._core.views import (
    dumps,
    overview_json,
    page_json,
    schedule_json,
    status_json,
    worker_json,
)
from asyncjob._runner.runner import Runner
from asyncjob._worker.scheduler import tick_job_id

from ._overview import Overviews
from ._stream import Feeds, job_events

__all__ = ("Authorize", "dashboard")

#: Decides whether a request may take an action (``"cancel"``, ``"retry"``,
#: ``"delete"``) on a job:
#: ``authorize(request, action, job_id)``, True to allow. It may be a
#: coroutine function. What it needs to know of the user, it reads from the
#: request (a session, ``request.user`` under Starlette's authentication).
Authorize = Callable[[Request, str, str], "bool | Awaitable[bool]"]

#: Jobs one stream may follow.
MAX_STREAMED = 100

#: Jobs one page of ``/api/jobs`` may hold.
MAX_PAGE = 500

#: Jobs one bulk action may name.
MAX_BULK = 100

#: What an action may do to a job.
ACTIONS = ("cancel", "retry", "delete")

#: Seconds between heartbeats (SSE comments) on an idle stream: proxies
#: close a connection that stays silent for a minute or so.
HEARTBEAT = 15.0

#: The header that every action request carries. A form or a link on
#: another site cannot set it, and a script on another site cannot send it
#: without the browser first asking this server (CORS), which does not
#: answer: together with the Origin check, what keeps actions safe from
#: cross-site requests without a token to manage.
ACTION_HEADER = "X-Asyncjob-Action"


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content).encode()


def dashboard(
    runner: Runner,
    *,
    read_only: bool | None = None,
    authorize: Authorize | None = None,
) -> Starlette:
    """An ASGI application showing ``runner``'s jobs, to mount in Starlette,
    FastAPI, or any ASGI application (``asyncjob[web]`` extra)::

        app.mount("/jobs", asyncjob.web.dashboard(runner))

    The runner is the application's own, started and stopped by it (a
    producer-only runner is enough: the dashboard reads the store, it runs
    nothing).

    Args:
        runner: whose store to show.
        read_only: serve nothing that changes a job: the default, unless
            ``authorize`` is given. With False, actions are served to every
            request that reaches the dashboard and that ``authorize`` (if
            given) allows: without it, mount the dashboard behind your
            authentication.
        authorize: decides, request by request and action by action,
            whether an action is allowed (see :data:`Authorize`); given, it
            turns actions on.

    Raises:
        TypeError: ``runner`` is not a :class:`~asyncjob.Runner`.
        ValueError: ``read_only=True`` with ``authorize``: there would be
            nothing for it to decide.
    """
    if not isinstance(runner, Runner):
        raise TypeError(f"dashboard() takes an asyncjob.Runner, not {runner!r}")
    if read_only and authorize is not None:
        raise ValueError(
            "read_only=True serves no action, so authorize= would decide nothing: "
            "give authorize= alone (it turns actions on), or read_only=False"
        )
    actions = authorize is not None if read_only is None else not read_only
    board = _Dashboard(runner, authorize if actions else None, actions)
    routes = [
        Route("/", board.page),
        Route("/static/asyncjob.js", board.script),
        Route("/api/jobs", board.list_jobs),
        Route("/api/jobs/{job_id}", board.job),
        Route("/api/jobs/{job_id}/events", board.job_events),
        Route("/api/events", board.events),
        Route("/api/schedules", board.schedules),
        Route("/api/overview", board.overview),
        Route("/api/overview/events", board.overview_events),
        Route("/api/workers", board.workers),
        Route("/metrics", board.metrics),
    ]
    if actions:
        routes += [
            Route("/api/jobs/{job_id}/{action}", board.act, methods=["POST"]),
            Route("/api/actions", board.act_on_many, methods=["POST"]),
        ]
    return Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: _error,
            RunnerNotRunning: _not_running,
            BadRecord: _unreadable,
        },
    )


class _Dashboard:
    """The handlers, around one runner."""

    def __init__(self, runner: Runner, authorize: Authorize | None, actions: bool) -> None:
        self.runner = runner
        self.authorize = authorize
        self.actions = actions
        self.overviews = Overviews(runner)
        self.feeds = Feeds(runner)

    async def page(self, request: Request) -> Response:
        html = _asset("index.html").replace(
            "{{base}}", _escape(request.scope.get("root_path", "")).rstrip("/")
        )
        html = html.replace("{{actions}}", "true" if self.actions else "false")
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def script(self, request: Request) -> Response:
        return Response(
            _asset("asyncjob.js"),
            media_type="text/javascript",
            headers={"Cache-Control": "no-cache"},
        )

    async def list_jobs(self, request: Request) -> Response:
        params = request.query_params
        try:
            limit = int(params.get("limit", "50"))
        except ValueError:
            raise HTTPException(400, f"limit must be a number, not {params['limit']!r}") from None
        if not 1 <= limit <= MAX_PAGE:
            raise HTTPException(400, f"limit must be from 1 to {MAX_PAGE}, not {limit}")
        try:
            found = await self.runner.jobs_page(
                params.getlist("state") or None,
                params.get("name") or None,
                params.get("queue") or None,
                limit + 1,  # one more: is there a next page?
                before=params.get("before") or None,
                since=_moment(params, "since"),
                until=_moment(params, "until"),
                before_at=_moment(params, "before_at"),
            )
        except JobNotFound:
            raise HTTPException(400, "before names no job the store knows") from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        page = found.jobs[:limit]
        # A job past the page: a next page. Short of it: the store says
        # whether older jobs are left to look at (it looks at so many a page).
        after, after_at = (
            (page[-1].id, page[-1].enqueued_at)
            if len(found.jobs) > limit
            else (found.next, found.next_at)
        )
        return _JSON(page_json(page, after, after_at))

    async def job(self, request: Request) -> Response:
        return _JSON(status_json(await self._status(request.path_params["job_id"])))

    async def job_events(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        await self._status(job_id)  # a 404 now, not an empty stream
        return self._stream(request, [job_id])

    async def events(self, request: Request) -> Response:
        job_ids = list(dict.fromkeys(request.query_params.getlist("id")))
        if not job_ids:
            raise HTTPException(400, "name the jobs to follow: /api/events?id=A&id=B")
        if len(job_ids) > MAX_STREAMED:
            raise HTTPException(400, f"one stream follows {MAX_STREAMED} jobs at most")
        known = await asyncio.gather(*(self._known(job_id) for job_id in job_ids))
        unknown = [job_id for job_id, ok in zip(job_ids, known, strict=True) if not ok]
        if unknown:
            raise HTTPException(404, f"no such job: {', '.join(unknown)}")
        return self._stream(request, job_ids)

    async def schedules(self, request: Request) -> Response:
        found = []
        for schedule in await self.runner.schedules():
            shown = schedule_json(schedule)
            shown["last_job"] = None
            if schedule.last_tick is not None:
                # The last tick's job: its id is the tick's own.
                job_id = tick_job_id(schedule.name, schedule.last_tick.timestamp())
                with contextlib.suppress(JobNotFound):  # none: the tick was only
                    # recorded (the schedule's first sight), or its job forgotten
                    state = (await self.runner.status(job_id)).state.value
                    shown["last_job"] = {"id": job_id, "state": state}
            found.append(shown)
        return _JSON(found)

    async def overview(self, request: Request) -> Response:
        return _JSON(overview_json(await self.runner.overview()))

    async def overview_events(self, request: Request) -> Response:
        async def events() -> AsyncIterator[ServerSentEvent]:
            async for reading in self.overviews.follow():
                yield ServerSentEvent(data=dumps(reading))

        return _event_stream(events())

    async def workers(self, request: Request) -> Response:
        return _JSON([worker_json(w) for w in await self.runner.workers()])

    async def metrics(self, request: Request) -> Response:
        try:
            from asyncjob import metrics
        except ImportError as exc:  # prometheus-client is missing
            raise HTTPException(
                501, f"/metrics needs prometheus-client ({exc}): pip install "
                "'asyncjob-runner[metrics]'",
            ) from None  # fmt: skip
        return Response(await metrics.exposition(self.runner), media_type=metrics.CONTENT_TYPE)

    async def act(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        action = self._action(request.path_params["action"])
        await self._allow(request, action, job_id)
        await self._status(job_id)  # a 404 for an unknown id
        done, why = await self._do(request, action, job_id)
        found = {"id": job_id, "action": action, "done": done, "why": why}
        if action != "delete" or not done:
            found["status"] = status_json(await self._status(job_id))
        return _JSON(found)

    async def act_on_many(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, 'send JSON: {"action": ..., "ids": [...]}') from None
        action = self._action(body.get("action") if isinstance(body, dict) else None)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise HTTPException(400, "ids must be a list of job ids")
        if len(ids) > MAX_BULK:
            raise HTTPException(400, f"one action names {MAX_BULK} jobs at most, not {len(ids)}")
        self._from_here(request, action)
        results = []
        for job_id in dict.fromkeys(ids):
            # One job refused is that job's answer: it stopped the request
            # with a 403, the jobs before it acted on and nobody told.
            if await self._authorized(request, action, job_id):
                done, why = await self._do(request, action, job_id)
            else:
                done, why = False, f"you may not {action} this job"
            results.append({"id": job_id, "done": done, "why": why})
        return _JSON({"action": action, "results": results})

    # -- helpers --------------------------------------------------------------

    def _action(self, action: object) -> str:
        if not isinstance(action, str) or action not in ACTIONS:
            raise HTTPException(400, f"the actions are {', '.join(ACTIONS)}, not {action!r}")
        return action

    async def _do(self, request: Request, action: str, job_id: str) -> tuple[bool, str | None]:
        """Take ``action`` on the job, log it with who asked; whether it was
        done, and if not, why."""
        why: str | None = None
        try:
            if action == "cancel":
                done = await self.runner.cancel(job_id)
                why = None if done else "it has ended"
            elif action == "retry":
                done = await self.runner.retry(job_id)
                why = None if done else "only a registered job that failed or was cancelled"
            else:
                done = await self.runner.delete([job_id]) == 1
                why = None if done else "no such job, or it has not ended (cancel it first)"
        except JobNotFound:
            done, why = False, "no such job"
        except (ValueError, RuntimeError, BadRecord) as exc:
            done, why = False, str(exc)
        logger.warning(
            "dashboard: %s %s job %s: %s",
            _who(request),
            action,
            job_id,
            "done" if done else f"not done ({why})",
        )
        return done, why

    async def _known(self, job_id: str) -> bool:
        try:
            await self.runner.status(job_id)
        except JobNotFound:
            return False
        return True

    async def _status(self, job_id: str) -> Any:
        try:
            return await self.runner.status(job_id)
        except JobNotFound:
            raise HTTPException(404, f"no such job: {job_id}") from None

    def _stream(self, request: Request, job_ids: list[str]) -> Response:
        last = request.headers.get("last-event-id", "").strip()
        if last and not (last.isascii() and last.isdigit() and len(last) <= 18):
            # Ours are numbers: anything else was not sent by this stream.
            raise HTTPException(400, f"Last-Event-ID must be an event number, not {last[:40]!r}")
        events = job_events(self.feeds, job_ids, last_event_id=int(last or 0))
        return _event_stream(events)

    async def _allow(self, request: Request, action: str, job_id: str) -> None:
        """Refuse an action sent from another site, or not authorized."""
        self._from_here(request, action)
        if not await self._authorized(request, action, job_id):
            raise HTTPException(403, f"you may not {action} this job")

    def _from_here(self, request: Request, action: str) -> None:
        """Refuse an action request sent from another site."""
        if request.headers.get(ACTION_HEADER) != action:
            raise HTTPException(
                403, f"an action request carries the header {ACTION_HEADER}: {action}"
            )
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
            raise HTTPException(403, f"an action from another site ({origin}) is refused")

    async def _authorized(self, request: Request, action: str, job_id: str) -> bool:
        """Whether ``authorize`` lets this request take ``action`` on the
        job (logged when it does not)."""
        if self.authorize is None:
            return True
        allowed = self.authorize(request, action, job_id)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if not allowed:
            logger.warning("dashboard: %s may not %s job %s", _who(request), action, job_id)
        return bool(allowed)


def _event_stream(events: AsyncIterator[ServerSentEvent]) -> Response:
    """A stream of ``events``, with heartbeats, that no cache or proxy keeps
    (nginx passes each event on at once)."""
    return EventSourceResponse(
        events, ping=HEARTBEAT, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


def _moment(params: Any, name: str) -> datetime | None:
    """A time of the query, in ISO 8601 with its time zone."""
    given = params.get(name)
    if not given:
        return None
    try:
        return datetime.fromisoformat(given)
    except ValueError:
        raise HTTPException(
            400, f"{name} must be a time in ISO 8601, as 2026-12-05T10:00:00Z, not {given!r}"
        ) from None


def _who(request: Request) -> str:
    """Who sent the request, as the log says it: the authenticated user's
    name if the application set one, and the client's address."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
    user = request.scope.get("user")
    name = getattr(user, "display_name", None) or getattr(user, "username", None)
    return f"{name} ({client})" if name else client


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _JSON({"error": exc.detail}, status_code=exc.status_code)


async def _not_running(request: Request, exc: Exception) -> Response:
    return _JSON({"error": "the runner is not running"}, status_code=503)


async def _unreadable(request: Request, exc: Exception) -> Response:
    """A job whose row holds what asyncjob never wrote: the request was
    understood, the job cannot be shown (the message names the column)."""
    return _JSON({"error": str(exc)}, status_code=422)


@functools.cache
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    )

"""Progress people can see: the dashboard, live streams of jobs for
browsers, and a progress element for pages (the ``asyncjob[web]`` extra:
Starlette and sse-starlette; uvicorn for ``asyncjob dashboard``).

::

    from starlette.applications import Starlette
    import asyncjob.web

    app = Starlette(lifespan=...)  # starts and stops `runner`
    app.mount("/jobs", asyncjob.web.dashboard(runner))

Nothing here is imported by a worker, or by ``import asyncjob``.
"""

from __future__ import annotations

from ._app import ACTION_HEADER, Authorize, dashboard
from ._stream import COALESCE

__all__ = ("ACTION_HEADER", "COALESCE", "Authorize", "dashboard")

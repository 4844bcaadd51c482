"""The test project with Django's own backend as the default, and an
application of plain tasks bound to it: asyncjob runs them only when they
are enqueued with ``.using(backend="pg")``, by ``asyncjob_worker --backend
pg``."""

from __future__ import annotations

from .settings import *  # noqa: F403 - the project's settings, some of them changed
from .settings import TASKS

INSTALLED_APPS = ["asyncjob.django", "plain"]
ROOT_URLCONF = "djproject.no_urls"
TASKS = {**TASKS, "default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}

"""``python manage.py asyncjob_worker``: ``asyncjob worker`` for a Django
project, the store taken from ``TASKS``, the tasks from each installed
application's ``tasks`` module."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.tasks import Task, task_backends
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend
from django.utils.module_loading import autodiscover_modules

from asyncjob._cli.worker import run_worker
from asyncjob._core import defaults
from asyncjob.django._backend import AsyncJobBackend


class Command(BaseCommand):  # type: ignore[misc]  # Django is untyped
    help = (
        "Run the project's tasks (@task functions of each installed application's "
        "tasks.py) from an asyncjob backend's store until SIGINT or SIGTERM, then stop "
        "gracefully: running tasks get the grace period, tasks still held are handed "
        "back. Example: python manage.py asyncjob_worker --queue emails --concurrency 20"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--backend",
            default="default",
            help="the TASKS alias whose store to serve (default: default)",
        )
        parser.add_argument(
            "--queue",
            dest="queues",
            action="append",
            metavar="NAME",
            help="take the tasks of this queue (repeat for more; default: every queue)",
        )
        parser.add_argument("--concurrency", type=int, help="tasks run at once (default 10)")
        parser.add_argument("--threads", type=int, help="threads for sync tasks")
        parser.add_argument("--lease", type=float, help="seconds a task stays held unrenewed")
        parser.add_argument("--poll-interval", type=float, help="seconds between looks")
        parser.add_argument("--grace-period", type=float, help="seconds to finish when stopping")
        parser.add_argument("--keep-finished", type=float, help="seconds ended tasks are kept")
        parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics there")
        parser.add_argument("--metrics-host", default="127.0.0.1", help="for --metrics-port")

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["backend"]
        try:
            backend = task_backends[alias]
        except InvalidTaskBackend as exc:
            raise CommandError(f"no TASKS backend {alias!r}: {exc}") from None
        if not isinstance(backend, AsyncJobBackend):
            raise CommandError(
                f"TASKS[{alias!r}] is {type(backend).__module__}.{type(backend).__qualname__}, "
                "not asyncjob.django.AsyncJobBackend"
            )
        queues = options["queues"]
        if queues and backend.queues and not set(queues) <= backend.queues:
            raise CommandError(
                f"unknown queue {sorted(set(queues) - backend.queues)}: TASKS[{alias!r}] "
                f"has QUEUES {sorted(backend.queues)}"
            )
        autodiscover_modules("tasks")
        _register_tasks(backend)
        given = {
            name: options[name]
            for name in ("concurrency", "threads", "lease", "poll_interval", "grace_period",
                         "keep_finished")
            if options[name] is not None
        }  # fmt: skip
        settings = {**backend.worker_options, **given}
        port = options["metrics_port"]
        code = run_worker(
            backend.store_url,
            [],
            queues=queues,
            concurrency=settings.get("concurrency", defaults.CONCURRENCY),
            grace_period=settings.get("grace_period", defaults.GRACE_PERIOD),
            lease=settings.get("lease", defaults.LEASE),
            poll_interval=settings.get("poll_interval"),
            threads=settings.get("threads"),
            keep_finished=settings.get("keep_finished", defaults.KEEP_FINISHED),
            table_prefix=backend.table_prefix,
            metrics=None if port is None else (options["metrics_host"], port),
        )
        if code:
            raise CommandError("the worker could not run (see above)", returncode=code)


def _register_tasks(backend: AsyncJobBackend) -> None:
    """Register with asyncjob every task of the applications' ``tasks``
    modules that ``backend`` can run. A task registers itself through the
    backend it is bound to (``@task(backend=...)``, else ``default``): bound
    to another one, it was unknown to this worker, and every run of it
    enqueued with ``.using(backend=...)`` failed, "not registered"."""
    for config in apps.get_app_configs():
        module = sys.modules.get(f"{config.name}.tasks")
        for value in vars(module).values() if module is not None else ():
            if isinstance(value, Task):
                # One that needs what this backend does not do is never enqueued here.
                with contextlib.suppress(InvalidTask):
                    backend.validate_task(value)

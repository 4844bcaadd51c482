"""Settings of the benchmark's project: one PostgreSQL database (the
benchmark creates it, and drops it afterwards), with both backends on it.

From the environment:

* ``ASYNCJOB_BENCH_DJANGO_DB``: the database's URL (``postgresql://user@host:port/name``);
* ``ASYNCJOB_BENCH_DJANGO_PREFIX``: the prefix of asyncjob's tables;
* ``ASYNCJOB_BENCH_CONN_MAX_AGE``: Django's ``CONN_MAX_AGE`` in seconds, or
  ``none`` for connections kept for good (default ``0``, Django's own: a
  connection per request, which ``db_worker`` treats as a connection per
  task).
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

URL = os.environ.get(
    "ASYNCJOB_BENCH_DJANGO_DB", "postgresql://postgres@127.0.0.1:5432/bench_django"
)
PREFIX = os.environ.get("ASYNCJOB_BENCH_DJANGO_PREFIX", "bench_")
_AGE = os.environ.get("ASYNCJOB_BENCH_CONN_MAX_AGE", "0")
_PARTS = urlsplit(URL)

SECRET_KEY = "benchmark-only"
DEBUG = False  # db_worker reloads itself on code changes under DEBUG
ALLOWED_HOSTS: list[str] = []
USE_TZ = True
INSTALLED_APPS = ["asyncjob.django", "django_tasks_db", "django_bench"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _PARTS.path.lstrip("/"),
        "HOST": _PARTS.hostname or "127.0.0.1",
        "PORT": _PARTS.port or 5432,
        "USER": unquote(_PARTS.username or "postgres"),
        "PASSWORD": unquote(_PARTS.password or ""),
        "CONN_MAX_AGE": None if _AGE.lower() == "none" else float(_AGE),
    }
}

TASKS = {
    # asyncjob's backend: its store is the database above, so that enqueue
    # writes through Django's connection, in its transaction.
    "asyncjob": {
        "BACKEND": "asyncjob.django.AsyncJobBackend",
        "QUEUES": ["default"],
        "OPTIONS": {
            "store": URL.replace("postgresql://", "postgresql+asyncpg://", 1),
            "database": "default",
            "table_prefix": PREFIX,
        },
    },
    # The reference: django-tasks-db's ORM backend, run by ``manage.py db_worker``.
    "db": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "asyncjob": {"handlers": ["console"], "level": "INFO"},
        "django_tasks_db": {"handlers": ["console"], "level": "INFO"},
    },
}

"""A Django project for the tests: its database and its tasks' store are one
SQLite file (``default``), or one PostgreSQL database (``pg``), so that
enqueues join Django's transactions. Where they live comes from the
environment the tests give (``ASYNCJOB_DJANGO_DIR``, ``ASYNCJOB_DJANGO_PREFIX``)."""

from __future__ import annotations

import os

HERE = os.environ["ASYNCJOB_DJANGO_DIR"]
PREFIX = os.environ.get("ASYNCJOB_DJANGO_PREFIX", "dj_")
PG = os.environ.get("ASYNCJOB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "djproject.urls"
# --8<-- [start:apps]
INSTALLED_APPS = ["asyncjob.django", "shop"]
# --8<-- [end:apps]

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": f"{HERE}/app.db"},
    "pg": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": PG.rsplit("/", 1)[1],
        "HOST": "127.0.0.1",
        "PORT": 5432,
        "USER": "postgres",
    },
}

# --8<-- [start:tasks]
QUEUES = ["default", "emails"]
WORKER = {"poll_interval": 0.05, "grace_period": 5}
TASKS = {
    "default": {
        "BACKEND": "asyncjob.django.AsyncJobBackend",
        "QUEUES": QUEUES,
        "OPTIONS": {
            "store": f"sqlite+aiosqlite:///{HERE}/app.db",
            "table_prefix": PREFIX,
            **WORKER,
        },
    },
    "pg": {
        "BACKEND": "asyncjob.django.AsyncJobBackend",
        "QUEUES": QUEUES,
        "OPTIONS": {
            "store": PG.replace("postgresql://", "postgresql+asyncpg://"),
            "database": "pg",
            "table_prefix": PREFIX,
            **WORKER,
        },
    },
}
# --8<-- [end:tasks]

LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"asyncjob": {"handlers": ["console"], "level": "INFO"}},
}

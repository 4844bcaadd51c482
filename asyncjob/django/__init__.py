"""A Django 6 ``django.tasks`` backend that runs tasks with asyncjob.

::

    INSTALLED_APPS = [..., "asyncjob.django"]
    TASKS = {
        "default": {
            "BACKEND": "asyncjob.django.AsyncJobBackend",
            "OPTIONS": {"store": "postgresql+asyncpg://app@db/app"},
        }
    }

Tasks (``@django.tasks.task`` functions in each app's ``tasks.py``) run in
``python manage.py asyncjob_worker``, with leases, retries, progress and
the live streams and dashboard of :mod:`asyncjob.web`. Needs Python 3.12 and
Django 6 (the ``django`` extra).
"""

from __future__ import annotations

from ._backend import AsyncJobBackend, AsyncJobTask

__all__ = ("AsyncJobBackend", "AsyncJobTask")

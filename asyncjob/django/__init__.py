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

from typing import Any

__all__ = ("AsyncJobBackend", "AsyncJobTask")


def __getattr__(name: str) -> Any:
    """The backend, imported when asked for: ``import asyncjob.django``
    works without Django (to check a configuration, say); using the backend
    needs Django 6, and says so."""
    if name not in __all__:
        raise AttributeError(f"module 'asyncjob.django' has no attribute {name!r}")
    try:
        from . import _backend
    except ImportError as exc:
        raise ImportError(
            f"asyncjob.django.{name} needs Django 6 on Python 3.12 or newer "
            f"(pip install 'asyncjob-runner[django]'): {exc}"
        ) from exc
    return getattr(_backend, name)

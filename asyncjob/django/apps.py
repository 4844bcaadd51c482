"""The Django application ``asyncjob.django``: what ``INSTALLED_APPS`` names,
so that Django finds the ``asyncjob_worker`` command. It has no models."""

from __future__ import annotations

from django.apps import AppConfig


class AsyncJobConfig(AppConfig):  # type: ignore[misc]  # Django is untyped
    name = "asyncjob.django"
    label = "asyncjob"
    verbose_name = "asyncjob"

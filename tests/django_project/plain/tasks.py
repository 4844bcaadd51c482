"""Plain Django tasks, bound to the project's default backend."""

from __future__ import annotations

from django.tasks import task


@task
def double(n: int) -> int:
    return 2 * n

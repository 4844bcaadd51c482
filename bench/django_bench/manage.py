#!/usr/bin/env python
"""The benchmark project's manage.py: ``python bench/django_bench/manage.py
asyncjob_worker --backend asyncjob`` or ``... db_worker --backend db``, with
the environment of :mod:`django_bench.settings`.

With ``ASYNCJOB_BENCH_PARENT`` set (the benchmark sets it to its pid), the
process stops itself (SIGTERM, then for good 10 seconds later) once that
parent is gone: a worker never outlives a benchmark that was killed."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path


def watch_parent(parent: int) -> None:
    """Stop this process once its parent is no longer ``parent``."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10.0)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_bench.settings")
    if os.environ.get("ASYNCJOB_BENCH_PARENT"):
        watch_parent(int(os.environ["ASYNCJOB_BENCH_PARENT"]))
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)

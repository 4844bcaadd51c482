"""The shop's tasks: what a Django application would enqueue."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from django.db import connection
from django.tasks import task
from django.tasks.base import TaskContext

import asyncjob


# --8<-- [start:tasks]
@task(queue_name="emails")
def send_receipt(order: int, to: str) -> dict[str, object]:
    """A sync task: reports progress, uses the database, returns JSON."""
    asyncjob.set_progress(50, "rendering")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (one,) = cursor.fetchone()
    asyncjob.set_progress(100, "sent")
    return {"order": order, "to": to, "db": one, "pid": os.getpid()}


@task
async def resize(width: int) -> list[int]:
    """A coroutine task, run on the worker's loop."""
    await asyncio.sleep(0)
    return [width, width // 2]


class PaymentDeclined(Exception):
    pass


@task
def charge(amount: int) -> None:
    raise PaymentDeclined(f"card declined for {amount}")


@task(takes_context=True, retries=1, backoff=0.01)
def flaky(context: TaskContext, marker: str) -> int:
    """Fails on its first attempt, then succeeds: says which attempt it is."""
    path = Path(marker)
    if not path.exists():
        path.write_text("tried")
        raise ConnectionError("the mail server did not answer")
    return int(context.attempt)


# --8<-- [end:tasks]


@task
def record(label: str, into: str) -> str:
    """Appends ``label`` to the file ``into``: the order tasks ran in."""
    with open(into, "a") as file:
        file.write(label + "\n")
    return label


@task
def wait_for(gate: str, seconds: float) -> str:
    """Runs until the file ``gate`` exists (or ``seconds`` pass)."""
    deadline = time.monotonic() + seconds
    asyncjob.set_progress(1, "waiting")
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "opened" if os.path.exists(gate) else "timed out"


@task
def returns(kind: str) -> object:
    """What a task may return: JSON as Django's database backend keeps it,
    or what no JSON can hold."""
    return {"int keys": {1: "a"}, "nan": float("nan"), "object": object()}[kind]

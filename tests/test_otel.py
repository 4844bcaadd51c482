"""Traces across the queue: a job performed here, run by a real worker
process, with OpenTelemetry's SDK and in-memory exporter on both sides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import asyncjob
import asyncjob.otel
from asyncjob._core import tracing
from asyncjob.stores.sql import SQLStore

from . import otel_worker
from .conftest import TIMEOUT, Database, RunnerFactory
from .processes import ROOT


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """This process instrumented, its spans kept in memory."""
    kept = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    asyncjob.otel.instrument(provider)
    yield kept
    asyncjob.otel.uninstrument()


def traced_worker(store: str, spans: Path) -> subprocess.Popen[str]:
    """``asyncjob worker`` with tests.otel_worker: it writes its spans to
    ``spans`` when it exits."""
    return subprocess.Popen(
        [sys.executable, "-m", "asyncjob", "worker", "--store", store,
         "--import", "tests.otel_worker", "--poll-interval", "0.05"],
        cwd=ROOT, env={**os.environ, "ASYNCJOB_TEST_SPANS": str(spans)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


async def test_a_trace_crosses_the_queue_to_a_worker_process(
    exporter: InMemorySpanExporter, make_runner: RunnerFactory, database: Database, tmp_path: Path
) -> None:
    """The producer span at perform; in the worker, a consumer span per
    attempt, in the producer's trace, linked to the producer span, current
    while the job runs; the failed attempt's span says so."""
    spans_file = tmp_path / "spans.json"
    worker = traced_worker(database.async_url, spans_file)
    try:
        producer = await make_runner(
            SQLStore(database.async_url, poll_interval=0.05), producer_only=True
        )
        job_id = await producer.perform(otel_worker.fails_once, str(tmp_path / "marker"))
        current_in_job = await producer.wait(job_id, timeout=TIMEOUT)
    finally:
        worker.terminate()
        output, _ = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == 0, output
    [published] = exporter.get_finished_spans()
    assert (published.name, published.kind) == (
        "publish tests.otel_worker.fails_once", SpanKind.PRODUCER,
    )  # fmt: skip
    assert published.attributes is not None
    assert published.attributes["messaging.message.id"] == job_id
    assert published.attributes["messaging.destination.name"] == "default"
    processed = json.loads(spans_file.read_text())
    assert [(s["name"], s["kind"], s["status"], s["attributes"]["asyncjob.job.attempt"])
            for s in processed] == [
        ("process tests.otel_worker.fails_once", "CONSUMER", "ERROR", 1),
        ("process tests.otel_worker.fails_once", "CONSUMER", "UNSET", 2),
    ]  # fmt: skip
    producer_span = (published.context.trace_id, published.context.span_id)
    for span in processed:
        assert [tuple(link) for link in span["links"]] == [producer_span]
        assert (span["trace_id"], span["parent"]) == producer_span
        assert span["attributes"]["messaging.system"] == "asyncjob"
        assert span["attributes"]["messaging.message.id"] == job_id
    assert current_in_job == processed[1]["span_id"]  # the job's own spans join it


async def test_a_sync_and_a_coroutine_job_run_in_their_span(
    exporter: InMemorySpanExporter, runner: asyncjob.Runner
) -> None:
    """In process, on the memory store: each job's code sees its own
    consumer span current, a sync job in its thread too."""
    from opentelemetry.trace import get_current_span

    async def coroutine_job() -> int:
        return int(get_current_span().get_span_context().span_id)

    def sync_job() -> int:
        return int(get_current_span().get_span_context().span_id)

    seen = {}
    for job in (coroutine_job, sync_job):
        job_id = await runner.perform(job)
        seen[job.__name__] = await runner.wait(job_id, timeout=TIMEOUT)
    spans = {s.name.rsplit(".", 1)[1]: s for s in exporter.get_finished_spans()
             if s.kind is SpanKind.CONSUMER}  # fmt: skip
    assert {name: spans[name].context.span_id for name in seen} == seen
    assert all(s.status.status_code is not StatusCode.ERROR for s in spans.values())


async def test_jobs_performed_together_join_the_performing_trace(
    exporter: InMemorySpanExporter, runner: asyncjob.Runner
) -> None:
    """perform_many carries the trace context into every job it makes."""

    async def job() -> None:
        pass

    with TracerProvider().get_tracer("tests").start_as_current_span("request") as request:
        ids = await runner.perform_many(job, [(), (), ()])
    for job_id in ids:
        await runner.wait(job_id, timeout=TIMEOUT)
    consumers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert len(consumers) == 3
    assert {s.context.trace_id for s in consumers} == {request.get_span_context().trace_id}


def test_without_instrument_nothing_is_traced_or_imported() -> None:
    """Tracing is off by default; importing asyncjob and running a job
    imports nothing of OpenTelemetry."""
    assert tracing.active is None
    code = (
        "import asyncio, sys, asyncjob\n"
        "async def main():\n"
        "    async with asyncjob.Runner() as r:\n"
        "        await r.wait(await r.perform(asyncio.sleep, 0), timeout=10)\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT * 3, check=True)  # fmt: skip
    assert done.stdout.strip() == "[]"

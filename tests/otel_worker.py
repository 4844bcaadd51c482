"""What an ``asyncjob worker`` process imports for the tracing tests: the
OpenTelemetry SDK with an in-memory exporter, asyncjob instrumented, a job
that fails once; at exit, the spans it recorded go to the JSON file named
by ``ASYNCJOB_TEST_SPANS``."""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import get_current_span

import asyncjob
import asyncjob.otel


def dump(exporter: InMemorySpanExporter, path: str) -> None:
    spans = [
        {
            "name": span.name,
            "kind": span.kind.name,
            "trace_id": span.context.trace_id,
            "span_id": span.context.span_id,
            "parent": span.parent.span_id if span.parent else None,
            "links": [(link.context.trace_id, link.context.span_id) for link in span.links],
            "attributes": dict(span.attributes or {}),
            "status": span.status.status_code.name,
        }
        for span in exporter.get_finished_spans()
    ]
    Path(path).write_text(json.dumps(spans))


if "ASYNCJOB_TEST_SPANS" in os.environ:  # in the worker process, not the tests'
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    asyncjob.otel.instrument(provider)
    atexit.register(dump, exporter, os.environ["ASYNCJOB_TEST_SPANS"])


@asyncjob.job(retries=1, backoff=0.01)
def fails_once(marker: str) -> int:
    """Fails on its first attempt; returns the span id current in it."""
    path = Path(marker)
    if not path.exists():
        path.write_text("tried")
        raise ConnectionError("the first attempt fails")
    return int(get_current_span().get_span_context().span_id)

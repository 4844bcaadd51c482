"""OpenTelemetry tracing across the queue (the ``otel`` extra).

::

    import asyncjob.otel

    asyncjob.otel.instrument()   # once per process: the web app's and each worker's

Then each perform records a ``publish <job name>`` span (kind PRODUCER)
and stores its trace context with the job (W3C ``traceparent``, through
OpenTelemetry's propagation API, so whatever propagators the application
configured); each attempt, in whatever process runs it, is a
``process <job name>`` span (kind CONSUMER), a child of that context and
linked to the producer span, current while the job's code runs, so that
what the job traces (its queries, its HTTP calls) joins it. A retry is a
new attempt: a new span, with the same link. Attributes follow
OpenTelemetry's messaging conventions (``messaging.system`` is
``asyncjob``, the destination the job's queue), with the job's name and
attempt.

Without it nothing of OpenTelemetry is imported, and a job pays one check
of a global that is ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, TracerProvider

from asyncjob._core import tracing
from asyncjob._core.models import Job
from asyncjob._version import __version__

__all__ = ("instrument", "uninstrument")


def instrument(tracer_provider: TracerProvider | None = None) -> None:
    """Trace every job this process performs or runs, with spans of the
    given provider (default: the global one). Calling it again replaces the
    provider."""
    tracer = trace.get_tracer("asyncjob", __version__, tracer_provider=tracer_provider)
    tracing.active = _Tracing(tracer)


def uninstrument() -> None:
    """Stop tracing jobs (those already stored keep their context)."""
    tracing.active = None


def _attributes(job: Job, operation: str, kind: str) -> dict[str, Any]:
    return {
        "messaging.system": "asyncjob",
        "messaging.operation.name": operation,
        "messaging.operation.type": kind,
        "messaging.destination.name": job.queue,
        "messaging.message.id": job.id,
        "asyncjob.job.name": job.name,
    }


class _Tracing:
    """:class:`asyncjob._core.tracing.Tracing` with OpenTelemetry."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def performed(self, job: Job) -> Mapping[str, str] | None:
        with self._tracer.start_as_current_span(
            f"publish {job.name}",
            kind=SpanKind.PRODUCER,
            attributes=_attributes(job, "publish", "send"),
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
        return carrier or None

    def run(self, job: Job) -> _Attempt:
        parent = propagate.extract(job.trace) if job.trace else None
        links = []
        if parent is not None:
            producer = trace.get_current_span(parent).get_span_context()
            if producer.is_valid:
                links.append(Link(producer))
        attributes = _attributes(job, "process", "process")
        attributes["asyncjob.job.attempt"] = job.attempt
        span = self._tracer.start_span(
            f"process {job.name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
        )
        return _Attempt(span, context.attach(trace.set_span_in_context(span)))


class _Attempt:
    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span, token: object) -> None:
        self._span = span
        self._token = token

    def end(self, error: BaseException | None) -> None:
        if error is not None:
            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self._span.end()
        context.detach(self._token)  # type: ignore[arg-type]

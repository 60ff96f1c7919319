"""A span around ``start_flow`` when ``opentelemetry-api`` is installed; nothing otherwise.

The span's W3C trace context (``traceparent``, ``tracestate``) is what a transport stores with
the run, so that workers trace the run's tasks as its children.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

__all__ = ["start_flow_span", "tracer"]


def tracer() -> Any:
    """The client's tracer, or None without ``opentelemetry-api``.

    A client asks once, when it is made: importing OpenTelemetry takes milliseconds, too many
    for the first ``start_flow``. Until the application sets its tracer provider this is
    OpenTelemetry's proxy, which then follows that provider.
    """
    if importlib.util.find_spec("opentelemetry") is None:
        return None
    from opentelemetry import trace

    # What the first span needs, imported now rather than inside it.
    importlib.import_module("opentelemetry.trace.propagation.tracecontext")
    return trace.get_tracer("pgflow_client")


@contextlib.contextmanager
def start_flow_span(tracer: Any, flow_slug: str, run_id: str) -> Iterator[dict[str, str]]:
    """The ``pgflow.start_flow`` span of ``tracer`` (from :func:`tracer`; a child of the
    caller's current span), recording the error when starting fails.

    Yields the span's W3C trace context as headers (``traceparent`` and maybe
    ``tracestate``): empty without OpenTelemetry or outside any trace. With the API but no
    SDK the span is the caller's own, so a run still joins the caller's trace.
    """
    if tracer is None:
        yield {}
        return
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    attributes = {"pgflow.flow_slug": flow_slug, "pgflow.run_id": run_id}
    with tracer.start_as_current_span(
        f"pgflow.start_flow {flow_slug}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        headers: dict[str, str] = {}
        # W3C whatever the global propagator is: the stored columns are W3C's.
        TraceContextTextMapPropagator().inject(headers)
        yield headers

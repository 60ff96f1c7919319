"""A span around ``start_flow`` when ``opentelemetry-api`` is installed; nothing otherwise."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

__all__ = ["start_flow_span"]


def _tracer() -> Any:
    if importlib.util.find_spec("opentelemetry") is None:
        return None
    from opentelemetry import trace

    return trace.get_tracer("pgflow_client")


@contextlib.contextmanager
def start_flow_span(flow_slug: str, run_id: str) -> Iterator[None]:
    """The ``pgflow.start_flow`` span (a child of the caller's current span), recording the
    error when starting fails."""
    tracer = _tracer()
    if tracer is None:
        yield
        return
    from opentelemetry.trace import SpanKind

    attributes = {"pgflow.flow_slug": flow_slug, "pgflow.run_id": run_id}
    with tracer.start_as_current_span(
        f"pgflow.start_flow {flow_slug}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        yield

"""OpenTelemetry spans and metrics of a worker's tasks, when ``opentelemetry-api`` is installed.

Without it (the ``otel`` extra absent) nothing is imported and every hook does nothing. With
it, spans and metrics go to the providers given, else to the API's global ones (no-ops until
an SDK is configured). A task's span is a child of the trace context stored with its run (that
of the ``start_flow`` call that started it), else the root of a trace of its own.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from ._sql_client import RunTraceContext, StepTask

__all__ = ["WorkerTelemetry", "otel_available"]


def otel_available() -> bool:
    """Whether ``opentelemetry-api`` can be imported."""
    return importlib.util.find_spec("opentelemetry") is not None and (
        importlib.util.find_spec("opentelemetry.trace") is not None
    )


class WorkerTelemetry:
    """The worker's tracer and instruments; inert when OpenTelemetry is not installed."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self.enabled = otel_available()
        if not self.enabled:
            return
        from opentelemetry import metrics, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        # W3C, whatever the application's global propagator: that is the stored format.
        self._propagator = TraceContextTextMapPropagator()
        self._tracer = trace.get_tracer("pgflow_worker", tracer_provider=tracer_provider)
        meter = metrics.get_meter("pgflow_worker", meter_provider=meter_provider)
        self._completed = meter.create_counter(
            "pgflow.worker.tasks.completed", unit="{task}", description="Task attempts completed"
        )
        self._failed = meter.create_counter(
            "pgflow.worker.tasks.failed", unit="{task}", description="Task attempts failed"
        )
        self._duration = meter.create_histogram(
            "pgflow.worker.task.duration", unit="s", description="Handler run time"
        )
        self._queue_wait = meter.create_histogram(
            "pgflow.worker.task.queue_wait",
            unit="s",
            description="Time from a task's message being queued to its start",
        )
        self._in_flight = meter.create_up_down_counter(
            "pgflow.worker.tasks.in_flight", unit="{task}", description="Tasks running now"
        )

    @contextlib.contextmanager
    def task(
        self, task: StepTask, enqueued_at: Any, parent: RunTraceContext | None = None
    ) -> Iterator[_TaskRecord]:
        """A span around one task attempt, and its metrics when it ends.

        The span is a child of ``parent``, the run's stored trace context, when there is one,
        and otherwise a root: never a child of whatever span was current where the worker
        started, which has nothing to do with the run.
        """
        record = _TaskRecord()
        if not self.enabled:
            yield record
            return
        attributes: dict[str, str | int] = {
            "pgflow.flow_slug": task.flow_slug,
            "pgflow.step_slug": task.step_slug,
            "pgflow.run_id": str(task.run_id),
            "pgflow.task_index": task.task_index,
            "pgflow.attempt": task.attempt,
        }
        metric_attributes = {"pgflow.flow_slug": task.flow_slug, "pgflow.step_slug": task.step_slug}
        if isinstance(enqueued_at, datetime):
            wait = (datetime.now(UTC) - enqueued_at).total_seconds()
            self._queue_wait.record(max(wait, 0.0), metric_attributes)
        self._in_flight.add(1, metric_attributes)
        span_name = f"pgflow.task {task.flow_slug}.{task.step_slug}"
        started = _now()
        try:
            with self._tracer.start_as_current_span(
                span_name,
                context=self._parent_context(parent),
                kind=self._trace.SpanKind.CONSUMER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                yield record
                if record.error is not None:
                    span.record_exception(record.error)
                    span.set_attribute("error.type", type(record.error).__name__)
                    if record.timed_out:
                        span.set_attribute("pgflow.timed_out", True)
                    span.set_status(self._trace.StatusCode.ERROR, record.message or None)
                elif record.message is not None:
                    span.set_status(self._trace.StatusCode.ERROR, record.message)
        finally:
            self._in_flight.add(-1, metric_attributes)
            self._duration.record(_now() - started, metric_attributes)
            if record.message is None:
                self._completed.add(1, metric_attributes)
            else:
                self._failed.add(1, metric_attributes)

    def _parent_context(self, parent: RunTraceContext | None) -> Any:
        from opentelemetry.context import Context

        if parent is None:
            return Context()
        carrier = {"traceparent": parent.traceparent}
        if parent.tracestate:
            carrier["tracestate"] = parent.tracestate
        # A context that cannot be parsed gives an empty one: the span is then a root.
        return self._propagator.extract(carrier, context=Context())


class _TaskRecord:
    """How an attempt ended, filled in by the worker inside :meth:`WorkerTelemetry.task`."""

    __slots__ = ("error", "message", "timed_out")

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.message: str | None = None
        self.timed_out = False

    def failed(self, message: str, error: BaseException | None = None) -> None:
        self.message = message
        self.error = error
        self.timed_out = isinstance(error, TimeoutError)


def _now() -> float:
    import time

    return time.perf_counter()

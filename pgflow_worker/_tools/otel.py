"""``pgflow worker --otel``: the OpenTelemetry SDK configured from the ``OTEL_*`` variables.

``OTEL_TRACES_EXPORTER`` and ``OTEL_METRICS_EXPORTER`` name the exporters (``console``,
``otlp``, ``none``; default ``otlp`` as in the specification); ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` describe the process. The OTLP exporters read their own
``OTEL_EXPORTER_OTLP_*`` variables.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from ..errors import WorkerError

__all__ = ["configure_otel"]

_SDK_HINT = (
    "pgflow worker --otel needs the OpenTelemetry SDK: pip install 'pgflow-py[otel]' "
    "opentelemetry-sdk (and opentelemetry-exporter-otlp for the otlp exporter)"
)


def _names(variable: str) -> list[str]:
    value = os.environ.get(variable, "otlp")
    return [name.strip().lower() for name in value.split(",") if name.strip()]


def _otlp(module: str, name: str) -> Any:
    """An OTLP/HTTP exporter, from the package that is not a dependency of ours."""
    try:
        found = importlib.import_module(f"opentelemetry.exporter.otlp.proto.http.{module}")
    except ImportError:
        raise WorkerError(_SDK_HINT) from None
    return getattr(found, name)()


def configure_otel() -> tuple[Any, Any, Callable[[], None]]:
    """Build the tracer and meter providers the ``OTEL_*`` variables describe; returns them
    and a function that flushes and shuts both down."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            MetricReader,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise WorkerError(_SDK_HINT) from None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "pgflow")})
    tracer_provider = TracerProvider(resource=resource)
    for name in _names("OTEL_TRACES_EXPORTER"):
        if name == "none":
            continue
        if name == "console":
            tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            exporter = _otlp("trace_exporter", "OTLPSpanExporter")
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        else:
            raise WorkerError(
                f"OTEL_TRACES_EXPORTER names {name!r}; pgflow worker --otel knows console, "
                "otlp and none"
            )
    readers: list[MetricReader] = []
    for name in _names("OTEL_METRICS_EXPORTER"):
        if name == "none":
            continue
        if name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif name == "otlp":
            readers.append(
                PeriodicExportingMetricReader(_otlp("metric_exporter", "OTLPMetricExporter"))
            )
        else:
            raise WorkerError(
                f"OTEL_METRICS_EXPORTER names {name!r}; pgflow worker --otel knows console, "
                "otlp and none"
            )
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return tracer_provider, meter_provider, shutdown

"""OpenTelemetry spans and metrics of a real worker's tasks, read from the SDK's in-memory
exporters."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pgflow_worker import Flow
from pgflow_worker.testing import run_flow
from tests.worker.helpers import start_run, wait_run
from tests.worker.test_worker_process import wait_for_workers

ROOT = Path(__file__).resolve().parents[2]

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk is absent")
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode  # noqa: E402


def _flow() -> Flow:
    flow = Flow("otel_flow", max_attempts=2)

    @flow.array
    def items(input: dict[str, Any]) -> list[int]:
        return list(range(input["n"]))

    @flow.map(array=items)
    def double(item: int) -> int:
        if item == 0 and _failures:
            _failures.pop()
            raise ValueError("zero is unlucky once")
        return item * 2

    return flow


_failures: list[int] = []


def _metrics(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, Any] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = metric.data.data_points
    return found


async def test_spans_and_metrics_of_a_run(db_url: str) -> None:
    _failures[:] = [1]
    exporter = InMemorySpanExporter()
    tracer_provider = sdk_trace.TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    result = await run_flow(
        _flow(),
        {"n": 3},
        db_url,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    assert result.status == "completed"
    spans = exporter.get_finished_spans()
    # items once, double's three tasks, and the retry of its first task.
    assert sorted(s.name for s in spans) == sorted(
        ["pgflow.task otel_flow.items"] + ["pgflow.task otel_flow.double"] * 4
    )
    failed = [s for s in spans if s.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1
    attrs = dict(failed[0].attributes or {})
    assert attrs == {
        "pgflow.flow_slug": "otel_flow",
        "pgflow.step_slug": "double",
        "pgflow.run_id": result.run_id,
        "pgflow.task_index": 0,
        "pgflow.attempt": 1,
        "error.type": "ValueError",
    }
    assert [e.name for e in failed[0].events] == ["exception"]
    retried = [
        s
        for s in spans
        if s.attributes and s.attributes["pgflow.attempt"] == 2 and s.name.endswith("double")
    ]
    assert len(retried) == 1
    assert retried[0].status.status_code is not StatusCode.ERROR

    metrics = _metrics(reader)
    assert sum(p.value for p in metrics["pgflow.worker.tasks.completed"]) == 4
    assert sum(p.value for p in metrics["pgflow.worker.tasks.failed"]) == 1
    assert sum(p.count for p in metrics["pgflow.worker.task.duration"]) == 5
    assert sum(p.count for p in metrics["pgflow.worker.task.queue_wait"]) == 5
    assert all(p.min >= 0 for p in metrics["pgflow.worker.task.queue_wait"])
    assert sum(p.value for p in metrics["pgflow.worker.tasks.in_flight"]) == 0


def test_nothing_is_imported_without_the_extra() -> None:
    """With opentelemetry unimportable, the worker imports nothing of it and its hooks are
    inert; installed, importing the worker still imports none of it."""
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # what an absent package looks like\n"
        "import pgflow_worker\n"
        "from pgflow_worker._telemetry import WorkerTelemetry\n"
        "assert not WorkerTelemetry().enabled\n"
        "assert not [m for m, v in sys.modules.items() if m.startswith('opentelemetry') and v]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_importing_the_worker_imports_no_opentelemetry() -> None:
    code = (
        "import sys, pgflow_worker\n"
        "print([m for m in sys.modules if m.startswith('opentelemetry')])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _spawn_otel_worker(db_url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgflow_worker",
            "worker",
            "tests.worker.cliflows:hello",
            "--db",
            db_url,
            "--max-poll-seconds",
            "1",
            "--poll-interval-ms",
            "50",
            "--otel",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_METRICS_EXPORTER": "none",
        },
    )


async def test_cli_otel_prints_spans_with_the_console_exporter(db_url: str) -> None:
    proc = _spawn_otel_worker(db_url)
    try:
        await wait_for_workers(db_url, 1)
        run_id = await start_run(db_url, "cli_hello", {"name": "Ada"})
        run = await wait_run(db_url, run_id)
        assert run["status"] == "completed"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err
    assert '"name": "pgflow.task cli_hello.greet' in out
    assert f'"pgflow.run_id": "{run_id}"' in out
    assert json.dumps("pgflow.attempt") in out


async def test_start_flow_span_is_a_child_of_the_callers_span(db_url: str) -> None:
    """The client uses the global tracer provider, which is set once per process: a process
    of its own keeps this test from touching the suite's."""
    code = f"""
import asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pgflow_client import PgflowClient, FlowNotFound, TransportError

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

async def main():
    client = await PgflowClient.connect({db_url!r})
    async with client:
        with trace.get_tracer("app").start_as_current_span("request") as parent:
            try:
                await client.start_flow("no_such_flow", {{}})
            except (FlowNotFound, TransportError):
                pass
    spans = {{s.name: s for s in exporter.get_finished_spans()}}
    child = spans["pgflow.start_flow no_such_flow"]
    assert child.parent.span_id == parent.get_span_context().span_id
    assert child.attributes["pgflow.flow_slug"] == "no_such_flow"
    assert child.status.status_code.name == "ERROR"
    assert [e.name for e in child.events] == ["exception"]
    print("ok")

asyncio.run(main())
"""
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


async def test_a_client_made_before_the_tracer_provider_uses_it(db_url: str) -> None:
    """The client resolves its tracer once, when it is made; a provider the application sets
    afterwards still receives its spans (OpenTelemetry's proxy tracer follows it)."""
    code = f"""
import asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pgflow_client import PgflowClient, FlowNotFound

async def main():
    client = await PgflowClient.connect({db_url!r})
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    async with client:
        try:
            await client.start_flow("no_such_flow", {{}})
        except FlowNotFound:
            pass
    print(sorted(s.name for s in exporter.get_finished_spans()))

asyncio.run(main())
"""
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['pgflow.start_flow no_such_flow']"


async def test_a_timed_out_attempt_is_marked(db_url: str) -> None:
    flow = Flow("otel_timeout", max_attempts=1, timeout=3)

    @flow.step
    async def stuck(input: dict[str, Any]) -> None:
        await asyncio.Event().wait()  # never set: only the step's timeout ends it

    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    result = await run_flow(flow, {}, db_url, tracer_provider=provider, timeout=20)
    assert result.status == "failed"
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["pgflow.timed_out"] is True
    assert span.attributes["error.type"] == "TimeoutError"
    assert span.status.status_code is StatusCode.ERROR
    assert "timed out after 3 s" in (span.status.description or "")

"""Run as a script (``python trace_chain.py DB_URL``): an application that sets the global
tracer provider, starts a run inside a span of its own and runs a worker in the same process.
Checks request span → ``pgflow.start_flow`` span → every task span, and prints ``ok``.

A process of its own because the global provider can be set once per process.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pgflow_client import PgflowClient
from pgflow_worker import Flow, FlowWorker


def chain_flow() -> Flow:
    flow = Flow("trace_chain", max_attempts=1)

    @flow.step
    def first(input: dict[str, Any]) -> int:
        return int(input["n"])

    @flow.step(depends_on=[first])
    async def second(input: dict[str, Any]) -> int:
        return int(input["first"]) + 1

    return flow


async def main(db_url: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    async with (
        FlowWorker(chain_flow(), db_url, max_poll_seconds=1, poll_interval_ms=20),
        await PgflowClient.connect(db_url) as client,
    ):
        with trace.get_tracer("app").start_as_current_span("request") as request:
            run = await client.start_flow("trace_chain", {"n": 1})
        await run.wait_for_status("completed", timeout=30)

    spans = exporter.get_finished_spans()
    (start,) = [s for s in spans if s.name == "pgflow.start_flow trace_chain"]
    tasks = [s for s in spans if s.name.startswith("pgflow.task trace_chain.")]
    assert sorted(s.name for s in tasks) == [
        "pgflow.task trace_chain.first",
        "pgflow.task trace_chain.second",
    ], [s.name for s in spans]
    assert start.parent is not None
    assert start.parent.span_id == request.get_span_context().span_id
    for task in tasks:
        assert task.context.trace_id == request.get_span_context().trace_id, task.name
        assert task.parent is not None, task.name
        assert task.parent.span_id == start.context.span_id, task.name
        assert task.attributes is not None
        assert task.attributes["pgflow.run_id"] == run.run_id
    print("ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

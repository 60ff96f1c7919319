"""Worker overhead of OpenTelemetry: the same runs with tracing and metrics on, and off.

One server, one run: the chain runs (three no-op async steps each) are worked by an in-process
``FlowWorker`` with its default settings, in a fresh database each time: once with no
providers (the OpenTelemetry API's no-op defaults, what a worker without a configured SDK
pays), once with an SDK tracer provider (a batch span processor into an in-memory exporter)
and an SDK meter provider (an in-memory reader) recording every span and metric, and once
more so with every run started with a trace context (``pgflow.run_trace_contexts``), which the
worker reads back and caches for the run's task spans. Each is
repeated and the median rate kept; the table gives tasks/s, the ratio to "off" and the
overhead per task in microseconds.

Run: ``uv run python -m benchmarks.otel_overhead`` (under a minute on 2 cores; ``--help``
for sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from benchmarks._common import describe_machine, markdown_table, median, progress
from benchmarks.worker_throughput import chain
from pgflow_worker import FlowWorker
from tests._stack import Stack


@dataclass
class Config:
    """One way of connecting the worker, and the rates it reached."""

    label: str
    settings: Callable[[], dict[str, Any]] = dict
    #: Whether each run is started with a trace context, as a client inside a span does.
    traced_runs: bool = False
    rates: list[float] = field(default_factory=list)


async def measure(stack: Stack, config: Config, runs: int, timeout: float) -> float:
    """Tasks per second from the first ``start_flow`` to the last completed run."""
    name = stack.clone("ours")
    url = stack.url(name)
    try:
        async with (
            FlowWorker(chain, url, **config.settings()),
            await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        ):
            began = time.monotonic()
            for i in range(runs):
                if config.traced_runs:
                    await conn.execute(_START_TRACED, (chain.slug, Jsonb({"run": i}), _parent(i)))
                else:
                    await conn.execute(
                        "select 1 from pgflow.start_flow(%s, %s)", (chain.slug, Jsonb({"run": i}))
                    )
            await conn.execute("listen realtime_broadcast")
            deadline = began + timeout
            while True:
                cur = await conn.execute(
                    "select count(*) from pgflow.runs where status = 'started'"
                )
                row = await cur.fetchone()
                if row == (0,):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{config.label}: runs unfinished after {timeout:g} s")
                async for _ in conn.notifies(timeout=0.5, stop_after=1):
                    pass
            cur = await conn.execute("select count(*) from pgflow.runs where status = 'failed'")
            if await cur.fetchone() != (0,):
                raise RuntimeError(f"{config.label}: some runs failed")
            return runs * 3 / (time.monotonic() - began)
    finally:
        stack.drop(name)


# The run and its trace context in one statement, so the producer's side costs about what a
# plain start_flow does (start_flow_with_states_traced also builds a snapshot).
_START_TRACED = (
    "with run as (select run_id from pgflow.start_flow(%s, %s))"
    " insert into pgflow.run_trace_contexts (run_id, traceparent) select run_id, %s from run"
)


def _parent(i: int) -> str:
    """A W3C traceparent of a trace of its own for run ``i``."""
    return f"00-{i + 1:032x}-{i + 1:016x}-01"


def traced() -> dict[str, Any]:
    """Fresh SDK providers that record everything, kept in memory."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return {"tracer_provider": tracer_provider, "meter_provider": meter_provider}


async def main_async(args: argparse.Namespace) -> int:
    stack = Stack()
    try:
        configs = [
            Config("off (no SDK configured)"),
            Config("on (SDK, every span and metric)", traced),
            Config("on, runs started in a trace (contexts read back)", traced, traced_runs=True),
        ]
        for repeat in range(args.repeats):
            for config in configs:
                rate = await measure(stack, config, args.runs, args.timeout)
                config.rates.append(rate)
                progress(f"repeat {repeat + 1}: {config.label}: {rate:.0f} tasks/s")
        off = median(configs[0].rates)
        print(describe_machine(stack.admin_url))
        print()
        print(
            markdown_table(
                ["tracing", "tasks/s (median)", "/ off", "µs per task", "per repeat"],
                [
                    [
                        c.label,
                        f"{median(c.rates):.0f}",
                        f"{median(c.rates) / off:.2f}",
                        f"{(1 / median(c.rates) - 1 / off) * 1e6:.0f}",
                        " ".join(f"{r:.0f}" for r in c.rates),
                    ]
                    for c in configs
                ],
            )
        )
        return 0
    finally:
        stack.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.otel_overhead",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--runs", type=int, default=1000, help="chain runs per measurement (1000)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each setting (3)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per measurement")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

"""pgflow-py next to pgflow's own TypeScript packages, in one run on one server.

Two comparisons, each between a pgflow-py part and its official counterpart doing the same
work against the same SQL (pgflow-py's) on the same PostgreSQL server:

* **clients**: pgflow-py's ``PgflowClient`` over supabase-py against ``@pgflow/client`` 0.8.1
  over supabase-js, both talking to one Supabase stand-in (Realtime + PostgREST) in a process
  of its own. Both are measured with :mod:`benchmarks.client_latency`'s flow, driver and
  clocks: the event latency runs a 3-step chain one task at a time from this process and
  times each event from its commit (``clock_timestamp()`` just before it) to the client's
  callback (Node stamps the moment ``@pgflow/client`` hands it on); ``start_flow`` is timed
  from the call to its return with a confirmed subscription, one run after another, while a
  worker process runs the steps.
* **workers**: a ``pgflow worker`` process (async no-op handlers) against a Node process whose
  task loop is built on ``@pgflow/core``'s ``PgflowSqlClient`` and shaped like the Edge Worker
  (pool of 4 connections, batches of 10, 10 tasks in flight, no-op handlers). Both run the
  same 3-step chain flow, each in a fresh copy of the same template database, timed the way
  :mod:`benchmarks.worker_throughput` times the worker (server clock, first ``start_flow`` to
  the last completed run).

The npm packages are installed into a scratch folder under the system temp directory.

Run: ``uv run python -m benchmarks.ts_side_by_side`` (``--help`` for sizes); the whole suite,
SQL included, is ``uv run python -m benchmarks.suite``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from benchmarks import client_latency, worker_throughput
from benchmarks._common import (
    LoadLog,
    ServerCpu,
    WorkerProcess,
    describe_machine,
    markdown_table,
    median,
    mib,
    percentile,
    proc_sample,
    progress,
)
from pgflow_worker import compile_flow
from tests._stack import Stack
from tests.interop._node import (
    PACKAGES,
    NodeError,
    NodeSession,
    NodeTaskLoop,
    NodeUnavailable,
    node_project,
)

TS_SETTLE_MS = 300
"""``@pgflow/client``'s default ``realtimeStabilizationDelayMs``: it waits this long after
SUBSCRIBED before calling the start RPC."""

EVENT_P99_LIMIT_MS = 5.0
"""The most our client's event latency (commit to callback) may take at p99."""

WAIT = client_latency.WAIT
STEPS = client_latency.STEPS
EMITS = client_latency.EMITS


# -- figures -----------------------------------------------------------------------------------


@dataclass
class ClientSide:
    """One client's latencies, in seconds: ``start_flow`` calls and commit → callback."""

    client: str
    start: list[float]
    events: client_latency.Latencies

    def start_ms(self, q: float) -> float:
        return percentile(self.start, q) * 1000

    def event_ms(self, q: float) -> float:
        return self.events.p(q) * 1000


@dataclass
class ClientFigures:
    """pgflow-py's client, the TypeScript client as shipped, and the TypeScript client with
    its settle delay set to 0 (what the delay costs; events are not measured for it)."""

    ours: ClientSide
    theirs: ClientSide
    theirs_no_settle: ClientSide | None


@dataclass
class WorkerFigures:
    """Repeats of the Python worker and of the Node task loop, in the same order."""

    runs: int
    ours: list[worker_throughput.WorkerResult]
    theirs: list[worker_throughput.WorkerResult]

    @property
    def ratios(self) -> list[float]:
        return sorted(o.rate / t.rate for o, t in zip(self.ours, self.theirs, strict=True))


# -- clients -----------------------------------------------------------------------------------


def _event_key(payload: dict[str, Any]) -> str:
    """``step:<slug>:<status>`` or ``run:<status>`` from a raw broadcast payload."""
    step = payload.get("step_slug")
    return f"step:{step}:{payload['status']}" if step else f"run:{payload['status']}"


async def _arrivals(
    node: NodeSession, run_id: str, seen: dict[str, float], keys: Sequence[str]
) -> None:
    """Read the client's reports until every key of ``keys`` has arrived for ``run_id``;
    ``seen`` gets each key's first arrival (``time.monotonic()`` seconds)."""
    while not all(k in seen for k in keys):
        message = await node.next_event(WAIT)
        payload = message.get("payload")
        if isinstance(payload, dict) and payload.get("run_id") == run_id:
            seen.setdefault(_event_key(payload), float(message["at"]) / 1000)


async def ts_event_latency(node: NodeSession, dsn: str, runs: int) -> client_latency.Latencies:
    """``client_latency.event_latency``'s procedure with ``@pgflow/client`` as the client: the
    same driver, the same stamped commits; Node stamps each event as the client gets it."""
    result = client_latency.Latencies()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as driver:
        for r in range(runs):
            started = await node.request("start", flow_slug=client_latency.SLUG, input={"run": r})
            run_id = started["run_id"]
            seen: dict[str, float] = {}
            for step in STEPS:
                cur = await driver.execute(
                    "select msg_id from pgmq.read(%s, 30, 10)", (client_latency.SLUG,)
                )
                ids = [row[0] for row in await cur.fetchall()]
                await driver.execute(
                    "select 1 from pgflow.start_tasks(%s, %s::bigint[], %s)",
                    (client_latency.SLUG, ids, client_latency.BENCH_WORKER),
                )
                cur = await driver.execute(
                    client_latency.STAMPED_COMPLETE, (run_id, step, 0, Jsonb({"step": step}))
                )
                row = await cur.fetchone()
                assert row is not None
                # Node stamps on the monotonic clock; move the commit's wall-clock stamp there.
                committed = time.monotonic() - (time.time() - row[0])
                with contextlib.suppress(NodeError):
                    await _arrivals(node, run_id, seen, EMITS[step])
                for key in EMITS[step]:
                    if key in seen:
                        result.values.append(seen[key] - committed)
                    else:
                        result.missed += 1
            await node.request("dispose", run_id=run_id)
    return result


async def ts_start_latency(node: NodeSession, runs: int) -> list[float]:
    """``startFlow`` durations (s) as Node times them, one call after another."""
    durations = []
    for r in range(runs):
        started = await node.request("start", flow_slug=client_latency.SLUG, input={"run": r})
        durations.append(float(started["ms"]) / 1000)
    return durations


def _ts_session(standin: client_latency.StandInProcess, settle_ms: int | None) -> NodeSession:
    config = {"url": standin.url, "key": standin.key, "settle_ms": settle_ms}
    return NodeSession("client_session.mjs", config)


async def _measure_clients(
    dsn: str, standin: client_latency.StandInProcess, *, runs: int, start_runs: int
) -> ClientFigures:
    async with client_latency.pgflow_client("supabase", dsn, standin) as client:
        ours_events = await client_latency.event_latency(client, dsn, runs)
    async with _ts_session(standin, None) as node:
        theirs_events = await ts_event_latency(node, dsn, runs)
    worker = WorkerProcess(
        "benchmarks.worker_throughput:chain",
        dsn,
        "--log-level",
        "WARNING",
        "--poll-interval-ms",
        "10",
    )
    with worker:
        await client_latency.worker_ready(worker, dsn)
        async with client_latency.pgflow_client("supabase", dsn, standin) as client:
            ours_start = (await client_latency.start_latency(client, dsn, start_runs)).durations
        worker.check_alive()
        async with _ts_session(standin, None) as node:
            theirs_start = await ts_start_latency(node, start_runs)
        async with _ts_session(standin, 0) as node:
            no_settle = await ts_start_latency(node, start_runs)
        worker.check_alive()
    figures = ClientFigures(
        ClientSide("pgflow-py PgflowClient (supabase-py)", ours_start, ours_events),
        ClientSide("@pgflow/client 0.8.1 (supabase-js)", theirs_start, theirs_events),
        ClientSide(
            "@pgflow/client 0.8.1 (supabase-js), realtimeStabilizationDelayMs=0",
            no_settle,
            client_latency.Latencies(),
        ),
    )
    for side in (figures.ours, figures.theirs):
        _report_client(side)
    return figures


def measure_clients(stack: Stack, *, runs: int = 50, start_runs: int = 60) -> ClientFigures:
    """Both clients over one stand-in process, on a fresh database of pgflow-py's SQL, with
    ``client_latency``'s flow, driver and timing (``runs`` for events, ``start_runs`` starts)."""
    name = stack.clone("ours")
    dsn = stack.url(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in compile_flow(worker_throughput.chain):
                conn.execute(statement.encode())
            conn.execute(
                "insert into pgflow.workers (worker_id, queue_name, function_name)"
                " values (%s, %s, 'benchmark')",
                (client_latency.BENCH_WORKER, client_latency.SLUG),
            )
        with client_latency.StandInProcess(dsn) as standin:
            return asyncio.run(_measure_clients(dsn, standin, runs=runs, start_runs=start_runs))
    finally:
        stack.drop(name)


def _report_client(side: ClientSide) -> None:
    progress(
        f"  client  {side.client}: start_flow p50 {side.start_ms(50):6.1f} ms,"
        f" p99 {side.start_ms(99):6.1f} ms; event p50 {side.event_ms(50):5.1f} ms,"
        f" p99 {side.event_ms(99):5.1f} ms, {side.events.missed} missed"
    )


# -- workers -----------------------------------------------------------------------------------


def run_node_loop_scenario(
    stack: Stack, server: ServerCpu, *, runs: int, timeout: float = 900.0
) -> worker_throughput.WorkerResult:
    """The PgflowSqlClient task loop on ``benchmarks.worker_throughput``'s chain flow, timed
    exactly as ``worker_throughput.run_worker_scenario`` times the Python worker."""
    flow = worker_throughput.chain
    name = stack.clone("ours")
    url = stack.url(name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in compile_flow(flow):
                conn.execute(statement.encode())
            with NodeTaskLoop(url, flow.slug) as loop:
                loop.wait_registered(conn, timeout=60)
                before = proc_sample(loop.pid)
                server_before = server.sample()
                started = conn.execute("select clock_timestamp()").fetchone()
                assert started is not None
                worker_throughput.start_runs(conn, flow.slug, "chain", runs)
                worker_throughput.wait_for_runs(conn, [loop], flow.slug, timeout)
                after = proc_sample(loop.pid)
                server_cpu = server.sample() - server_before
                summary = loop.stop()
            finished, tasks = worker_throughput.finished_and_tasks(conn, flow.slug)
        if summary["failed"]:
            raise RuntimeError(f"the task loop failed {summary['failed']} task(s)")
        return worker_throughput.WorkerResult(
            "chain",
            "node",
            tasks,
            (finished - started[0]).total_seconds(),
            after.cpu - before.cpu,
            server_cpu,
            after.rss,
        )
    finally:
        stack.drop(name)


def run_python_worker_scenario(
    stack: Stack, server: ServerCpu, *, runs: int, timeout: float = 900.0
) -> worker_throughput.WorkerResult:
    """``worker_throughput.run_worker_scenario`` with the worker's default settings."""
    options = argparse.Namespace(concurrency=None, batch_size=None, timeout=timeout)
    return worker_throughput.run_worker_scenario(
        stack, server, "chain", "async", size=runs, args=options
    )


def _report_worker(label: str, result: worker_throughput.WorkerResult) -> None:
    progress(
        f"  worker  {label:<28} {result.tasks:>6} tasks in {result.seconds:6.2f} s"
        f" = {result.rate:7,.0f} tasks/s, CPU {result.cpu_per_task * 1e6:5.0f}"
        f" + {result.server_cpu_per_task * 1e6:5.0f} µs/task (process + server)"
    )


def measure_workers(stack: Stack, *, runs: int = 1000, repeats: int = 3) -> WorkerFigures:
    """Alternate the Python worker and the Node task loop, ``repeats`` times each."""
    figures = WorkerFigures(runs, [], [])
    server = ServerCpu(stack.admin_url)
    for repeat in range(repeats):
        first_ours = repeat % 2 == 0
        for which in ("ours", "theirs") if first_ours else ("theirs", "ours"):
            if which == "ours":
                result = run_python_worker_scenario(stack, server, runs=runs)
                figures.ours.append(result)
                _report_worker("pgflow-py worker process", result)
            else:
                result = run_node_loop_scenario(stack, server, runs=runs)
                figures.theirs.append(result)
                _report_worker("PgflowSqlClient loop (Node)", result)
    return figures


# -- report ------------------------------------------------------------------------------------


def client_table(figures: ClientFigures) -> str:
    rows = []
    for side in (figures.ours, figures.theirs, figures.theirs_no_settle):
        if side is None:
            continue
        measured = bool(side.events.values)
        rows.append(
            [
                side.client,
                f"{side.start_ms(50):,.1f}",
                f"{side.start_ms(99):,.1f}",
                f"{side.event_ms(50):,.2f}" if measured else "—",
                f"{side.event_ms(99):,.2f}" if measured else "—",
                f"{side.events.missed}" if measured else "—",
            ]
        )
    return markdown_table(
        [
            "client",
            "start_flow p50 ms",
            "start_flow p99 ms",
            "event p50 ms",
            "event p99 ms",
            "events missed",
        ],
        rows,
    )


def worker_table(figures: WorkerFigures) -> str:
    rows = []
    for label, results in (
        ("pgflow-py worker process (async no-op handlers)", figures.ours),
        ("PgflowSqlClient task loop, Node (no-op handlers)", figures.theirs),
    ):
        rows.append(
            [
                label,
                f"{median([r.rate for r in results]):,.0f}",
                f"{median([r.cpu_per_task for r in results]) * 1e6:,.0f}",
                f"{median([r.server_cpu_per_task for r in results]) * 1e6:,.0f}",
                mib(max(r.rss for r in results)),
            ]
        )
    return markdown_table(
        ["worker", "tasks/s", "worker CPU µs/task", "server CPU µs/task", "RSS at the end"],
        rows,
    )


@dataclass(frozen=True)
class Row:
    """One line of a summary table: a measure, pgflow-py's figure, what it is compared with,
    the ratio between them, and the goals the line must meet.

    ``ratio`` is pgflow-py's advantage (rates: ours / theirs; latencies: theirs / ours), so
    the goal is a floor; with ``at_most`` it is a plain ratio whose goal is a ceiling.
    ``ceiling`` is ``(value, limit, unit)``: pgflow-py's own figure, which must stay at or
    below ``limit``, whatever the ratio.
    """

    measure: str
    ours: str
    other: str
    ratio: float
    goal: float | None
    spread: str = ""
    at_most: bool = False
    ceiling: tuple[float, float, str] | None = None

    @property
    def met(self) -> bool | None:
        checks = []
        if self.goal is not None:
            checks.append(self.ratio <= self.goal if self.at_most else self.ratio >= self.goal)
        if self.ceiling is not None:
            value, limit, _ = self.ceiling
            checks.append(value <= limit)
        return all(checks) if checks else None

    def cells(self) -> list[str]:
        goals = []
        if self.goal is not None:
            goals.append(f"≤ {self.goal:g}" if self.at_most else f"≥ {self.goal:g}x")
        if self.ceiling is not None:
            _, limit, unit = self.ceiling
            goals.append(f"≤ {limit:g} {unit}")
        ratio = f"{self.ratio:.2f}" if self.at_most else f"{self.ratio:.2f}x"
        if self.spread:
            ratio += f" ({self.spread})"
        met = {None: "—", True: "yes", False: "**no**"}[self.met]
        return [self.measure, self.ours, self.other, f"**{ratio}**", ", ".join(goals) or "—", met]


SUMMARY_HEADERS = ["measure", "pgflow-py", "compared with", "ratio", "goal", "met"]


def client_rows(figures: ClientFigures) -> list[Row]:
    ours, theirs = figures.ours, figures.theirs
    return [
        Row(
            "client: start_flow to a confirmed run, p50",
            f"{ours.start_ms(50):.1f} ms",
            f"{theirs.start_ms(50):.1f} ms (@pgflow/client)",
            theirs.start_ms(50) / ours.start_ms(50),
            10.0,
        ),
        Row(
            "client: start_flow to a confirmed run, p99",
            f"{ours.start_ms(99):.1f} ms",
            f"{theirs.start_ms(99):.1f} ms (@pgflow/client)",
            theirs.start_ms(99) / ours.start_ms(99),
            2.0,
        ),
        Row(
            "client: start_flow p50 against the TS settle delay alone",
            f"{ours.start_ms(50):.1f} ms",
            f"{TS_SETTLE_MS} ms (@pgflow/client's settle delay)",
            TS_SETTLE_MS / ours.start_ms(50),
            5.0,
        ),
        Row(
            "client: event latency (commit to callback), p50",
            f"{ours.event_ms(50):.2f} ms",
            f"{theirs.event_ms(50):.2f} ms (@pgflow/client)",
            theirs.event_ms(50) / ours.event_ms(50),
            None,
        ),
        Row(
            "client: event latency (commit to callback), p99",
            f"{ours.event_ms(99):.2f} ms",
            f"{theirs.event_ms(99):.2f} ms (@pgflow/client)",
            theirs.event_ms(99) / ours.event_ms(99),
            None,
            ceiling=(ours.event_ms(99), EVENT_P99_LIMIT_MS, "ms"),
        ),
    ]


def worker_rows(figures: WorkerFigures) -> list[Row]:
    ours = median([r.rate for r in figures.ours])
    theirs = median([r.rate for r in figures.theirs])
    ratios = figures.ratios
    spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}" if len(ratios) > 1 else ""
    return [
        Row(
            f"worker vs PgflowSqlClient loop (Node): {figures.runs:,} runs of a 3-step chain,"
            " tasks/s",
            f"{ours:,.0f}",
            f"{theirs:,.0f} (@pgflow/core task loop)",
            median(ratios),
            1.5,
            spread=spread,
        )
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ts_side_by_side",
        description="pgflow-py's client and worker next to @pgflow/client and @pgflow/core.",
    )
    parser.add_argument(
        "--event-runs", type=int, default=50, help="runs per client for events; 6 each (50)"
    )
    parser.add_argument(
        "--start-runs", type=int, default=60, help="start_flow calls per client (60)"
    )
    parser.add_argument("--runs", type=int, default=1000, help="chain runs per worker (1000)")
    parser.add_argument("--repeats", type=int, default=3, help="worker repeats each (3)")
    parser.add_argument("--skip-clients", action="store_true", help="only the workers")
    parser.add_argument("--skip-workers", action="store_true", help="only the clients")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        node_project()
    except NodeUnavailable as exc:
        print(f"cannot run pgflow's TypeScript packages: {exc}", file=sys.stderr)
        return 1
    load = LoadLog()
    load.note()
    began = time.perf_counter()
    stack = Stack()
    try:
        stack.template("ours")
        machine = describe_machine(stack.admin_url)
        rows: list[Row] = []
        sections: list[str] = []
        if not args.skip_clients:
            clients = measure_clients(stack, runs=args.event_runs, start_runs=args.start_runs)
            load.note()
            rows += client_rows(clients)
            sections.append(client_table(clients))
        if not args.skip_workers:
            workers = measure_workers(stack, runs=args.runs, repeats=args.repeats)
            load.note()
            rows += worker_rows(workers)
            sections.append(worker_table(workers))
        packages = ", ".join(f"{name} {version}" for name, version in PACKAGES.items())
        print(f"Machine: {machine}; {load.summary()}.")
        print(f"npm packages: {packages}.\n")
        print(markdown_table(SUMMARY_HEADERS, [row.cells() for row in rows]))
        for section in sections:
            print()
            print(section)
        print(f"\n(benchmark time {time.perf_counter() - began:.0f} s)")
        return 0
    finally:
        stack.close()


if __name__ == "__main__":
    sys.exit(main())

"""Worker throughput: one ``pgflow worker`` process with no-op handlers, against the SQL-only loop.

The worker runs as a real process (``python -m pgflow_worker worker``) with its default
settings, on the flows below. Each scenario is measured twice in the same invocation, on the
same server, in fresh databases: by :mod:`benchmarks.sql_loop`'s driver (one connection calling
the SQL with nothing else in the way, the ceiling for any worker) and by the worker. Reported:

* tasks/second of the worker as a ratio to the SQL loop (goal: at least 0.8);
* CPU seconds per task of the worker process, against the SQL loop's own client CPU per task;
* resident memory of one worker process after 1,000 tasks and after many more (goal: flat
  within 10%).

Run: ``uv run python -m benchmarks.worker_throughput`` (``--help`` for sizes and repeats).
This module also holds the benchmark flows, which the worker process imports.
"""

from __future__ import annotations

import argparse
import contextlib
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from benchmarks import sql_loop
from benchmarks._common import (
    LoadLog,
    ProcSample,
    ServerCpu,
    WorkerProcess,
    describe_machine,
    markdown_table,
    median,
    mib,
    progress,
)
from pgflow_worker import Flow
from tests._stack import Stack

# -- the flows the worker runs (same shapes as the SQL loop's, handlers that do nothing) ------

chain = Flow("bench_chain")


@chain.step
async def a(input: Any) -> dict[str, str]:
    return {"step": "a"}


@chain.step(depends_on=[a])
async def b(input: Any) -> dict[str, str]:
    return {"step": "b"}


@chain.step(depends_on=[b])
async def c(input: Any) -> dict[str, str]:
    return {"step": "c"}


fanout = Flow("bench_map")


@fanout.map
async def each(x: Any) -> Any:
    return x


chain_sync = Flow("bench_chain_sync")


@chain_sync.step(slug="a")
def a_sync(input: Any) -> dict[str, str]:
    return {"step": "a"}


@chain_sync.step(slug="b", depends_on=["a"])
def b_sync(input: Any) -> dict[str, str]:
    return {"step": "b"}


@chain_sync.step(slug="c", depends_on=["b"])
def c_sync(input: Any) -> dict[str, str]:
    return {"step": "c"}


fanout_sync = Flow("bench_map_sync")


@fanout_sync.map(slug="each")
def each_sync(x: Any) -> Any:
    return x


FLOWS = {
    ("chain", "async"): "chain",
    ("chain", "sync"): "chain_sync",
    ("map", "async"): "fanout",
    ("map", "sync"): "fanout_sync",
}


def target(scenario: str, handlers: str) -> tuple[str, Flow]:
    """The ``MODULE:FLOW`` the worker process loads, and the flow itself."""
    name = FLOWS[(scenario, handlers)]
    flow = globals()[name]
    assert isinstance(flow, Flow)
    return f"benchmarks.worker_throughput:{name}", flow


# -- measuring the worker ----------------------------------------------------------------------


@dataclass
class WorkerResult:
    """One scenario run by the worker process."""

    scenario: str
    handlers: str
    tasks: int
    seconds: float
    cpu: float
    server_cpu: float
    rss: int = 0
    """Resident memory of the worker process at the end, in bytes."""

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_task(self) -> float:
        return self.cpu / self.tasks if self.tasks else 0.0

    @property
    def server_cpu_per_task(self) -> float:
        return self.server_cpu / self.tasks if self.tasks else 0.0


@dataclass
class LoopResult:
    """One scenario run by the SQL-only loop, with this process's and the server's CPU."""

    result: sql_loop.Result
    cpu: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.result.rate

    @property
    def cpu_per_task(self) -> float:
        return self.cpu / self.result.tasks if self.result.tasks else 0.0

    @property
    def server_cpu_per_task(self) -> float:
        return self.server_cpu / self.result.tasks if self.result.tasks else 0.0


def worker_options(args: argparse.Namespace) -> list[str]:
    options = ["--log-level", "WARNING"]
    if args.concurrency is not None:
        options += ["--concurrency", str(args.concurrency)]
    if args.batch_size is not None:
        options += ["--batch-size", str(args.batch_size)]
    return options


def start_runs(conn: psycopg.Connection[Any], slug: str, scenario: str, count: int) -> None:
    """Start runs exactly as the SQL loop does: one ``start_flow`` call after another."""
    if scenario == "chain":
        for i in range(count):
            conn.execute("select 1 from pgflow.start_flow(%s, %s)", (slug, Jsonb({"run": i})))
    else:
        conn.execute("select 1 from pgflow.start_flow(%s, %s)", (slug, Jsonb(list(range(count)))))


class Watched(Protocol):
    """A process that runs a flow's tasks: a worker process, or the Node task loop."""

    def check_alive(self) -> None: ...

    def log_tail(self, limit: int = 3000) -> str: ...


def wait_for_runs(
    conn: psycopg.Connection[Any], workers: Sequence[Watched], slug: str, timeout: float
) -> None:
    """Wait until no run of ``slug`` is unfinished (failing on a failed run or a dead worker)."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(
            "select count(*) filter (where status = 'started'),"
            " count(*) filter (where status = 'failed') from pgflow.runs where flow_slug = %s",
            (slug,),
        ).fetchone()
        assert row is not None
        unfinished, failed = row
        if failed:
            raise RuntimeError(f"{failed} run(s) of {slug!r} failed:\n{workers[0].log_tail()}")
        if not unfinished:
            return
        for worker in workers:
            worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{unfinished} run(s) of {slug!r} unfinished after {timeout:.0f} s")
        time.sleep(0.05)


def finished_and_tasks(conn: psycopg.Connection[Any], slug: str) -> tuple[datetime, int]:
    """When the last run of ``slug`` completed (the server's clock), and its completed tasks."""
    row = conn.execute(
        "select max(completed_at),"
        " (select count(*) from pgflow.step_tasks where flow_slug = %s and status = 'completed')"
        " from pgflow.runs where flow_slug = %s",
        (slug, slug),
    ).fetchone()
    assert row is not None
    return row[0], int(row[1])


def run_worker_scenario(
    stack: Stack,
    server: ServerCpu,
    scenario: str,
    handlers: str,
    *,
    size: int,
    args: argparse.Namespace,
    profile_to: Path | None = None,
) -> WorkerResult:
    """Start the worker, start the runs, and time from the first ``start_flow`` to the last
    completed run (both read from the server's clock)."""
    name = stack.clone("ours")
    url = stack.url(name)
    spec, flow = target(scenario, handlers)
    try:
        profiler = ["-m", "cProfile", "-o", str(profile_to)] if profile_to is not None else []
        worker = WorkerProcess(spec, url, *worker_options(args), python_options=profiler)
        with worker, psycopg.connect(url, autocommit=True) as conn:
            worker.wait_registered(conn, flow.slug, timeout=60)
            before = worker.sample()
            server_before = server.sample()
            started = conn.execute("select clock_timestamp()").fetchone()
            assert started is not None
            start_runs(conn, flow.slug, scenario, size)
            wait_for_runs(conn, [worker], flow.slug, timeout=args.timeout)
            after = worker.sample()
            server_cpu = server.sample() - server_before
            finished, tasks = finished_and_tasks(conn, flow.slug)
            code = worker.stop()
            if code != 0:
                raise RuntimeError(f"the worker exited with code {code}:\n{worker.log_tail()}")
        seconds = (finished - started[0]).total_seconds()
        return WorkerResult(
            scenario, handlers, tasks, seconds, after.cpu - before.cpu, server_cpu, after.rss
        )
    finally:
        stack.drop(name)


def database_cost(stack: Stack, server: ServerCpu, times: int = 3) -> float:
    """Server CPU seconds to create and drop a scenario's database (the median of a few).

    The SQL loop does both inside the window where its server CPU is measured; this is
    subtracted from it.
    """
    costs = []
    for _ in range(times):
        before = server.sample()
        stack.drop(stack.clone("ours"))
        costs.append(server.sample() - before)
    return median(costs)


def run_loop_scenario(
    stack: Stack, server: ServerCpu, scenario: str, *, size: int, batch: int, setup_cpu: float
) -> LoopResult:
    """The SQL loop on one scenario, with its client's and the server's CPU (less
    ``setup_cpu``, the server's cost of creating and dropping the database)."""
    server_before = server.sample()
    cpu = time.process_time()
    result = sql_loop.run_scenario(
        stack,
        "ours",
        scenario,
        runs=size,
        size=size,
        batch=batch,
        budget=None,
        profile=False,
    )
    server_cpu = max(server.sample() - server_before - setup_cpu, 0.0)
    return LoopResult(result, time.process_time() - cpu, server_cpu)


# -- memory over many tasks --------------------------------------------------------------------


@dataclass
class MemoryPoint:
    tasks: int
    sample: ProcSample


def memory_curve(stack: Stack, args: argparse.Namespace) -> list[MemoryPoint]:
    """One worker process through rounds of 3-step chain runs, sampled after each round.

    The first round is 1,000 tasks; later rounds are bigger, up to ``--memory-tasks``.
    Many short runs exercise everything the worker keeps per run and per task.
    """
    name = stack.clone("ours")
    url = stack.url(name)
    spec, flow = target("chain", args.handlers[0])
    points: list[MemoryPoint] = []
    try:
        with (
            WorkerProcess(spec, url, *worker_options(args)) as worker,
            psycopg.connect(url, autocommit=True) as conn,
        ):
            worker.wait_registered(conn, flow.slug, timeout=60)
            points.append(MemoryPoint(0, worker.sample()))
            done_runs = 0
            target_runs = -(-args.memory_tasks // 3)
            while done_runs < target_runs:
                round_runs = 334 if done_runs == 0 else min(3334, target_runs - done_runs)
                start_runs(conn, flow.slug, "chain", round_runs)
                wait_for_runs(conn, [worker], flow.slug, timeout=args.timeout)
                done_runs += round_runs
                point = MemoryPoint(done_runs * 3, worker.sample())
                points.append(point)
                progress(
                    f"  memory   {point.tasks:>7,} tasks: RSS {mib(point.sample.rss)},"
                    f" peak {mib(point.sample.hwm)}, CPU {point.sample.cpu:.1f} s"
                )
            worker.stop()
    finally:
        stack.drop(name)
    return points


# -- report ------------------------------------------------------------------------------------


def scenario_label(scenario: str, args: argparse.Namespace) -> str:
    if scenario == "chain":
        return f"{args.runs:,} runs of a 3-step chain"
    return f"1 run, root map of {args.map_size:,}"


def _label(scenario: str, handlers: str, args: argparse.Namespace) -> str:
    return f"{scenario_label(scenario, args)}, {handlers} handlers"


def throughput_table(
    workers: dict[tuple[str, str], list[WorkerResult]],
    loops: dict[str, list[LoopResult]],
    args: argparse.Namespace,
) -> str:
    """Rates, and the worker/loop ratio of each repeat (both measured back to back)."""
    rows = []
    for (scenario, handlers), results in workers.items():
        loop = loops[scenario]
        ratios = sorted(w.rate / s.rate for w, s in zip(results, loop, strict=True))
        rows.append(
            [
                _label(scenario, handlers, args),
                f"{median([r.rate for r in loop]):,.0f}",
                f"{median([r.rate for r in results]):,.0f}",
                f"**{median(ratios):.2f}**",
                " ".join(f"{r:.2f}" for r in ratios),
            ]
        )
    return markdown_table(
        [
            "scenario",
            "SQL loop tasks/s",
            "worker tasks/s",
            "worker / SQL loop",
            "per repeat",
        ],
        rows,
    )


def cpu_table(
    workers: dict[tuple[str, str], list[WorkerResult]],
    loops: dict[str, list[LoopResult]],
    args: argparse.Namespace,
) -> str:
    """CPU per task of the client side (worker process or SQL loop) and of the server."""
    rows = []
    for (scenario, handlers), results in workers.items():
        loop = loops[scenario]
        loop_client = median([r.cpu_per_task for r in loop])
        loop_server = median([r.server_cpu_per_task for r in loop])
        client = median([r.cpu_per_task for r in results])
        server = median([r.server_cpu_per_task for r in results])
        rows.append(
            [
                _label(scenario, handlers, args),
                f"{loop_client * 1e6:,.0f}",
                f"{client * 1e6:,.0f}",
                f"**{client / loop_client:.1f}**",
                f"{loop_server * 1e6:,.0f}",
                f"{server * 1e6:,.0f}",
                f"**{server / loop_server:.2f}**",
                f"{(client + server) / (loop_client + loop_server):.2f}",
            ]
        )
    return markdown_table(
        [
            "scenario",
            "SQL loop process",
            "worker process",
            "ratio",
            "server (SQL loop)",
            "server (worker)",
            "ratio",
            "total ratio",
        ],
        rows,
    )


def memory_table(points: list[MemoryPoint]) -> str:
    first = next(p for p in points if p.tasks > 0)
    rows = [
        [
            f"{p.tasks:,}",
            mib(p.sample.rss),
            f"{p.sample.rss / first.sample.rss:.3f}",
            mib(p.sample.hwm),
            f"{p.sample.cpu:.1f}",
        ]
        for p in points
    ]
    return markdown_table(
        ["tasks done", "worker RSS", "RSS / RSS at first 1,000", "peak RSS", "CPU s (total)"],
        rows,
    )


def print_profile(path: Path, limit: int = 30) -> None:
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.worker_throughput",
        description="Worker process throughput, CPU and memory against the SQL-only loop.",
    )
    parser.add_argument("--runs", type=int, default=1000, help="runs of the chain flow (1000)")
    parser.add_argument(
        "--map-size", type=int, default=10_000, help="elements of the root map (10000)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="repeats of each scenario; medians (3); 0 measures only the memory curve",
    )
    parser.add_argument(
        "--handlers",
        nargs="+",
        choices=("async", "sync"),
        default=["async"],
        help="handler kinds to measure: async, sync or both (async); memory uses the first",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=("chain", "map"),
        default=["chain", "map"],
        help="throughput scenarios (chain map)",
    )
    parser.add_argument(
        "--memory-tasks",
        type=int,
        default=20_000,
        help="tasks for the memory curve; 0 skips it (20000; docs/benchmarks.md uses 100000)",
    )
    parser.add_argument("--concurrency", type=int, help="worker --concurrency (its default)")
    parser.add_argument("--batch-size", type=int, help="worker --batch-size (its default)")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="longest wait for one scenario (900 s)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run each worker under cProfile and print where its time goes (slows it down)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load = LoadLog()
    load.note()
    began = time.perf_counter()
    stack = Stack()
    try:
        stack.template("ours")
        machine = describe_machine(stack.admin_url)
        server = ServerCpu(stack.admin_url)
        setup_cpu = database_cost(stack, server) if args.repeats else 0.0
        workers: dict[tuple[str, str], list[WorkerResult]] = {}
        loops: dict[str, list[LoopResult]] = {}
        for repeat in range(args.repeats):
            for scenario in args.scenarios:
                size = args.runs if scenario == "chain" else args.map_size
                loop = run_loop_scenario(
                    stack, server, scenario, size=size, batch=10, setup_cpu=setup_cpu
                )
                loops.setdefault(scenario, []).append(loop)
                progress(
                    f"#{repeat + 1} {scenario:<6} SQL loop     {loop.result.tasks:>6} tasks"
                    f" in {loop.result.seconds:6.2f} s = {loop.rate:7,.0f} tasks/s,"
                    f" CPU {loop.cpu_per_task * 1e6:4.0f} + {loop.server_cpu_per_task * 1e6:4.0f}"
                    f" µs/task (client + server)  (load {load.note():.2f})"
                )
                for handlers in args.handlers:
                    with contextlib.ExitStack() as scratch:
                        profile_to = None
                        if args.profile:
                            folder = scratch.enter_context(tempfile.TemporaryDirectory())
                            profile_to = Path(folder) / "worker.prof"
                        result = run_worker_scenario(
                            stack,
                            server,
                            scenario,
                            handlers,
                            size=size,
                            args=args,
                            profile_to=profile_to,
                        )
                        if profile_to is not None:
                            print_profile(profile_to)
                    workers.setdefault((scenario, handlers), []).append(result)
                    progress(
                        f"#{repeat + 1} {scenario:<6} worker {handlers:<5} {result.tasks:>6} tasks"
                        f" in {result.seconds:6.2f} s = {result.rate:7,.0f} tasks/s,"
                        f" CPU {result.cpu_per_task * 1e6:4.0f}"
                        f" + {result.server_cpu_per_task * 1e6:4.0f} µs/task,"
                        f" ratio {result.rate / loop.rate:.2f}  (load {load.note():.2f})"
                    )
        points = memory_curve(stack, args) if args.memory_tasks else []
        load.note()
        print(f"Machine: {machine}; {load.summary()}.")
        if workers:
            print()
            print(throughput_table(workers, loops, args))
            print(
                f"\nMedians of {args.repeats} repeats; each repeat runs the SQL loop, then the"
                " worker, in fresh databases. CPU µs per task (medians), of the process playing"
                " the worker and of the PostgreSQL server (for the loop, less"
                f" {setup_cpu:.2f} s for creating and dropping its database):\n"
            )
            print(cpu_table(workers, loops, args))
        if points:
            final = points[-1]
            first = next(p for p in points if p.tasks > 0)
            print()
            print(memory_table(points))
            print(
                f"\nRSS after {final.tasks:,} tasks / after {first.tasks:,} tasks:"
                f" **{final.sample.rss / first.sample.rss:.3f}**"
                f" (peak: {final.sample.hwm / first.sample.hwm:.3f})"
            )
        print(f"\n(benchmark time {time.perf_counter() - began:.0f} s)")
        return 0
    finally:
        stack.close()


if __name__ == "__main__":
    sys.exit(main())

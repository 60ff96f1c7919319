"""Scaling out: 1, 2 and 4 ``pgflow worker`` processes on one database, and the server's CPU
per task, which tells how many tasks per second a PostgreSQL server of N cores carries.

Each repeat runs every process count once, in a fresh database of the same server: the workers
are started and registered first, then the runs are started one ``start_flow`` after another,
and the time is taken from the first start to the last completed run (both on the server's
clock). The workers have no-op handlers, so every figure is pgflow's own cost.

Run: ``uv run python -m benchmarks.scale_workers`` (``--help`` for sizes and repeats).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from benchmarks._common import (
    LoadLog,
    ServerCpu,
    WorkerProcess,
    describe_machine,
    markdown_table,
    median,
    progress,
)
from benchmarks.worker_throughput import finished_and_tasks, start_runs, target, wait_for_runs
from tests._stack import Stack


@dataclass(frozen=True)
class Measurement:
    """One repeat with a given number of worker processes."""

    processes: int
    tasks: int
    seconds: float
    worker_cpu: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds else 0.0

    @property
    def server_cpu_per_task(self) -> float:
        return self.server_cpu / self.tasks if self.tasks else 0.0

    @property
    def worker_cpu_per_task(self) -> float:
        return self.worker_cpu / self.tasks if self.tasks else 0.0


def measure(
    stack: Stack, server: ServerCpu, processes: int, args: argparse.Namespace
) -> Measurement:
    """Run ``args.runs`` chain runs on ``processes`` worker processes in a fresh database."""
    name = stack.clone("ours")
    url = stack.url(name)
    spec, flow = target("chain", "async")
    try:
        with contextlib.ExitStack() as stop, psycopg.connect(url, autocommit=True) as conn:
            workers = [
                stop.enter_context(WorkerProcess(spec, url, "--log-level", "WARNING"))
                for _ in range(processes)
            ]
            for worker in workers:
                worker.wait_registered(conn, flow.slug, timeout=60, count=processes)
            before = sum(w.sample().cpu for w in workers)
            server_before = server.sample()
            started = conn.execute("select clock_timestamp()").fetchone()
            assert started is not None
            start_runs(conn, flow.slug, "chain", args.runs)
            wait_for_runs(conn, workers, flow.slug, args.timeout)
            worker_cpu = sum(w.sample().cpu for w in workers) - before
            server_cpu = server.sample() - server_before
            finished, tasks = finished_and_tasks(conn, flow.slug)
        seconds = (finished - started[0]).total_seconds()
        return Measurement(processes, tasks, seconds, worker_cpu, server_cpu)
    finally:
        stack.drop(name)


def report(results: dict[int, list[Measurement]]) -> str:
    one = median([m.rate for m in results[min(results)]])
    rows = []
    for processes, measurements in sorted(results.items()):
        rate = median([m.rate for m in measurements])
        server = median([m.server_cpu_per_task for m in measurements])
        rows.append(
            [
                str(processes),
                f"{rate:,.0f}",
                f"**{rate / one:.2f}**" if one else "-",
                " ".join(f"{m.rate:,.0f}" for m in measurements),
                f"{median([m.worker_cpu_per_task for m in measurements]) * 1e6:,.0f}",
                f"{server * 1e6:,.0f}",
                f"{1 / server:,.0f}" if server else "-",
            ]
        )
    return markdown_table(
        [
            "worker processes",
            "tasks/s",
            "vs 1 process",
            "per repeat",
            "worker CPU µs/task (all processes)",
            "server CPU µs/task",
            "tasks/s per server core",
        ],
        rows,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale_workers",
        description="Throughput of 1, 2 and 4 worker processes on one database.",
    )
    parser.add_argument("--runs", type=int, default=1000, help="runs of the chain flow (1000)")
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1, 2, 4],
        help="worker process counts to measure (1 2 4)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians (3)")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="longest wait for one measurement (900 s)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if any(n < 1 for n in args.processes):
        raise SystemExit("--processes: counts must be at least 1")
    load = LoadLog()
    load.note()
    began = time.perf_counter()
    stack = Stack()
    try:
        stack.template("ours")
        machine = describe_machine(stack.admin_url)
        server = ServerCpu(stack.admin_url)
        results: dict[int, list[Measurement]] = {}
        for repeat in range(args.repeats):
            for processes in args.processes:
                m = measure(stack, server, processes, args)
                results.setdefault(processes, []).append(m)
                progress(
                    f"#{repeat + 1} {processes} process(es): {m.tasks} tasks in {m.seconds:.2f} s"
                    f" = {m.rate:,.0f} tasks/s, server CPU {m.server_cpu_per_task * 1e6:,.0f}"
                    f" µs/task  (load {load.note():.2f})"
                )
    finally:
        stack.close()
    print(f"Machine: {machine}; {load.summary()}.\n")
    print(report(results))
    print(
        f"\nMedians of {args.repeats} repeats of {args.runs:,} runs of the 3-step chain"
        f" (no-op async handlers, each worker with its default settings), on {os.cpu_count()}"
        " cores shared by the server, the workers and this script. The last column is"
        " 1 / server CPU per task: what one fully used server core carries."
    )
    print(f"\n(benchmark time {time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

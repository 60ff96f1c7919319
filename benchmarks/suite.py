"""The whole benchmark suite in one command, on one PostgreSQL server, printing one table.

In one process and against one server (``DATABASE_URL``, or a throwaway local PostgreSQL):

1. **SQL core** (:mod:`benchmarks.sql_loop`): the SQL-only driver loop on pgflow-py's SQL and
   on the official ``@pgflow/core`` SQL: a 3-step chain, a 1,000-element map, a big map.
2. **worker** (:mod:`benchmarks.worker_throughput`, :mod:`benchmarks.ts_side_by_side`): a
   ``pgflow worker`` process against the SQL-only loop (its ceiling; on the big map with async
   and with sync handlers) and against a task loop on ``@pgflow/core``'s ``PgflowSqlClient`` in
   Node; then its memory over many tasks.
3. **client** (:mod:`benchmarks.ts_side_by_side`): ``PgflowClient`` against
   ``@pgflow/client``, over one Supabase stand-in.

The chain measurements of one repeat (SQL loop on both cores, the worker, the Node loop) run
back to back, alternating their order between repeats, and share the repeat's SQL loop figure.
Parts that need Node or the official SQL are left out, with the reason, when those cannot be
had here. Every line of the table has a goal; ``--check`` fails when one is missed. The table
comes with the machine's load average, which the latencies in particular depend on.

Run: ``uv run python -m benchmarks.suite`` (about 4 minutes on 2 cores; ``--quick`` for a
short smoke run, ``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmarks import sql_loop, ts_side_by_side, worker_throughput
from benchmarks._common import (
    LoadLog,
    ServerCpu,
    describe_machine,
    markdown_table,
    median,
    mib,
    progress,
)
from benchmarks.ts_side_by_side import SUMMARY_HEADERS, Row
from tests._stack import Stack, TemplateUnavailable
from tests.interop._node import PACKAGES, NodeUnavailable, node_project


@dataclass
class Figures:
    """Everything measured, keyed by what was measured."""

    sql: dict[tuple[str, str], list[sql_loop.Result]] = field(default_factory=dict)
    workers: dict[str, list[worker_throughput.WorkerResult]] = field(default_factory=dict)
    node_loop: list[worker_throughput.WorkerResult] = field(default_factory=list)
    memory: list[worker_throughput.MemoryPoint] = field(default_factory=list)
    clients: ts_side_by_side.ClientFigures | None = None
    skipped: list[str] = field(default_factory=list)


def paired(ours: Sequence[float], theirs: Sequence[float]) -> tuple[float, str]:
    """The median of the per-repeat ratios, and their range.

    Ratios of measurements taken back to back stay meaningful when the machine's load moves
    between repeats; a ratio of two medians taken at different moments would not.
    """
    ratios = sorted(o / t for o, t in zip(ours, theirs, strict=True) if t)
    spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}" if len(ratios) > 1 else ""
    return median(ratios), spread


class Suite:
    """Runs the parts in order on one stack and collects their figures."""

    def __init__(self, stack: Stack, args: argparse.Namespace) -> None:
        self.stack = stack
        self.args = args
        self.figures = Figures()
        self.server = ServerCpu(stack.admin_url)
        self.load = LoadLog()
        self.cores = ["ours", "official"]
        self.node = True
        self.clients_load: float | None = None

    # -- availability -------------------------------------------------------------------------

    def check_parts(self) -> None:
        try:
            self.stack.template("official")
        except TemplateUnavailable as exc:
            self.cores = ["ours"]
            self.figures.skipped.append(f"the official SQL ({exc})")
        try:
            node_project()
        except NodeUnavailable as exc:
            self.node = False
            self.figures.skipped.append(f"pgflow's TypeScript packages ({exc})")

    # -- parts --------------------------------------------------------------------------------

    def sql(self, core: str, scenario: str, size: int) -> sql_loop.Result:
        budget = self.args.official_budget if (core, scenario) == ("official", "big map") else None
        result = sql_loop.run_scenario(
            self.stack,
            core,
            scenario,
            runs=size,
            size=size,
            batch=10,
            budget=budget,
            profile=False,
        )
        self.figures.sql.setdefault((scenario, core), []).append(result)
        partial = "  (stopped at the budget)" if result.partial else ""
        progress(
            f"  sql     {scenario:<8} {core:<9} {result.tasks:>6} tasks in"
            f" {result.seconds:6.2f} s = {result.rate:7,.0f} tasks/s{partial}"
        )
        return result

    def worker(self, scenario: str, size: int, handlers: str = "async") -> None:
        options = argparse.Namespace(concurrency=None, batch_size=None, timeout=self.args.timeout)
        result = worker_throughput.run_worker_scenario(
            self.stack, self.server, scenario, handlers, size=size, args=options
        )
        key = scenario if handlers == "async" else f"{scenario} {handlers}"
        self.figures.workers.setdefault(key, []).append(result)
        progress(
            f"  worker  {key:<8} pgflow-py {result.tasks:>6} tasks in"
            f" {result.seconds:6.2f} s = {result.rate:7,.0f} tasks/s,"
            f" CPU {result.cpu_per_task * 1e6:5.0f} + {result.server_cpu_per_task * 1e6:5.0f}"
            " µs/task (process + server)"
        )

    def node_loop(self, runs: int) -> None:
        result = ts_side_by_side.run_node_loop_scenario(
            self.stack, self.server, runs=runs, timeout=self.args.timeout
        )
        self.figures.node_loop.append(result)
        progress(
            f"  worker  chain    Node loop {result.tasks:>6} tasks in"
            f" {result.seconds:6.2f} s = {result.rate:7,.0f} tasks/s,"
            f" CPU {result.cpu_per_task * 1e6:5.0f} + {result.server_cpu_per_task * 1e6:5.0f}"
            " µs/task (process + server)"
        )

    def run(self) -> None:
        args = self.args
        self.load.note()
        for repeat in range(args.repeats):
            progress(f"repeat {repeat + 1} of {args.repeats} (load {self.load.note():.2f})")
            steps: list[Callable[[], object]] = [
                functools.partial(self.sql, core, "chain", args.runs) for core in self.cores
            ]
            steps.append(functools.partial(self.worker, "chain", args.runs))
            if self.node:
                steps.append(functools.partial(self.node_loop, args.runs))
            steps += [functools.partial(self.sql, c, "map", args.map_size) for c in self.cores]
            for step in steps if repeat % 2 == 0 else reversed(steps):
                step()
        progress(f"big map (load {self.load.note():.2f})")
        for core in self.cores:
            self.sql(core, "big map", args.big_map_size)
        self.worker("map", args.big_map_size)
        self.worker("map", args.big_map_size, "sync")
        if args.memory_tasks:
            progress(f"worker memory (load {self.load.note():.2f})")
            memory = argparse.Namespace(
                handlers=["async"],
                memory_tasks=args.memory_tasks,
                timeout=args.timeout,
                concurrency=None,
                batch_size=None,
            )
            self.figures.memory = worker_throughput.memory_curve(self.stack, memory)
        if self.node:
            self.clients_load = self.load.note()
            progress(f"clients (load {self.clients_load:.2f})")
            self.figures.clients = ts_side_by_side.measure_clients(
                self.stack, runs=args.event_runs, start_runs=args.start_runs
            )
        self.load.note()

    # -- the table ------------------------------------------------------------------------------

    def load_line(self) -> str:
        """The load the table was measured under: the 1-minute load average over the run, and
        as the clients part began (latencies suffer most from a busy machine)."""
        samples = self.load.samples
        line = (
            f"Load average (1 min, {os.cpu_count()} cores): {samples[0]:.2f} at the start,"
            f" {min(samples):.2f}-{max(samples):.2f} over the run"
        )
        if self.clients_load is not None:
            line += f", {self.clients_load:.2f} as the clients part began"
        return line + "."

    def rows(self) -> list[Row]:
        args, figures = self.args, self.figures
        rows: list[Row] = []
        labels = {
            "chain": f"{args.runs:,} runs of a 3-step chain",
            "map": f"1 run, root map of {args.map_size:,}",
            "big map": f"1 run, root map of {args.big_map_size:,}",
        }
        sql_goals = {"chain": 1.5, "map": 2.0, "big map": 1.0}
        for scenario in ("chain", "map", "big map"):
            ours = figures.sql.get((scenario, "ours"), [])
            theirs = figures.sql.get((scenario, "official"), [])
            if not ours or not theirs:
                continue
            ours_rate = median([r.rate for r in ours])
            theirs_rate = median([r.rate for r in theirs])
            ratio, spread = paired([r.rate for r in ours], [r.rate for r in theirs])
            partial = " (partial: stopped at the budget)" if any(r.partial for r in theirs) else ""
            rows.append(
                Row(
                    f"SQL driver loop: {labels[scenario]}, tasks/s",
                    f"{ours_rate:,.0f}",
                    f"{theirs_rate:,.0f} (official SQL){partial}",
                    ratio,
                    sql_goals[scenario],
                    spread=spread,
                )
            )
        for key, loop_key, what, goal in (
            ("chain", "chain", "worker", 0.8),
            ("map", "big map", "worker", 0.8),
            ("map sync", "big map", "worker, sync handlers,", 1.0),
        ):
            workers = figures.workers.get(key, [])
            loops = figures.sql.get((loop_key, "ours"), [])
            if not workers or not loops:
                continue
            rate = median([w.rate for w in workers])
            loop_rate = median([r.rate for r in loops])
            ratio, spread = paired([w.rate for w in workers], [r.rate for r in loops])
            rows.append(
                Row(
                    f"{what} vs SQL-only loop: {labels[loop_key]}, tasks/s",
                    f"{rate:,.0f}",
                    f"{loop_rate:,.0f} (SQL-only loop, the ceiling)",
                    ratio,
                    goal,
                    spread=spread,
                )
            )
        if figures.node_loop and figures.workers.get("chain"):
            ours_results = figures.workers["chain"]
            rate = median([w.rate for w in ours_results])
            node_rate = median([n.rate for n in figures.node_loop])
            ratio, spread = paired(
                [w.rate for w in ours_results], [n.rate for n in figures.node_loop]
            )
            rows.append(
                Row(
                    f"worker vs PgflowSqlClient loop (Node): {labels['chain']}, tasks/s",
                    f"{rate:,.0f}",
                    f"{node_rate:,.0f} (@pgflow/core task loop)",
                    ratio,
                    1.5,
                    spread=spread,
                )
            )
        if figures.memory:
            first = next(p for p in figures.memory if p.tasks > 0)
            last = figures.memory[-1]
            rows.append(
                Row(
                    f"worker memory: RSS after {last.tasks:,} tasks / after {first.tasks:,}",
                    f"{mib(first.sample.rss)} → {mib(last.sample.rss)}",
                    "itself, earlier",
                    last.sample.rss / first.sample.rss,
                    1.1,
                    at_most=True,
                )
            )
        if figures.clients is not None:
            rows += ts_side_by_side.client_rows(figures.clients)
        return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.suite",
        description="Every benchmark in one run on one server, summarised in one table.",
    )
    parser.add_argument("--runs", type=int, default=500, help="runs of the chain flow (500)")
    parser.add_argument("--map-size", type=int, default=1000, help="elements of the map (1000)")
    parser.add_argument(
        "--big-map-size", type=int, default=10_000, help="elements of the big map (10000)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats of chain and map (3)")
    parser.add_argument(
        "--official-budget",
        type=float,
        default=45.0,
        help="seconds the official SQL gets for the big map before it counts as partial (45)",
    )
    parser.add_argument(
        "--memory-tasks", type=int, default=10_000, help="tasks for the memory curve, 0 skips"
    )
    parser.add_argument(
        "--event-runs", type=int, default=50, help="client runs for event latency, 6 each (50)"
    )
    parser.add_argument(
        "--start-runs", type=int, default=60, help="start_flow calls per client (60)"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="longest wait for one worker run (900 s)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and one repeat: a smoke run of about a minute, not for figures",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when a goal is not met"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.map_size, args.big_map_size = 150, 300, 2000
        args.repeats, args.memory_tasks = 1, 0
        args.event_runs, args.start_runs = 10, 15
        args.official_budget = 20.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    stack = Stack()
    try:
        stack.template("ours")
        suite = Suite(stack, args)
        suite.check_parts()
        machine = describe_machine(stack.admin_url)
        suite.run()
        rows = suite.rows()
        print(f"Machine: {machine}; {suite.load.summary()}.")
        if suite.node:
            packages = ", ".join(f"{name} {version}" for name, version in PACKAGES.items())
            print(f"npm packages: {packages}.")
        for reason in suite.figures.skipped:
            print(f"Left out: {reason}.")
        print()
        print(markdown_table(SUMMARY_HEADERS, [row.cells() for row in rows]))
        print(f"\n{suite.load_line()}")
        met = [row.met for row in rows if row.met is not None]
        print(
            f"\nGoals met: {sum(met)} of {len(met)}. Ratios are pgflow-py's advantage (rates:"
            " ours / theirs; latencies: theirs / ours), except memory (a plain ratio). Rates"
            f" are medians of {args.repeats} repeat(s); a ratio is the median of the per-repeat"
            " ratios (measured back to back), with their range in brackets."
        )
        print(f"(suite time {time.perf_counter() - began:.0f} s)")
        return 1 if args.check and not all(met) else 0
    finally:
        stack.close()


if __name__ == "__main__":
    sys.exit(main())

"""SQL-only throughput of the pgflow core: pgflow-py's SQL against the official @pgflow/core.

One connection plays a worker with no handler work at all, so the figures are the cost of the
SQL core itself: ``start_flow`` for every run, then ``pgmq.read`` → ``pgflow.start_tasks`` →
``pgflow.complete_task`` per task until every run has completed. Scenarios:

* ``chain``: many runs of a three-step chain flow (a → b → c);
* ``map``: one run of a root map step over a 1,000-element array;
* ``big map``: one run of a root map over 10,000 elements; on the official SQL it stops at a
  time budget and reports the partial rate.

Both databases live on one PostgreSQL server (``DATABASE_URL``, or a throwaway local server
with durability switched off), each scenario in a fresh copy of its core's template database.
``--ours-at VERSION`` adds a third core in the same run: pgflow-py's SQL as of that migration,
to measure a change of the SQL against what came before it.
The official SQL is fetched with npm into a scratch folder, never into the repository.

Run: ``uv run python -m benchmarks.sql_loop`` (``--help`` for sizes and repeats).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgflow_worker._database import migrate
from tests._stack import Stack, TemplateUnavailable

WORKER_ID = uuid.UUID("00000000-0000-0000-0000-00000000b0b0")
CORES = ("ours", "official")


@dataclass
class Result:
    """One scenario on one core: how many tasks completed in how long."""

    scenario: str
    core: str
    tasks: int
    seconds: float
    expected_tasks: int
    calls: dict[str, float] = field(default_factory=dict)
    server_cpu: float | None = None
    """CPU seconds the server process spent on the loop, when the server runs on this machine."""

    @property
    def partial(self) -> bool:
        return self.tasks < self.expected_tasks

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_task(self) -> float | None:
        if self.server_cpu is None or not self.tasks:
            return None
        return 1000 * self.server_cpu / self.tasks


def backend_cpu_seconds(conn: psycopg.Connection[Any]) -> float | None:
    """User + system CPU time of the connection's server process (Linux, local server only).

    Unlike wall time it barely moves when other programs compete for the cores.
    """
    try:
        fields = Path(f"/proc/{conn.info.backend_pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Driver:
    """Plays the worker's part over one connection, timing each kind of SQL call."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        flow: str,
        batch: int,
        complete_function: str = "pgflow.complete_task",
    ) -> None:
        self.conn = conn
        self.flow = flow
        self.batch = batch
        self.complete_query = f"select 1 from {complete_function}(%s, %s, %s, %s)"
        self.calls: dict[str, float] = {}
        conn.execute(
            "insert into pgflow.workers (worker_id, queue_name, function_name)"
            " values (%s, %s, 'benchmark')",
            (WORKER_ID, flow),
        )

    def _timed(self, name: str, query: str, params: Sequence[Any]) -> list[Any]:
        started = time.perf_counter()
        rows = self.conn.execute(query.encode(), params).fetchall()
        self.calls[name] = self.calls.get(name, 0.0) + time.perf_counter() - started
        return rows

    def start_flow(self, payload: Any) -> None:
        self._timed(
            "start_flow",
            "select run_id from pgflow.start_flow(%s, %s)",
            (self.flow, Jsonb(payload)),
        )

    def poll(self) -> int:
        """Read one batch, start its tasks, complete each; returns how many completed."""
        ids = [
            r[0]
            for r in self._timed(
                "read", "select msg_id from pgmq.read(%s, %s, %s)", (self.flow, 30, self.batch)
            )
        ]
        if not ids:
            return 0
        tasks = self._timed(
            "start_tasks",
            "select run_id, step_slug, task_index, input"
            " from pgflow.start_tasks(%s, %s::bigint[], %s)",
            (self.flow, ids, WORKER_ID),
        )
        for run_id, step_slug, task_index, task_input in tasks:
            output = task_input if isinstance(task_input, int) else {"step": step_slug}
            self._timed(
                "complete_task",
                self.complete_query,
                (run_id, step_slug, task_index, Jsonb(output)),
            )
        return len(tasks)

    def unfinished_runs(self) -> int:
        row = self.conn.execute(
            "select count(*) from pgflow.runs where status <> 'completed'"
        ).fetchone()
        assert row is not None
        return int(row[0])


def define(conn: psycopg.Connection[Any], scenario: str) -> str:
    if scenario == "chain":
        conn.execute("select pgflow.create_flow('chain')")
        conn.execute("select pgflow.add_step('chain', 'a')")
        conn.execute("select pgflow.add_step('chain', 'b', array['a'])")
        conn.execute("select pgflow.add_step('chain', 'c', array['b'])")
        return "chain"
    conn.execute("select pgflow.create_flow('fanout')")
    conn.execute("select pgflow.add_step('fanout', 'each', step_type => 'map')")
    return "fanout"


class Templates:
    """The template database of each core: the stack's, and ``ours@VERSION`` built here."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.extra: dict[str, str] = {}

    def add_ours_at(self, version: str) -> str:
        """Build a template of pgflow-py's SQL up to migration ``version``; its core's name."""
        core = f"ours@{version}"
        name = self.stack.empty("pgflow_tpl_ours_at")
        migrate(self.stack.url(name), target=version)
        self.extra[core] = name
        return core

    def clone(self, core: str) -> str:
        if core not in self.extra:
            return self.stack.clone(core)
        name = f"pgflow_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.stack.admin_url, autocommit=True) as conn:
            conn.execute(f'create database "{name}" template "{self.extra[core]}"'.encode())
        return name

    def close(self) -> None:
        for name in self.extra.values():
            self.stack.drop(name)


def run_scenario(
    stack: Stack,
    core: str,
    scenario: str,
    *,
    runs: int,
    size: int,
    batch: int,
    budget: float | None,
    profile: bool,
    templates: Templates | None = None,
) -> Result:
    """Run one scenario in a fresh database of ``core``; stop early past ``budget`` seconds.

    ``templates`` names the template of a core the stack does not build (``ours@VERSION``).
    """
    name = (templates or Templates(stack)).clone(core)
    try:
        with psycopg.connect(stack.url(name), autocommit=True) as conn:
            flow = define(conn, "chain" if scenario == "chain" else "map")
            if profile:
                conn.execute("set track_functions = 'pl'")
            driver = Driver(conn, flow, batch)
            expected = runs * 3 if scenario == "chain" else size
            done = 0
            cpu_before = backend_cpu_seconds(conn)
            started = time.perf_counter()
            if scenario == "chain":
                for i in range(runs):
                    driver.start_flow({"run": i})
            else:
                driver.start_flow(list(range(size)))
            while True:
                n = driver.poll()
                done += n
                if n == 0:
                    break
                if budget is not None and time.perf_counter() - started > budget:
                    break
            seconds = time.perf_counter() - started
            cpu_after = backend_cpu_seconds(conn)
            result = Result(scenario, core, done, seconds, expected, driver.calls)
            if cpu_before is not None and cpu_after is not None:
                result.server_cpu = cpu_after - cpu_before
            if not result.partial and driver.unfinished_runs():
                raise RuntimeError(f"{scenario} on {core}: runs left unfinished after the loop")
            if profile:
                print_profile(conn, f"{scenario} on {core}")
            return result
    finally:
        stack.drop(name)


def print_profile(conn: psycopg.Connection[Any], title: str) -> None:
    """Per-function time spent in PL/pgSQL and SQL functions (pg_stat_user_functions)."""
    conn.execute("select pg_stat_force_next_flush()")
    conn.execute("select 1")  # the flush happens at the end of this transaction
    rows = conn.execute(
        "select schemaname || '.' || funcname, calls, round(total_time::numeric, 1),"
        " round(self_time::numeric, 1) from pg_stat_user_functions"
        " order by self_time desc limit 8"
    ).fetchall()
    print(f"\n  profile: {title} (ms)", file=sys.stderr)
    for fn, calls, total, own in rows:
        print(f"    {fn:<45} calls {calls:>7}  total {total:>9}  self {own:>9}", file=sys.stderr)


def median(results: list[Result]) -> Result:
    """The repeat with the median rate (robust against one disturbed run)."""
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


def format_table(rows: list[Result], args: argparse.Namespace) -> str:
    by_key = {(r.scenario, r.core): r for r in rows}
    lines = [
        "| scenario | tasks | ours tasks/s | official tasks/s | ours / official |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = {
        "chain": f"{args.runs} runs of a 3-step chain",
        "map": f"1 run, root map of {args.map_size:,}",
        "big map": f"1 run, root map of {args.big_map_size:,}",
    }
    for scenario in ("chain", "map", "big map"):
        ours = by_key.get((scenario, "ours"))
        official = by_key.get((scenario, "official"))
        if ours is None:
            continue
        theirs = "—"
        ratio = "—"
        if official is not None:
            theirs = f"{official.rate:,.0f}"
            if official.partial:
                theirs += f" (stopped after {official.tasks:,} tasks, {official.seconds:.0f} s)"
            ratio = f"{ours.rate / official.rate:.2f}" if official.rate else "—"
        cells = [labels[scenario], f"{ours.expected_tasks:,}", f"{ours.rate:,.0f}", theirs, ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_line(all_runs: dict[tuple[str, str], list[Result]], other: str) -> str:
    """Ours against ``other`` repeat by repeat: each pair ran back to back, so a busy moment
    hits both alike, and the median of the pairs' ratios is steadier than the ratio of the
    medians when other work shares the machine."""
    parts = []
    for scenario in ("chain", "map", "big map"):
        ours, theirs = all_runs.get((scenario, "ours")), all_runs.get((scenario, other))
        if not ours or not theirs:
            continue
        ratios = sorted(o.rate / t.rate for o, t in zip(ours, theirs, strict=True) if t.rate)
        if ratios:
            each = " ".join(f"{r:.2f}" for r in ratios)
            parts.append(f"{scenario} {ratios[len(ratios) // 2]:.2f} ({each})")
    return f"ours / {other}, median of the repeats' ratios: " + "; ".join(parts)


def scaling_line(rows: list[Result], args: argparse.Namespace) -> str:
    by_key = {(r.scenario, r.core): r for r in rows}
    parts = []
    for core in CORES:
        small, big = by_key.get(("map", core)), by_key.get(("big map", core))
        if small is None or big is None:
            continue
        if big.partial:
            projected = args.big_map_size / big.rate if big.rate else float("inf")
            parts.append(
                f"{core}: > {projected / small.seconds:.1f}x (projected from the partial rate)"
            )
        else:
            parts.append(f"{core}: {big.seconds / small.seconds:.1f}x")
    size_ratio = args.big_map_size / args.map_size
    head = f"Time of the {args.big_map_size:,} map vs the {args.map_size:,} map"
    return f"{head} (linear = {size_ratio:.0f}x): " + "; ".join(parts)


def cpu_table(all_runs: dict[tuple[str, str], list[Result]], args: argparse.Namespace) -> str:
    """Server CPU per task (median over the repeats): steadier than rates on a busy machine."""
    medians: dict[tuple[str, str], float] = {}
    for key, runs in all_runs.items():
        values = sorted(v for r in runs if (v := r.cpu_ms_per_task) is not None)
        if values:
            medians[key] = values[len(values) // 2]
    if not medians:
        return "(server CPU time unavailable: the server does not run on this machine)"
    lines = [
        "| scenario | ours CPU ms/task | official CPU ms/task | official / ours |",
        "|---|---:|---:|---:|",
    ]
    for scenario in ("chain", "map", "big map"):
        ours, theirs = medians.get((scenario, "ours")), medians.get((scenario, "official"))
        if ours is None:
            continue
        cells = [
            scenario,
            f"{ours:.3f}",
            "—" if theirs is None else f"{theirs:.3f}",
            "—" if theirs is None else f"{theirs / ours:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def before_table(all_runs: dict[tuple[str, str], list[Result]], before: str) -> str:
    """Ours against ours at an earlier migration: median rate and server CPU per task."""

    def rate(key: tuple[str, str]) -> float:
        return median(all_runs[key]).rate

    def cpu(key: tuple[str, str]) -> float | None:
        values = sorted(v for r in all_runs[key] if (v := r.cpu_ms_per_task) is not None)
        return values[len(values) // 2] if values else None

    lines = [
        f"| scenario | {before} tasks/s | ours tasks/s | ours / {before} "
        f"| {before} CPU ms/task | ours CPU ms/task |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for scenario in ("chain", "map", "big map"):
        old, new = (scenario, before), (scenario, "ours")
        if old not in all_runs or new not in all_runs:
            continue
        old_cpu, new_cpu = cpu(old), cpu(new)
        cells = [
            scenario,
            f"{rate(old):,.0f}",
            f"{rate(new):,.0f}",
            f"{rate(new) / rate(old):.2f}" if rate(old) else "—",
            "—" if old_cpu is None else f"{old_cpu:.3f}",
            "—" if new_cpu is None else f"{new_cpu:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calls_table(rows: list[Result]) -> str:
    lines = [
        "| scenario | core | start_flow | read | start_tasks | complete_task | total s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [
            f"{r.calls.get(k, 0.0):.2f}"
            for k in ("start_flow", "read", "start_tasks", "complete_task")
        ]
        lines.append(f"| {r.scenario} | {r.core} | " + " | ".join(cells) + f" | {r.seconds:.2f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sql_loop",
        description="SQL-only driver loop on pgflow-py's SQL and the official @pgflow/core SQL.",
    )
    parser.add_argument("--runs", type=int, default=300, help="runs of the chain flow (300)")
    parser.add_argument("--map-size", type=int, default=1000, help="elements of the map (1000)")
    parser.add_argument(
        "--big-map-size", type=int, default=10_000, help="elements of the big map (10000)"
    )
    parser.add_argument("--batch", type=int, default=10, help="messages per read, as a worker (10)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="repeats of each scenario; the median is kept (3)"
    )
    parser.add_argument(
        "--official-budget",
        type=float,
        default=30.0,
        help="seconds the official SQL gets for the big map before it is reported partial (30)",
    )
    parser.add_argument("--ours-only", action="store_true", help="skip the official SQL")
    parser.add_argument(
        "--profile", action="store_true", help="print per-function time (pg_stat_user_functions)"
    )
    parser.add_argument(
        "--ours-at",
        metavar="VERSION",
        help="also measure pgflow-py's SQL as of this migration (e.g. 0006), in the same run",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stack = Stack()
    templates = Templates(stack)
    cores = ["ours"] if args.ours_only else list(CORES)
    try:
        if args.ours_at:
            cores.append(templates.add_ours_at(args.ours_at))
        for core in [c for c in cores if c in CORES]:
            try:
                stack.template(core)
            except TemplateUnavailable as exc:
                print(f"skipping the {core} SQL: {exc}", file=sys.stderr)
                cores.remove(core)
        if "ours" not in cores:
            return 1
        results: list[Result] = []
        all_runs: dict[tuple[str, str], list[Result]] = {}
        began = time.perf_counter()
        for scenario in ("chain", "map", "big map"):
            attempts: dict[str, list[Result]] = {core: [] for core in cores}
            # Repeats alternate between the cores, so a busy moment hits both alike.
            for _ in range(args.repeats):
                for core in cores:
                    budget = (
                        args.official_budget
                        if (scenario, core) == ("big map", "official")
                        else None
                    )
                    result = run_scenario(
                        stack,
                        core,
                        scenario,
                        runs=args.runs,
                        size=args.map_size if scenario == "map" else args.big_map_size,
                        batch=args.batch,
                        budget=budget,
                        profile=args.profile,
                        templates=templates,
                    )
                    attempts[core].append(result)
                    print(
                        f"  {scenario:<8} {core:<10} {result.tasks:>6} tasks in"
                        f" {result.seconds:6.2f} s = {result.rate:8,.0f} tasks/s"
                        + ("  (stopped at the budget)" if result.partial else ""),
                        file=sys.stderr,
                    )
            results.extend(median(attempts[core]) for core in cores)
            all_runs.update({(scenario, core): attempts[core] for core in cores})
        print()
        print(format_table(results, args))
        print()
        print(paired_line(all_runs, "official"))
        if args.ours_at:
            print()
            print(before_table(all_runs, f"ours@{args.ours_at}"))
            print()
            print(paired_line(all_runs, f"ours@{args.ours_at}"))
        print()
        print(scaling_line(results, args))
        print()
        print("Server CPU time per task (the server process's user + system time):")
        print()
        print(cpu_table(all_runs, args))
        print()
        print("Seconds spent per SQL call (kept repeat):")
        print()
        print(calls_table(results))
        elapsed = time.perf_counter() - began
        print(f"\n(benchmark time {elapsed:.0f} s; median of {args.repeats} repeats per figure)")
        return 0
    finally:
        templates.close()
        stack.close()


if __name__ == "__main__":
    sys.exit(main())

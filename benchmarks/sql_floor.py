"""How fast the SQL loop's map can go: its ``complete_task`` call replaced by less and less.

The SQL loop (``sql_loop``) drains one run of a root map with ``pgmq.read`` →
``pgflow.start_tasks`` → ``pgflow.complete_task`` per task. Here the same loop runs, in one run
of this script and on one server, with the completion call being, in turn:

* ``official``: the official ``@pgflow/core`` SQL's ``complete_task``;
* ``ours``: pgflow-py's;
* ``least``: the least SQL that records a map task's completion as both do: the run's row
  locked, the task row completed with its output, its message archived (through the prepared
  statement pgflow-py's SQL uses), the step's count of remaining tasks down by one; nothing else
  (no step or run ever completes);
* ``none``: a function taking the same arguments that does nothing: the call itself.

Every rate is compared with the official SQL's. ``least`` bounds what any SQL that writes those
rows can reach in this loop, so a goal above it cannot be met by changing the SQL alone.

Run: ``uv run python -m benchmarks.sql_floor`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from benchmarks._common import LoadLog, describe_machine, markdown_table, median
from benchmarks.sql_loop import Driver, define
from tests._stack import Stack, TemplateUnavailable

VARIANTS = ("official", "ours", "least", "none")

_FUNCTIONS = """
create schema bench_floor;

create function bench_floor.least(
  p_run_id uuid, p_step_slug text, p_task_index integer, p_output jsonb
)
returns setof pgflow.step_tasks
language plpgsql
set search_path to pg_catalog, pg_temp
as $fn$
declare
  v_task pgflow.step_tasks;
begin
  perform 1 from pgflow.runs as r where r.run_id = p_run_id for update;
  update pgflow.step_tasks as t
     set status = 'completed', completed_at = now(), output = p_output
   where t.run_id = p_run_id and t.step_slug = p_step_slug and t.task_index = p_task_index
     and t.status = 'started'
  returning * into v_task;
  perform pgflow._archive_message(v_task.queue_name, v_task.message_id);
  update pgflow.step_states as ss
     set remaining_tasks = ss.remaining_tasks - 1
   where ss.run_id = p_run_id and ss.step_slug = p_step_slug;
  return next v_task;
end;
$fn$;

create function bench_floor.none(
  p_run_id uuid, p_step_slug text, p_task_index integer, p_output jsonb
)
returns setof pgflow.step_tasks
language plpgsql
as $fn$
begin
  return;
end;
$fn$;
"""

_COMPLETE = {
    "official": "pgflow.complete_task",
    "ours": "pgflow.complete_task",
    "least": "bench_floor.least",
    "none": "bench_floor.none",
}


@dataclass
class Lap:
    """One drain of the map with one completion call."""

    variant: str
    tasks: int
    seconds: float
    complete_seconds: float

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    @property
    def complete_us(self) -> float:
        return self.complete_seconds / self.tasks * 1e6


def drain_map(stack: Stack, variant: str, size: int, batch: int) -> Lap:
    """Start one run of a root map of ``size`` and drain it with the variant's completion."""
    name = stack.clone("official" if variant == "official" else "ours")
    try:
        with psycopg.connect(stack.url(name), autocommit=True) as conn:
            flow = define(conn, "map")
            if variant in ("least", "none"):
                conn.execute(_FUNCTIONS.encode())
            driver = Driver(conn, flow, batch, complete_function=_COMPLETE[variant])
            started = time.perf_counter()
            driver.start_flow(list(range(size)))
            done = 0
            while n := driver.poll():
                done += n
            seconds = time.perf_counter() - started
            if done != size:
                raise RuntimeError(f"{variant}: {done} of {size} tasks drained")
            if variant != "none":
                row = conn.execute(
                    f"select (select count(*) from pgmq.a_{flow}),"
                    " (select count(*) from pgflow.step_tasks where status = 'completed')".encode()
                ).fetchone()
                if row != (size, size):
                    raise RuntimeError(f"{variant}: archived and completed {row}, not {size}")
            return Lap(variant, done, seconds, driver.calls.get("complete_task", 0.0))
    finally:
        stack.drop(name)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sql_floor",
        description="The SQL loop's map with complete_task replaced by less and less.",
    )
    parser.add_argument("--size", type=int, default=1000, help="elements of the map (1000)")
    parser.add_argument("--batch", type=int, default=10, help="messages per read (10)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats; medians (5)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load = LoadLog()
    load.note()
    stack = Stack()
    variants = list(VARIANTS)
    try:
        try:
            stack.template("official")
        except TemplateUnavailable as exc:
            print(f"skipping the official SQL: {exc}", file=sys.stderr)
            variants.remove("official")
        laps: dict[str, list[Lap]] = {v: [] for v in variants}
        # Rounds alternate the order, so a busy moment hits every variant alike.
        for repeat in range(args.repeats):
            order = variants if repeat % 2 == 0 else list(reversed(variants))
            for variant in order:
                lap = drain_map(stack, variant, args.size, args.batch)
                laps[variant].append(lap)
                load.note()
                print(
                    f"  {variant:<9} {lap.tasks} tasks in {lap.seconds:5.2f} s ="
                    f" {lap.rate:7,.0f} tasks/s, complete {lap.complete_us:5.0f} µs/call",
                    file=sys.stderr,
                )
        rates = {v: median([lap.rate for lap in laps[v]]) for v in variants}
        calls = {v: median([lap.complete_us for lap in laps[v]]) for v in variants}
        official = rates.get("official")
        rows = [
            [
                v,
                f"{rates[v]:,.0f}",
                f"{calls[v]:,.0f}",
                f"{rates[v] / official:.2f}" if official else "—",
            ]
            for v in variants
        ]
        print(describe_machine(stack.admin_url))
        print()
        print(
            markdown_table(
                ["complete call", "tasks/s", "µs per complete call", "rate / official"], rows
            )
        )
        print()
        print(
            f"1 run, root map of {args.size:,}, batches of {args.batch}; medians of "
            f"{args.repeats} repeats. {load.summary()}"
        )
    finally:
        stack.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

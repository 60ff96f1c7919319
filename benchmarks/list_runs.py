"""``pgflow.list_runs`` on a table of a million runs: with its indexes, and without them.

One fresh database holds ``--runs`` runs (default 1,000,000) of ten flows, spread over 30
days: 1% started, 9% failed (a tenth of them cancelled), the rest completed, some of them
retries. Each listing (the newest page; one flow's; the started runs; the cancelled runs; the
last hour's; a page a thousand pages deep, reached by ``before_run_id``) is timed as the median
of ``--repeats`` calls, first with the indexes ``list_runs`` relies on, then, in the same
database, with them dropped (PostgreSQL then scans and sorts the table). The table gives
milliseconds per call and the ratio without / with.

Run: ``uv run python -m benchmarks.list_runs`` (under a minute on 2 cores; ``--help``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from benchmarks._common import describe_machine, markdown_table, median, progress
from tests._stack import Stack

#: The indexes pgflow-py adds on runs for list_runs (pgflow's own stay in place).
INDEXES = ("idx_runs_started_at", "idx_runs_flow_slug_started_at", "idx_runs_status_started_at")
FLOWS = 10
PAGE = 50


def fill(conn: psycopg.Connection[Any], runs: int) -> None:
    """``runs`` rows of ten flows over 30 days, inserted in one statement, then analyzed."""
    for i in range(FLOWS):
        conn.execute("select pgflow.create_flow(%s)", (f"flow_{i}",))
    conn.execute(
        """
        insert into pgflow.runs (flow_slug, status, input, started_at, completed_at, failed_at,
                                 cancelled_at, cancel_reason)
        select 'flow_' || ((g / 7) %% %(flows)s),
               case when k < 1 then 'started' when k < 10 then 'failed' else 'completed' end,
               '{}'::jsonb,
               started,
               case when k >= 10 then started + interval '2 seconds' end,
               case when k between 1 and 9.99 then started + interval '1 second' end,
               case when k between 1 and 1.9 then started + interval '1 second' end,
               case when k between 1 and 1.9 then 'benchmark' end
          from generate_series(1, %(runs)s) as g,
               lateral (select now() - make_interval(secs => (g::float8 / %(runs)s) * 2592000)
                                 as started,
                               (g::bigint * 7919 %% 100)::float8 as k) as x
        """,
        {"runs": runs, "flows": FLOWS},
    )
    conn.execute("vacuum analyze pgflow.runs")


def listings(conn: psycopg.Connection[Any]) -> list[tuple[str, dict[str, Any]]]:
    """The calls to time: their label and list_runs arguments."""
    row = conn.execute(
        "select run_id from pgflow.runs order by started_at desc, run_id desc offset %s limit 1",
        (PAGE * 1000,),
    ).fetchone()
    assert row is not None, "too few runs for a page a thousand pages deep"
    return [
        ("newest page", {}),
        ("one flow's newest page", {"flow_slug": "flow_3"}),
        ("started runs", {"status": "started"}),
        ("cancelled runs", {"status": "cancelled"}),
        ("started in the last hour", {"since_hours": 1}),
        ("page 1,001 (before_run_id)", {"before_run_id": row[0]}),
    ]


def call(conn: psycopg.Connection[Any], arguments: dict[str, Any]) -> float:
    """Milliseconds for one list_runs call of a page, all rows fetched."""
    args = dict(arguments)
    names = ["max_runs => %(max_runs)s"]
    if "since_hours" in args:
        args["since"] = args.pop("since_hours")
        names.append("since => now() - make_interval(hours => %(since)s)")
    names += [f"{name} => %({name})s" for name in args if name != "since"]
    query = f"select * from pgflow.list_runs({', '.join(names)})"
    began = time.perf_counter()
    rows = conn.execute(query.encode(), {**args, "max_runs": PAGE}).fetchall()
    elapsed = (time.perf_counter() - began) * 1000
    assert rows, f"no rows for {arguments}"
    return elapsed


def measure(
    conn: psycopg.Connection[Any], calls: list[tuple[str, dict[str, Any]]], repeats: int
) -> list[float]:
    medians = []
    for label, arguments in calls:
        call(conn, arguments)  # warm the cache
        medians.append(median([call(conn, arguments) for _ in range(repeats)]))
        progress(f"{label}: {medians[-1]:.2f} ms")
    return medians


def run(stack: Stack, args: argparse.Namespace) -> int:
    name = stack.clone("ours")
    try:
        with psycopg.connect(stack.url(name), autocommit=True) as conn:
            began = time.monotonic()
            fill(conn, args.runs)
            progress(f"{args.runs} runs inserted in {time.monotonic() - began:.0f} s")
            calls = listings(conn)
            indexed = measure(conn, calls, args.repeats)
            for index in INDEXES:
                conn.execute(f"drop index pgflow.{index}".encode())
            conn.execute("analyze pgflow.runs")
            bare = measure(conn, calls, max(1, args.repeats // 4))
        print(describe_machine(stack.admin_url))
        print()
        print(
            markdown_table(
                [
                    f"list_runs, {PAGE} runs of {args.runs:,}",
                    "indexed ms",
                    "no index ms",
                    "no index / indexed",
                ],
                [
                    [label, f"{a:.2f}", f"{b:.1f}", f"{b / a:.0f}"]
                    for (label, _), a, b in zip(calls, indexed, bare, strict=True)
                ],
            )
        )
        return 0
    finally:
        stack.drop(name)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.list_runs",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs in the table (1000000)")
    parser.add_argument("--repeats", type=int, default=20, help="calls per listing (20)")
    args = parser.parse_args(argv)
    if args.runs < PAGE * 1001 or args.repeats < 1:
        parser.error(f"--runs must be at least {PAGE * 1001} and --repeats at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stack = Stack()
    try:
        stack.template("ours")
        return run(stack, args)
    finally:
        stack.close()


if __name__ == "__main__":
    sys.exit(main())

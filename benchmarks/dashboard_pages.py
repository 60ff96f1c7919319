"""The dashboard's pages over HTTP on a table of a million runs.

One fresh database holds ``--runs`` runs (default 1,000,000) of ten flows, filled as
``benchmarks.list_runs`` fills it. Each page (the flows page, the newest runs, one flow's, the
cancelled runs, a page a thousand pages deep) is fetched in process through Starlette's test
client, and timed as the median of ``--repeats`` requests: server-side rendering, the database
queries and the HTTP exchange, without a network.

Run: ``uv run python -m benchmarks.dashboard_pages`` (about a minute on 2 cores; ``--help``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import psycopg
from starlette.testclient import TestClient

from benchmarks._common import describe_machine, markdown_table, median, progress
from benchmarks.list_runs import PAGE, fill
from pgflow_worker._tools.dashboard import create_app
from tests._stack import Stack


def pages(db_url: str) -> list[tuple[str, str]]:
    """The pages to time: their label and path."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "select run_id from pgflow.runs order by started_at desc, run_id desc "
            "offset %s limit 1",
            (PAGE * 1000 - 1,),
        ).fetchone()
    assert row is not None, "too few runs for a page a thousand pages deep"
    return [
        ("/ (flows, counts by status, recent runs)", "/"),
        ("/runs (newest page)", "/runs"),
        ("/runs?flow= (one flow)", "/runs?flow=flow_3"),
        ("/runs?status=cancelled", "/runs?status=cancelled"),
        ("/runs?before= (page 1,001)", f"/runs?before={row[0]}"),
    ]


def measure(client: TestClient, path: str, repeats: int) -> float:
    """The median milliseconds of a request for ``path``, after one warm-up request."""
    client.get(path).raise_for_status()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - began) * 1000)
    return median(times)


def run(stack: Stack, args: argparse.Namespace) -> int:
    name = stack.clone("ours")
    try:
        db_url = stack.url(name)
        with psycopg.connect(db_url, autocommit=True) as conn:
            began = time.monotonic()
            fill(conn, args.runs)
            progress(f"{args.runs} runs inserted in {time.monotonic() - began:.0f} s")
        rows = []
        with TestClient(create_app(db_url)) as client:
            for label, path in pages(db_url):
                ms = measure(client, path, args.repeats)
                progress(f"{label}: {ms:.1f} ms")
                rows.append([label, f"{ms:.1f}"])
        print(describe_machine(stack.admin_url))
        print()
        print(markdown_table([f"page, {args.runs:,} runs", "median ms"], rows))
        return 0
    finally:
        stack.drop(name)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dashboard_pages",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs in the table (1000000)")
    parser.add_argument("--repeats", type=int, default=20, help="requests per page (20)")
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

"""Worker throughput through pgbouncer in transaction mode, against a direct connection.

One server, one run: the same chain runs (three no-op async steps each) are worked by an
in-process ``FlowWorker`` with its default settings connected three ways, in turn, each in a
fresh database: directly; directly with prepared statements on (``prepare_threshold=5``, what
a direct connection could gain back); and through a real pgbouncer (Debian's package) in
transaction mode with a pool of 4 server connections. Each configuration is repeated and the
median rate kept; the table gives tasks/s and the ratio to the direct connection.

Run: ``uv run python -m benchmarks.pooled_worker`` (under a minute on 2 cores; ``--help``
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
from tests.pooler._pgbouncer import PgBouncer, PgBouncerUnavailable


@dataclass
class Config:
    """One way of connecting the worker, and the rates it reached."""

    label: str
    url_for: Callable[[str], str]
    settings: dict[str, Any] = field(default_factory=dict)
    rates: list[float] = field(default_factory=list)


async def measure(stack: Stack, config: Config, runs: int, timeout: float) -> float:
    """Tasks per second from the first ``start_flow`` to the last completed run."""
    name = stack.clone("ours")
    url = stack.url(name)
    try:
        async with (
            FlowWorker(chain, config.url_for(url), **config.settings),
            await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        ):
            began = time.monotonic()
            for i in range(runs):
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


async def main_async(args: argparse.Namespace) -> int:
    stack = Stack()
    bouncer: PgBouncer | None = None
    try:
        try:
            bouncer = PgBouncer(stack.admin_url, "transaction", pool_size=4).start()
        except PgBouncerUnavailable as exc:
            print(f"cannot run: {exc}", file=sys.stderr)
            return 2
        pooled = bouncer
        configs = [
            Config("direct (default: no prepared statements)", lambda url: url),
            Config("direct, prepare_threshold=5", lambda url: url, {"prepare_threshold": 5}),
            Config("pgbouncer, transaction mode, pool of 4", pooled.url),
        ]
        for repeat in range(args.repeats):
            for config in configs:
                rate = await measure(stack, config, args.runs, args.timeout)
                config.rates.append(rate)
                progress(f"repeat {repeat + 1}: {config.label}: {rate:.0f} tasks/s")
        direct = median(configs[0].rates)
        print(describe_machine(stack.admin_url))
        print()
        print(
            markdown_table(
                ["worker connection", "tasks/s (median)", "/ direct", "per repeat"],
                [
                    [
                        c.label,
                        f"{median(c.rates):.0f}",
                        f"{median(c.rates) / direct:.2f}",
                        " ".join(f"{r:.0f}" for r in c.rates),
                    ]
                    for c in configs
                ],
            )
        )
        return 0
    finally:
        if bouncer is not None:
            bouncer.stop()
        stack.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pooled_worker",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--runs", type=int, default=1000, help="chain runs per measurement (1000)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each connection (3)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per measurement")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

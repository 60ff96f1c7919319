"""The one-command benchmark suite runs end to end and prints its table.

Sizes are tiny: this checks that every part of ``python -m benchmarks.suite`` still works
together (the worker process, the Node task loop, both clients, both SQL cores), not how fast
anything is. Figures come from the full run documented in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("ts_packages")

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--runs", "20",
    "--map-size", "40",
    "--big-map-size", "120",
    "--repeats", "1",
    "--memory-tasks", "0",
    "--event-runs", "3",
    "--start-runs", "3",
    "--timeout", "120",
]  # fmt: skip

MEASURES = [
    "SQL driver loop: 20 runs of a 3-step chain",
    "SQL driver loop: 1 run, root map of 40",
    "SQL driver loop: 1 run, root map of 120",
    "worker vs SQL-only loop: 20 runs of a 3-step chain",
    "worker vs SQL-only loop: 1 run, root map of 120",
    "worker, sync handlers, vs SQL-only loop: 1 run, root map of 120",
    "worker vs PgflowSqlClient loop (Node): 20 runs of a 3-step chain",
    "client: start_flow to a confirmed run, p50",
    "client: start_flow to a confirmed run, p99",
    "client: event latency (commit to callback), p50",
    "client: event latency (commit to callback), p99",
]


@pytest.mark.timeout(600)
def test_the_suite_measures_every_part() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.suite", *TINY],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    for measure in MEASURES:
        matching = [row for row in rows if row.startswith(f"| {measure}")]
        assert len(matching) == 1, f"{measure!r} not in:\n{done.stdout}"
        cells = [cell.strip() for cell in matching[0].strip("|").split("|")]
        ratio = cells[3].strip("*")
        assert ratio.endswith("x"), matching[0]
        assert float(ratio.removesuffix("x")) > 0, matching[0]
    assert "left out" not in done.stdout.lower(), done.stdout
    assert re.search(r"^Load average \(1 min, \d+ cores\): [\d.]+ at the start", done.stdout, re.M)
    missed = re.findall(r"(\d+) missed", done.stderr)
    assert missed, done.stderr
    assert set(missed) == {"0"}, done.stderr

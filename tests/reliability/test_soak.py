"""Load and soak: 4 worker processes, 2,000 runs of a 5-step DAG with a map, 10% of attempts
failing, retried. Sized for 2 cores: about a minute there (51 s in the run whose figures
docs/reliability.md lists), well under its 300 s limit.

The failures are pseudo-random but fixed by the run id (``flows.soak_fails``), so after the
fact the test knows, for every task, how many attempts it needed and whether its run had to
fail; the database, the handlers' execution logs and a watching client must all agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgflow_client import FlowRun, PgflowClient, StatusUnreachable
from tests.reliability.flows import SOAK_MAX_ATTEMPTS, soak_fails
from tests.reliability.helpers import (
    WorkerProcess,
    audit,
    wait_for_workers,
    wait_terminal,
    worker_processes,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RUNS = int(os.environ.get("PGFLOW_SOAK_RUNS", "2000"))
WATCHED = RUNS // 10
WORKERS = 4
FLOW = "rel_soak"


def soak_input(i: int) -> dict[str, Any]:
    return {"n": i % 4, "label": f"run{i}"}


def expected_tasks(n: int) -> list[tuple[str, int]]:
    return [
        ("load", 0),
        ("items", 0),
        *[("square", i) for i in range(n)],
        ("meta", 0),
        ("total", 0),
    ]


def attempts_needed(run_id: str, step: str, index: int) -> int | None:
    """Attempts the task needs to succeed, or None when all its attempts fail."""
    for attempt in range(1, SOAK_MAX_ATTEMPTS + 1):
        if not soak_fails(run_id, step, index, attempt):
            return attempt
    return None


def run_must_fail(run_id: str, n: int) -> bool:
    """A run fails when some task it reaches runs out of attempts; a task is reached when
    every step before it completed."""

    def fails(step: str, indexes: range = range(1)) -> bool:
        return any(attempts_needed(run_id, step, i) is None for i in indexes)

    if fails("load"):
        return True
    if fails("items") or fails("meta"):
        return True
    return fails("square", range(n)) or fails("total")


async def watch(run: FlowRun) -> str:
    """The terminal status the client ends up showing for a run."""
    with contextlib.suppress(StatusUnreachable):
        await run.wait_for_status("completed", timeout=280)
    return run.status.value


async def start_unwatched(db_url: str, first: int, count: int) -> list[uuid.UUID]:
    """Start runs straight through SQL, a hundred per statement."""
    ids: list[uuid.UUID] = []
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for start in range(first, first + count, 100):
            batch = [soak_input(i) for i in range(start, min(start + 100, first + count))]
            cur = await conn.execute(
                "select r.run_id from jsonb_array_elements(%s) with ordinality as x(input, i),"
                " lateral pgflow.start_flow('rel_soak', x.input) as r order by x.i",
                (Jsonb(batch),),
            )
            ids.extend(row[0] for row in await cur.fetchall())
    return ids


def read_executions(folder: Path) -> dict[tuple[str, str, int], list[tuple[int, str]]]:
    """(run, step, index) -> [(attempt, 'ok' | 'fail'), ...] from every worker's log."""
    executions: dict[tuple[str, str, int], list[tuple[int, str]]] = defaultdict(list)
    for path in folder.glob("exec-*.log"):
        for line in path.read_text().splitlines():
            run_id, step, index, attempt, outcome = line.split()
            executions[(run_id, step, int(index))].append((int(attempt), outcome))
    return executions


async def test_soak_two_thousand_runs_with_failures(
    db_url: str, log_dir: Path, tmp_path: Path
) -> None:
    exec_dir = tmp_path / "executions"
    exec_dir.mkdir()
    env = {"RELIABILITY_LOG_DIR": str(exec_dir)}
    with worker_processes() as workers:
        for _ in range(WORKERS):
            workers.append(
                WorkerProcess(
                    db_url,
                    "soak",
                    log_dir,
                    "--concurrency",
                    "10",
                    "--log-level",
                    "WARNING",
                    env=env,
                )
            )
        await wait_for_workers(db_url, FLOW, WORKERS)
        async with await PgflowClient.connect(db_url) as client:
            began = time.monotonic()
            watched: list[FlowRun] = []
            for i in range(WATCHED):
                watched.append(await client.start_flow(FLOW, soak_input(i)))
            watching = [asyncio.create_task(watch(run)) for run in watched]
            unwatched = await start_unwatched(db_url, WATCHED, RUNS - WATCHED)
            started = time.monotonic()
            all_ids = [uuid.UUID(r.run_id) for r in watched] + unwatched
            await wait_terminal(db_url, all_ids, within=270)
            finished = time.monotonic()
            client_saw = dict(
                zip(
                    (r.run_id for r in watched),
                    await asyncio.wait_for(asyncio.gather(*watching), 30),
                    strict=True,
                )
            )
        codes = await asyncio.gather(*(w.terminate() for w in workers))
        assert codes == [0] * WORKERS, [w.log()[-2000:] for w in workers]

    with psycopg.connect(db_url, autocommit=True) as conn:
        problems = audit(conn, FLOW)
        runs = {
            str(r[0]): (r[1], r[2], r[3])
            for r in conn.execute("select run_id, status, input, output from pgflow.runs")
        }
        tasks = {
            (str(r[0]), r[1], r[2]): (r[3], r[4], r[5])
            for r in conn.execute(
                "select run_id, step_slug, task_index, status, attempts_count, error_message"
                " from pgflow.step_tasks"
            )
        }
        archived = conn.execute("select count(*) from pgmq.a_rel_soak").fetchone()
        queued = conn.execute("select count(*) from pgmq.q_rel_soak").fetchone()
    executions = read_executions(exec_dir)
    assert problems == []
    assert len(runs) == RUNS
    assert queued == (0,)
    assert archived == (len(tasks),)

    # The client saw, for every run it watched, the status the database holds.
    assert {rid: runs[rid][0] for rid in client_saw} == client_saw

    mismatches: list[str] = []
    for rid, (status, given, output) in runs.items():
        n = given["n"]
        must_fail = run_must_fail(rid, n)
        if status != ("failed" if must_fail else "completed"):
            mismatches.append(f"run {rid}: {status}, expected the other")
            continue
        if must_fail:
            continue
        expected = {"sum": sum(i * i for i in range(n)), "label": given["label"].upper()}
        if output != {"total": expected}:
            mismatches.append(f"run {rid}: output {output}")
        for step, index in expected_tasks(n):
            need = attempts_needed(rid, step, index)
            got = tasks.get((rid, step, index))
            if got is None or got[:2] != ("completed", need):
                mismatches.append(f"task {rid}/{step}[{index}]: {got}, expected {need} attempts")
    assert mismatches == []

    # Handlers: no attempt ran twice, no task succeeded twice, and each completed task
    # succeeded exactly once, on the attempt the database counted.
    duplicates = [key for key, seen in executions.items() if len(seen) != len(set(seen))]
    assert duplicates == []
    twice = [key for key, seen in executions.items() if [o for _, o in seen].count("ok") > 1]
    assert twice == []
    for key, (status, attempts, _) in tasks.items():
        seen = sorted(executions.get(key, []))
        if status == "completed":
            assert seen[-1] == (attempts, "ok"), (key, seen)
            assert [a for a, _ in seen] == list(range(1, attempts + 1)), (key, seen)

    statuses = Counter(status for status, _, _ in runs.values())
    figures = {
        "runs": RUNS,
        "workers": WORKERS,
        "runs_completed": statuses["completed"],
        "runs_failed": statuses["failed"],
        "tasks": len(tasks),
        "handler_executions": sum(len(v) for v in executions.values()),
        "failed_attempts": sum(o == "fail" for v in executions.values() for _, o in v),
        "retried_tasks": sum(1 for _, a, _ in tasks.values() if a > 1),
        "seconds_starting_runs": round(started - began, 1),
        "seconds_first_start_to_all_terminal": round(finished - began, 1),
        "tasks_per_second": round(len(tasks) / (finished - began), 1),
        "client_watched": len(client_saw),
    }
    (log_dir / "soak-figures.json").write_text(json.dumps(figures, indent=2))
    print("soak figures:", json.dumps(figures))
    assert statuses["completed"] > RUNS * 0.9
    assert figures["retried_tasks"] > 0

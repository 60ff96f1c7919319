"""A task loop on the official ``PgflowSqlClient`` (``@pgflow/core``) executes runs on both SQLs.

``js/task_loop.mjs`` is the Node side of the worker benchmark. Here it must complete every run
of a chain and of a root map followed by a step, on our SQL (whose ``start_tasks`` rows carry
an extra ``flow_input`` column) as on the official one; and, on our SQL, start as pgflow 0.17's
worker does, through the compile and worker-tracking functions.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgflow_worker import compile_flow, flow_shape
from tests.interop._node import NodeError, NodeTaskLoop
from tests.interop.flows import CHAIN, ROOT_MAP

pytestmark = pytest.mark.usefixtures("ts_packages")

RUNS = 20
MAP_SIZE = 25
TIMEOUT = 30.0


def wait_until_finished(conn: psycopg.Connection[Any], loop: NodeTaskLoop) -> None:
    """Wait (bounded) until no run is still started, failing early if the loop dies."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        row = conn.execute("select count(*) from pgflow.runs where status = 'started'").fetchone()
        if row is not None and row[0] == 0:
            return
        loop.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"{row} runs unfinished after {TIMEOUT:g} s:\n{loop.log_tail()}")
        time.sleep(0.05)


def test_pgflow_sql_client_loop_completes_runs(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        for case in (CHAIN, ROOT_MAP):
            for statement in compile_flow(case.flow):
                conn.execute(statement.encode())
        chain_loop = NodeTaskLoop(any_db_url, CHAIN.flow.slug, max_poll_seconds=1)
        map_loop = NodeTaskLoop(any_db_url, ROOT_MAP.flow.slug, batch_size=7, max_poll_seconds=1)
        with chain_loop, map_loop:
            chain_loop.wait_registered(conn, TIMEOUT)
            map_loop.wait_registered(conn, TIMEOUT)
            for i in range(RUNS):
                conn.execute("select pgflow.start_flow(%s, %s)", (CHAIN.flow.slug, Jsonb({"i": i})))
            conn.execute(
                "select pgflow.start_flow(%s, %s)",
                (ROOT_MAP.flow.slug, Jsonb(list(range(MAP_SIZE)))),
            )
            wait_until_finished(conn, chain_loop)
            chain_summary = chain_loop.stop()
            map_summary = map_loop.stop()
        outputs = conn.execute(
            "select flow_slug, status, output from pgflow.runs order by flow_slug"
        ).fetchall()
        tasks = conn.execute(
            "select status, count(*) from pgflow.step_tasks group by status"
        ).fetchall()
    assert (chain_summary["completed"], chain_summary["failed"]) == (RUNS * 3, 0)
    assert (map_summary["completed"], map_summary["failed"]) == (MAP_SIZE + 1, 0)
    assert dict(tasks) == {"completed": RUNS * 3 + MAP_SIZE + 1}
    chain_runs = [row for row in outputs if row[0] == CHAIN.flow.slug]
    assert chain_runs == [(CHAIN.flow.slug, "completed", {"c": {"step": "c"}})] * RUNS
    [(_, status, output)] = [row for row in outputs if row[0] == ROOT_MAP.flow.slug]
    assert status == "completed"
    assert output == {"total": {"step": "total"}}


def test_the_loop_starts_as_pgflow_0_17_workers_do_on_our_sql(db_url: str) -> None:
    """Through its own ``sql`` connection: ensure_flow_compiled (two loops starting together
    compile once), track_worker_function, a workers row with pgflow_version, then the runs."""
    shape = flow_shape(CHAIN.flow)
    with psycopg.connect(db_url, autocommit=True) as conn:
        loops = [
            NodeTaskLoop(db_url, CHAIN.flow.slug, shape=shape, pgflow_version="0.17.1")
            for _ in range(2)
        ]
        with loops[0], loops[1]:
            for loop in loops:
                loop.wait_registered(conn, TIMEOUT)
            for i in range(RUNS):
                conn.execute("select pgflow.start_flow(%s, %s)", (CHAIN.flow.slug, Jsonb({"i": i})))
            wait_until_finished(conn, loops[0])
            summaries = [loop.stop() for loop in loops]
        assert sorted(s["compiled"] for s in summaries) == ["compiled", "verified"]
        assert sum(s["completed"] for s in summaries) == RUNS * 3
        assert conn.execute(
            "select function_name, start_mode from pgflow.worker_functions"
        ).fetchall() == [(NodeTaskLoop.FUNCTION_NAME, "process")]
        assert conn.execute("select distinct pgflow_version from pgflow.workers").fetchall() == [
            ("0.17.1",)
        ]
        assert conn.execute(
            "select count(*) from pgflow.runs where status = 'completed'"
        ).fetchone() == (RUNS,)


def test_the_loop_refuses_to_start_on_a_changed_flow(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for statement in compile_flow(CHAIN.flow):
            conn.execute(statement.encode())
        changed = flow_shape(ROOT_MAP.flow)
        loop = NodeTaskLoop(db_url, CHAIN.flow.slug, shape=changed)
        with loop, pytest.raises(NodeError) as stopped:
            loop.wait_registered(conn, TIMEOUT)
        assert "exited with code 3" in str(stopped.value)
        assert f"flow {CHAIN.flow.slug} differs: Step count differs" in str(stopped.value)
        assert conn.execute("select count(*) from pgflow.workers").fetchone() == (0,)
        assert conn.execute("select count(*) from pgflow.worker_functions").fetchone() == (0,)
        assert conn.execute(
            "select count(*) from pgflow.steps where flow_slug = %s", (CHAIN.flow.slug,)
        ).fetchone() == (len(CHAIN.flow.steps),)

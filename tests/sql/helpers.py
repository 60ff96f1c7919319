"""Small drivers for SQL-level tests: define flows, play the worker's part, read events."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

WORKER_ID = uuid.UUID("11111111-1111-1111-1111-111111111111")


@dataclass(frozen=True)
class Task:
    """One row returned by pgflow.start_tasks."""

    flow_slug: str
    run_id: uuid.UUID
    step_slug: str
    input: Any
    msg_id: int
    task_index: int
    flow_input: Any = None


def define_flow(
    conn: psycopg.Connection[Any],
    slug: str,
    steps: Sequence[tuple[str, Sequence[str]] | tuple[str, Sequence[str], str]],
    **flow_options: int,
) -> None:
    """Create a flow and its steps: ``(slug, deps)`` or ``(slug, deps, 'map')``."""
    args = ", ".join(f"{k} => %s" for k in flow_options)
    conn.execute(
        f"select pgflow.create_flow(%s{', ' + args if args else ''})".encode(),
        (slug, *flow_options.values()),
    )
    for step in steps:
        step_slug, deps = step[0], list(step[1])
        step_type = step[2] if len(step) > 2 else "single"  # type: ignore[misc]
        conn.execute(
            "select pgflow.add_step(%s, %s, %s::text[], step_type => %s)",
            (slug, step_slug, deps, step_type),
        )


def ensure_worker(
    conn: psycopg.Connection[Any], queue: str, worker_id: uuid.UUID = WORKER_ID
) -> None:
    conn.execute(
        "insert into pgflow.workers (worker_id, queue_name, function_name) values (%s, %s, 'tests')"
        " on conflict (worker_id) do nothing",
        (worker_id, queue),
    )


def start_flow(conn: psycopg.Connection[Any], slug: str, payload: Any) -> uuid.UUID:
    row = conn.execute(
        "select run_id from pgflow.start_flow(%s, %s)", (slug, Jsonb(payload))
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def read_and_start(
    conn: psycopg.Connection[Any],
    flow: str,
    qty: int = 10,
    vt: int = 5,
    worker_id: uuid.UUID = WORKER_ID,
) -> list[Task]:
    """Phase one and two of a worker poll, without waiting for messages."""
    ensure_worker(conn, flow, worker_id)
    ids = [r[0] for r in conn.execute("select msg_id from pgmq.read(%s, %s, %s)", (flow, vt, qty))]
    if not ids:
        return []
    rows = conn.execute(
        "select to_jsonb(t) from pgflow.start_tasks(%s, %s::bigint[], %s) t",
        (flow, ids, worker_id),
    ).fetchall()
    # The official 0.8.1 SQL has no flow_input column; both shapes are accepted.
    return [
        Task(
            flow_slug=r["flow_slug"],
            run_id=uuid.UUID(r["run_id"]),
            step_slug=r["step_slug"],
            input=r["input"],
            msg_id=r["msg_id"],
            task_index=r["task_index"],
            flow_input=r.get("flow_input"),
        )
        for (r,) in rows
    ]


def complete(conn: psycopg.Connection[Any], task: Task, output: Any) -> None:
    conn.execute(
        "select pgflow.complete_task(%s, %s, %s, %s)",
        (task.run_id, task.step_slug, task.task_index, Jsonb(output)),
    )


def fail(conn: psycopg.Connection[Any], task: Task, message: str) -> None:
    conn.execute(
        "select pgflow.fail_task(%s, %s, %s, %s)",
        (task.run_id, task.step_slug, task.task_index, message),
    )


def run_row(conn: psycopg.Connection[Any], run_id: uuid.UUID) -> dict[str, Any]:
    cur = conn.execute("select to_jsonb(r) from pgflow.runs r where run_id = %s", (run_id,))
    row = cur.fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def step_states(conn: psycopg.Connection[Any], run_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "select step_slug, to_jsonb(s) from pgflow.step_states s where run_id = %s", (run_id,)
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def events(conn: psycopg.Connection[Any], run_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    """Broadcast events of one run, in insertion order."""
    rows = conn.execute(
        "select event, payload from realtime.messages where topic = %s order by inserted_at, ctid",
        (f"pgflow:run:{run_id}",),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def queue_messages(conn: psycopg.Connection[Any], flow: str) -> list[dict[str, Any]]:
    """Messages still in the flow's queue (visible or not)."""
    rows = conn.execute(
        f"select message from pgmq.q_{flow.lower()} order by msg_id".encode()
    ).fetchall()
    return [r[0] for r in rows]

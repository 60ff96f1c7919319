"""Small drivers for SQL-level tests: define flows, play the worker's part, read events.

Every helper works on both SQL cores the suite runs against: pgflow-py's own and the official
``@pgflow/core`` 0.8.1 (whose non-map task input carries a ``run`` key and whose
``step_task_record`` has no ``flow_input``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

WORKER_ID = uuid.UUID("11111111-1111-1111-1111-111111111111")

Conn = psycopg.Connection[Any]


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

    @property
    def deps(self) -> Any:
        """The input without 0.8.1's ``run`` key: what both cores give a non-map step."""
        if isinstance(self.input, dict):
            return {k: v for k, v in self.input.items() if k != "run"}
        return self.input


# -- the core under test ---------------------------------------------------------------------


def is_official(conn: Conn) -> bool:
    """True on the official 0.8.1 SQL (recognised by its lack of step_states.output)."""
    row = conn.execute(
        "select not exists (select 1 from information_schema.columns"
        " where table_schema = 'pgflow' and table_name = 'step_states'"
        " and column_name = 'output')"
    ).fetchone()
    assert row is not None
    return bool(row[0])


@contextlib.contextmanager
def raises_sqlstate(sqlstate: str, *needles: str) -> Iterator[pytest.ExceptionInfo[psycopg.Error]]:
    """Expect a database error with this SQLSTATE whose message contains every needle."""
    with pytest.raises(psycopg.Error) as info:
        yield info
    assert info.value.sqlstate == sqlstate, f"{info.value.sqlstate}: {info.value}"
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# -- definitions and runs --------------------------------------------------------------------


def define_flow(
    conn: Conn,
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
        step_type = step[2] if len(step) > 2 else "single"
        conn.execute(
            "select pgflow.add_step(%s, %s, %s::text[], step_type => %s)",
            (slug, step_slug, deps, step_type),
        )


def add_step(conn: Conn, flow: str, step: str, deps: Sequence[str] = (), **options: Any) -> Any:
    """Call pgflow.add_step with keyword options; returns the steps row as a dict."""
    extra = "".join(f", {k} => %s" for k in options)
    row = conn.execute(
        f"select to_jsonb(pgflow.add_step(%s, %s, %s::text[]{extra}))".encode(),
        (flow, step, list(deps), *options.values()),
    ).fetchone()
    assert row is not None
    return row[0]


def ensure_worker(conn: Conn, queue: str, worker_id: uuid.UUID = WORKER_ID) -> None:
    conn.execute(
        "insert into pgflow.workers (worker_id, queue_name, function_name) values (%s, %s, 'tests')"
        " on conflict (worker_id) do nothing",
        (worker_id, queue),
    )


def start_flow(conn: Conn, slug: str, payload: Any, run_id: uuid.UUID | None = None) -> uuid.UUID:
    row = conn.execute(
        "select run_id from pgflow.start_flow(%s, %s, %s)", (slug, Jsonb(payload), run_id)
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


# -- the worker's part -----------------------------------------------------------------------


def read_ids(conn: Conn, flow: str, qty: int = 10, vt: int = 5) -> list[int]:
    """Phase one of a poll: read visible messages (no waiting)."""
    return [r[0] for r in conn.execute("select msg_id from pgmq.read(%s, %s, %s)", (flow, vt, qty))]


def start_tasks(
    conn: Conn, flow: str, msg_ids: Sequence[int], worker_id: uuid.UUID = WORKER_ID
) -> list[Task]:
    """Phase two of a poll: claim the tasks behind these messages."""
    ensure_worker(conn, flow, worker_id)
    rows = conn.execute(
        "select to_jsonb(t) from pgflow.start_tasks(%s, %s::bigint[], %s) t",
        (flow, list(msg_ids), worker_id),
    ).fetchall()
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


def read_and_start(
    conn: Conn, flow: str, qty: int = 10, vt: int = 5, worker_id: uuid.UUID = WORKER_ID
) -> list[Task]:
    """Phase one and two of a worker poll, without waiting for messages."""
    ensure_worker(conn, flow, worker_id)
    ids = read_ids(conn, flow, qty, vt)
    return start_tasks(conn, flow, ids, worker_id) if ids else []


def complete(conn: Conn, task: Task, output: Any) -> list[dict[str, Any]]:
    """pgflow.complete_task; returns the step_tasks rows it returned."""
    rows = conn.execute(
        "select to_jsonb(t) from pgflow.complete_task(%s, %s, %s, %s) t",
        (task.run_id, task.step_slug, task.task_index, Jsonb(output)),
    ).fetchall()
    return [r[0] for r in rows]


def fail(conn: Conn, task: Task, message: str) -> list[dict[str, Any]]:
    """pgflow.fail_task; returns the step_tasks rows it returned."""
    rows = conn.execute(
        "select to_jsonb(t) from pgflow.fail_task(%s, %s, %s, %s) t",
        (task.run_id, task.step_slug, task.task_index, message),
    ).fetchall()
    return [r[0] for r in rows]


def drain(conn: Conn, flow: str, handler: Any = None, rounds: int = 100) -> int:
    """Run every available task to completion; ``handler(task)`` gives the output."""
    done = 0
    for _ in range(rounds):
        tasks = read_and_start(conn, flow, qty=100)
        if not tasks:
            return done
        for task in tasks:
            complete(conn, task, handler(task) if handler else None)
            done += 1
    raise AssertionError(f"flow {flow} still had tasks after {rounds} rounds")


# -- reading state ---------------------------------------------------------------------------


def run_row(conn: Conn, run_id: uuid.UUID) -> dict[str, Any]:
    cur = conn.execute("select to_jsonb(r) from pgflow.runs r where run_id = %s", (run_id,))
    row = cur.fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def step_states(conn: Conn, run_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "select step_slug, to_jsonb(s) from pgflow.step_states s where run_id = %s", (run_id,)
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def task_rows(conn: Conn, run_id: uuid.UUID, step_slug: str | None = None) -> list[dict[str, Any]]:
    """step_tasks rows of a run (or of one step), by step then task_index."""
    rows = conn.execute(
        "select to_jsonb(t) from pgflow.step_tasks t where run_id = %s"
        " and (%s::text is null or step_slug = %s) order by step_slug, task_index",
        (run_id, step_slug, step_slug),
    ).fetchall()
    return [r[0] for r in rows]


def task_row(conn: Conn, task: Task) -> dict[str, Any]:
    rows = task_rows(conn, task.run_id, task.step_slug)
    (row,) = [r for r in rows if r["task_index"] == task.task_index]
    return row


def events(conn: Conn, run_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    """Broadcast events of one run, in insertion order."""
    rows = conn.execute(
        "select event, payload from realtime.messages where topic = %s order by inserted_at, ctid",
        (f"pgflow:run:{run_id}",),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def event_names(conn: Conn, run_id: uuid.UUID) -> list[str]:
    return [name for name, _ in events(conn, run_id)]


def queue_messages(conn: Conn, flow: str) -> list[dict[str, Any]]:
    """Messages still in the flow's queue (visible or not)."""
    rows = conn.execute(
        f"select message from pgmq.q_{flow.lower()} order by msg_id".encode()
    ).fetchall()
    return [r[0] for r in rows]


@dataclass(frozen=True)
class QueueRow:
    msg_id: int
    vt: datetime
    read_ct: int
    message: dict[str, Any]
    vt_in: float
    """Seconds from now (the database's clock) until the message becomes visible."""


def queue_rows(conn: Conn, flow: str) -> list[QueueRow]:
    """Rows of the flow's pgmq queue table with their visibility, by msg_id."""
    rows = conn.execute(
        f"select msg_id, vt, read_ct, message,"
        f" extract(epoch from vt - clock_timestamp())::float8"
        f" from pgmq.q_{flow.lower()} order by msg_id".encode()
    ).fetchall()
    return [QueueRow(*r) for r in rows]


def archived_ids(conn: Conn, flow: str) -> set[int]:
    rows = conn.execute(f"select msg_id from pgmq.a_{flow.lower()}".encode()).fetchall()
    return {r[0] for r in rows}


def make_all_visible(conn: Conn, flow: str) -> int:
    """Force every message still in the queue to be visible now; returns how many."""
    cur = conn.execute(f"update pgmq.q_{flow.lower()} set vt = clock_timestamp()".encode())
    return cur.rowcount


def backdate_started(
    conn: Conn, run_id: uuid.UUID, step_slug: str, seconds: float, task_index: int | None = None
) -> None:
    """Pretend a started task began ``seconds`` ago (instead of waiting for timeouts)."""
    conn.execute(
        "update pgflow.step_tasks set started_at = started_at - make_interval(secs => %s),"
        " queued_at = queued_at - make_interval(secs => %s)"
        " where run_id = %s and step_slug = %s and (%s::int is null or task_index = %s)",
        (seconds, seconds, run_id, step_slug, task_index, task_index),
    )


def row_counts(conn: Conn, flow: str | None = None) -> dict[str, int]:
    """Counts of every definition and runtime table, of pgmq's queues and of the broadcasts
    (and of a flow's queue messages and archive): compared before and after bad input."""
    queries = {
        "flows": "select count(*) from pgflow.flows",
        "steps": "select count(*) from pgflow.steps",
        "deps": "select count(*) from pgflow.deps",
        "queues": "select count(*) from pgmq.list_queues()",
        "runs": "select count(*) from pgflow.runs",
        "step_states": "select count(*) from pgflow.step_states",
        "step_tasks": "select count(*) from pgflow.step_tasks",
        "realtime.messages": "select count(*) from realtime.messages",
    }
    if flow is not None:
        queries["queue"] = f"select count(*) from pgmq.q_{flow.lower()}"
        queries["archive"] = f"select count(*) from pgmq.a_{flow.lower()}"
    counts = {}
    for key, query in queries.items():
        row = conn.execute(query.encode()).fetchone()
        assert row is not None
        counts[key] = int(row[0])
    return counts

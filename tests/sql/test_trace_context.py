"""Trace contexts stored with runs: start_flow_with_states_traced and pgflow.run_trace_contexts."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from tests.sql.helpers import (
    complete,
    define_flow,
    drain,
    fail,
    queue_messages,
    raises_sqlstate,
    read_and_start,
    row_counts,
    start_flow,
)

Conn = psycopg.Connection[Any]

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def start_traced(
    conn: Conn,
    flow: str,
    payload: Any,
    traceparent: str | None = TRACEPARENT,
    tracestate: str | None = None,
    run_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    row = conn.execute(
        "select pgflow.start_flow_with_states_traced(%s, %s, %s, %s, %s)",
        (flow, Jsonb(payload), run_id, traceparent, tracestate),
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def stored(conn: Conn) -> dict[uuid.UUID, tuple[str, str | None]]:
    return {
        r[0]: (r[1], r[2])
        for r in conn.execute(
            "select run_id, traceparent, tracestate from pgflow.run_trace_contexts"
        )
    }


@pytest.fixture
def flow(conn: Conn) -> str:
    define_flow(conn, "traced", [("a", []), ("b", ["a"])], max_attempts=1)
    return "traced"


def test_a_traced_start_stores_the_context_and_returns_the_snapshot(conn: Conn, flow: str) -> None:
    state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    snapshot = start_traced(conn, flow, {"x": 1}, tracestate=state)
    run_id = uuid.UUID(snapshot["run"]["run_id"])
    assert snapshot["run"]["status"] == "started"
    assert {s["step_slug"]: s["status"] for s in snapshot["steps"]} == {
        "a": "started",
        "b": "created",
    }
    assert stored(conn) == {run_id: (TRACEPARENT, state)}


def test_the_messages_and_the_run_are_those_of_start_flow(conn: Conn, flow: str) -> None:
    """The wire format is pgflow's: nothing of the trace reaches the queue or the run."""
    plain = start_flow(conn, flow, {"x": 1})
    traced = uuid.UUID(start_traced(conn, flow, {"x": 1})["run"]["run_id"])
    messages = {m["run_id"]: m for m in queue_messages(conn, flow)}
    assert set(messages[str(plain)]) == set(messages[str(traced)])
    assert set(messages[str(traced)]) == {"flow_slug", "run_id", "step_slug", "task_index"}
    plain_run, traced_run = (
        conn.execute(
            "select to_jsonb(r) - 'run_id' - 'started_at' from pgflow.runs r where run_id = %s",
            (r,),
        ).fetchone()
        for r in (plain, traced)
    )
    assert plain_run == traced_run


def test_without_a_traceparent_nothing_is_stored(conn: Conn, flow: str) -> None:
    start_traced(conn, flow, {}, traceparent=None, tracestate="ignored=1")
    assert stored(conn) == {}
    assert start_flow(conn, flow, {})
    assert stored(conn) == {}


def test_a_traceparent_in_capitals_or_padded_is_stored_canonical(conn: Conn, flow: str) -> None:
    start_traced(conn, flow, {}, traceparent=f"  {TRACEPARENT.upper()} ")
    assert [tp for tp, _ in stored(conn).values()] == [TRACEPARENT]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "nonsense",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
    ],
)
def test_a_bad_traceparent_is_refused_and_starts_nothing(conn: Conn, flow: str, bad: str) -> None:
    before = row_counts(conn, flow)
    with raises_sqlstate("22023", "is not a valid W3C traceparent"):
        start_traced(conn, flow, {}, traceparent=bad)
    assert row_counts(conn, flow) == before
    assert stored(conn) == {}


def test_a_long_tracestate_is_refused(conn: Conn, flow: str) -> None:
    before = row_counts(conn, flow)
    with raises_sqlstate("22023", "tracestate is 600 characters long"):
        start_traced(conn, flow, {}, tracestate="k=" + "v" * 598)
    assert row_counts(conn, flow) == before


def test_the_table_refuses_a_bad_traceparent_written_directly(conn: Conn, flow: str) -> None:
    run_id = start_flow(conn, flow, {})
    with raises_sqlstate("23514", "traceparent_is_valid"):
        conn.execute(
            "insert into pgflow.run_trace_contexts (run_id, traceparent) values (%s, 'x')",
            (run_id,),
        )


def test_a_start_that_fails_stores_nothing(conn: Conn) -> None:
    with raises_sqlstate("23503", "does not exist"):
        start_traced(conn, "no_such_flow", {})
    assert stored(conn) == {}


def test_deleting_a_flow_deletes_its_runs_contexts(conn: Conn, flow: str) -> None:
    define_flow(conn, "other", [("a", [])])
    start_traced(conn, flow, {})
    kept = uuid.UUID(start_traced(conn, "other", {})["run"]["run_id"])
    conn.execute("select pgflow.delete_flow_and_data(%s)", (flow,))
    assert list(stored(conn)) == [kept]


def test_pruning_deletes_the_contexts_of_the_runs_it_deletes(conn: Conn, flow: str) -> None:
    done = uuid.UUID(start_traced(conn, flow, {})["run"]["run_id"])
    drain(conn, flow)
    going = uuid.UUID(start_traced(conn, flow, {})["run"]["run_id"])
    conn.execute(
        "update pgflow.runs set started_at = started_at - interval '2 days',"
        " completed_at = completed_at - interval '1 day' where run_id = %s",
        (done,),
    )
    conn.execute("select pgflow.prune_data_older_than(interval '1 hour')")
    assert list(stored(conn)) == [going]


def test_a_retry_starts_without_a_context(conn: Conn, flow: str) -> None:
    """retry_run is its own call, made outside the first run's trace."""
    source = uuid.UUID(start_traced(conn, flow, {})["run"]["run_id"])
    (task,) = read_and_start(conn, flow)
    fail(conn, task, "boom")
    row = conn.execute("select run_id from pgflow.retry_run(%s)", (source,)).fetchone()
    assert row is not None
    assert list(stored(conn)) == [source]
    (retried,) = read_and_start(conn, flow)
    assert retried.run_id == row[0]
    complete(conn, retried, 1)


def test_nothing_is_granted_to_public(conn: Conn) -> None:
    role = f"nobody_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("create role {}").format(sql.Identifier(role)))
    try:
        row = conn.execute(
            "select has_table_privilege(%s, 'pgflow.run_trace_contexts', 'select'),"
            " has_function_privilege(%s,"
            " 'pgflow.start_flow_with_states_traced(text,jsonb,uuid,text,text)', 'execute')",
            (role, role),
        ).fetchone()
    finally:
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))
    assert row == (False, False)

"""Broadcast events (section 1.7): names, topics, payload keys, order, privacy."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from tests.sql.helpers import (
    complete,
    define_flow,
    event_names,
    events,
    fail,
    is_official,
    make_all_visible,
    read_and_start,
    start_flow,
)

Conn = psycopg.Connection[Any]

KEYS = {
    "run:started": {
        "event_type", "run_id", "flow_slug", "input", "status", "remaining_steps", "started_at",
    },
    "step:started": {
        "event_type", "run_id", "step_slug", "status", "started_at", "remaining_tasks",
        "remaining_deps",
    },
    "step:completed": {"event_type", "run_id", "step_slug", "status", "output", "completed_at"},
    "step:completed:taskless": {
        "event_type", "run_id", "step_slug", "status", "started_at", "completed_at",
        "remaining_tasks", "remaining_deps", "output",
    },
    "run:completed": {"event_type", "run_id", "flow_slug", "status", "output", "completed_at"},
    "step:failed": {"event_type", "run_id", "step_slug", "status", "error_message", "failed_at"},
    "run:failed": {"event_type", "run_id", "flow_slug", "status", "error_message", "failed_at"},
}  # fmt: skip


def kind(event: str) -> str:
    """`step:<slug>:<status>` → `step:<status>`."""
    parts = event.split(":")
    return f"step:{parts[-1]}" if parts[0] == "step" else event


def assert_payload(event: str, payload: dict[str, Any], run_id: uuid.UUID, key: str = "") -> None:
    expected = KEYS[key or kind(event)] | {"id"}
    assert set(payload) == expected, event
    assert payload["event_type"] == kind(event)
    assert payload["run_id"] == str(run_id)
    uuid.UUID(payload["id"])
    if event.startswith("step:"):
        assert payload["step_slug"] == event.split(":")[1]
        assert payload["status"] == event.split(":")[2]
    else:
        assert payload["status"] == event.split(":")[1]


def test_diamond_flow_events_in_order_with_payloads(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])])
        run_id = start_flow(conn, "f", {"in": 1})
        (a,) = read_and_start(conn, "f")
        complete(conn, a, {"a": 1})
        b, c = sorted(read_and_start(conn, "f"), key=lambda t: t.step_slug)
        complete(conn, c, "c-out")
        complete(conn, b, "b-out")
        (d,) = read_and_start(conn, "f")
        complete(conn, d, ["d"])
        got = events(conn, run_id)
        assert [e for e, _ in got] == [
            "run:started",
            "step:a:started",
            "step:a:completed",
            "step:b:started",
            "step:c:started",
            "step:c:completed",
            "step:b:completed",
            "step:d:started",
            "step:d:completed",
            "run:completed",
        ]
        for event, payload in got:
            assert_payload(event, payload, run_id)
        by_event = dict(got)
        assert by_event["run:started"]["input"] == {"in": 1}
        assert by_event["run:started"]["remaining_steps"] == 4
        assert by_event["run:started"]["flow_slug"] == "f"
        assert (
            by_event["step:d:started"]["remaining_tasks"],
            by_event["step:d:started"]["remaining_deps"],
        ) == (1, 0)
        assert by_event["step:a:completed"]["output"] == {"a": 1}
        assert by_event["step:d:completed"]["output"] == ["d"]
        assert by_event["run:completed"]["output"] == {"d": ["d"]}


def test_events_go_to_the_runs_public_topic(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])])
        run_id = start_flow(conn, "f", {})
        other = start_flow(conn, "f", {})
        rows = conn.execute(
            "select topic, private, extension, id, payload->>'id' from realtime.messages"
        ).fetchall()
        assert {r[0] for r in rows} == {f"pgflow:run:{run_id}", f"pgflow:run:{other}"}
        assert all(r[1] is False and r[2] == "broadcast" for r in rows)
        assert all(str(r[3]) == r[4] for r in rows)  # realtime.send adds the row's id


def test_taskless_and_map_payloads(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("list", []), ("each", ["list"], "map"), ("m", [], "map")])
        run_id = start_flow(conn, "f", [1, 2, 3])
        by_event = dict(events(conn, run_id))
        assert by_event["step:m:started"]["remaining_tasks"] == 3
        (producer,) = [t for t in read_and_start(conn, "f") if t.step_slug == "list"]
        complete(conn, producer, [])
        got = events(conn, run_id)
        (taskless,) = [p for e, p in got if e == "step:each:completed"]
        assert_payload("step:each:completed", taskless, run_id, "step:completed:taskless")
        assert (taskless["output"], taskless["remaining_tasks"], taskless["remaining_deps"]) == (
            [],
            0,
            0,
        )


def test_failure_events(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])], max_attempts=2, base_delay=0)
        run_id = start_flow(conn, "f", {})
        (task,) = read_and_start(conn, "f")
        fail(conn, task, "once")
        assert event_names(conn, run_id) == ["run:started", "step:a:started"]  # retry: silent
        make_all_visible(conn, "f")
        (task,) = read_and_start(conn, "f")
        fail(conn, task, "twice")
        got = events(conn, run_id)
        assert [e for e, _ in got] == [
            "run:started",
            "step:a:started",
            "step:a:failed",
            "run:failed",
        ]
        for event, payload in got[2:]:
            assert_payload(event, payload, run_id)
            assert payload["error_message"] == "twice"
        assert got[3][1]["flow_slug"] == "f"


def test_type_violation_event_payloads(any_db_url: str) -> None:
    """Ours adds error_message to run:failed (0.8.1 sends none, so clients show an unknown
    error); otherwise the same keys."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("p", []), ("m", ["p"], "map")])
        run_id = start_flow(conn, "f", {})
        (task,) = read_and_start(conn, "f")
        complete(conn, task, 1)
        got = events(conn, run_id)[-2:]
        assert [e for e, _ in got] == ["run:failed", "step:p:failed"]
        (_, run_event), (_, step_event) = got
        assert_payload("step:p:failed", step_event, run_id)
        if is_official(conn):
            assert set(run_event) == KEYS["run:failed"] - {"error_message"} | {"id"}
        else:
            assert_payload("run:failed", run_event, run_id)
            assert run_event["error_message"] == step_event["error_message"]

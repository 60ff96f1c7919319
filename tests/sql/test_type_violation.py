"""TYPE_VIOLATION: a single step feeding a map step must produce an array."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.sql.helpers import (
    archived_ids,
    complete,
    define_flow,
    events,
    is_official,
    queue_rows,
    read_and_start,
    read_ids,
    run_row,
    start_flow,
    start_tasks,
    step_states,
    task_row,
    task_rows,
)

Conn = psycopg.Connection[Any]


def test_non_array_output_fails_the_run(any_db_url: str) -> None:
    """Events run:failed then step:failed. Ours carries the error message in run:failed too
    (0.8.1's has none, so clients show "Unknown error"); ours returns the failed task row
    where 0.8.1 returns no row."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        official = is_official(conn)
        define_flow(conn, "f", [("producer", []), ("consumer", ["producer"], "map")])
        for value, type_name in [
            ({"a": 1}, "object"),
            ("s", "string"),
            (7, "number"),
            (False, "boolean"),
            (None, "null"),
        ]:
            run_id = start_flow(conn, "f", {})
            (task,) = read_and_start(conn, "f")
            before = len(events(conn, run_id))
            returned = complete(conn, task, value)
            step_error = (
                f"[TYPE_VIOLATION] Map step consumer expects array input but dependency "
                f"producer produced {type_name}"
            )
            row = task_row(conn, task)
            assert row["status"] == "failed"
            assert row["output"] == value
            assert row["error_message"] == f"[TYPE_VIOLATION] Produced {type_name} instead of array"
            assert returned == ([] if official else [row])

            state = step_states(conn, run_id)["producer"]
            assert (state["status"], state["error_message"]) == ("failed", step_error)
            assert step_states(conn, run_id)["consumer"]["status"] == "created"
            run = run_row(conn, run_id)
            assert run["status"] == "failed"
            assert run["failed_at"] is not None

            new = events(conn, run_id)[before:]
            assert [name for name, _ in new] == ["run:failed", "step:producer:failed"]
            run_event, step_event = new[0][1], new[1][1]
            assert step_event["error_message"] == step_error
            if official:
                assert "error_message" not in run_event
            else:
                assert run_event["error_message"] == step_error
            assert task.msg_id in archived_ids(conn, "f")
        assert queue_rows(conn, "f") == []


def test_sql_null_output_counts_as_null(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("producer", []), ("consumer", ["producer"], "map")])
        run_id = start_flow(conn, "f", {})
        (task,) = read_and_start(conn, "f")
        conn.execute("select pgflow.complete_task(%s, 'producer', 0, null)", (run_id,))
        assert (
            task_row(conn, task)["error_message"]
            == "[TYPE_VIOLATION] Produced null instead of array"
        )
        assert run_row(conn, run_id)["status"] == "failed"


def test_non_array_output_is_fine_without_a_map_child(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", []), ("b", ["a"]), ("m", [], "map"), ("n", ["m"], "map")])
        run_id = start_flow(conn, "f", [1])
        for t in read_and_start(conn, "f"):
            complete(conn, t, {"not": "an array"})  # a map task's output feeds n by count
        for t in read_and_start(conn, "f"):
            complete(conn, t, "fine")
        run = run_row(conn, run_id)
        assert run["status"] == "completed"
        assert run["output"] == {"b": "fine", "n": ["fine"]}


def test_every_active_task_is_ended_and_archived(any_db_url: str) -> None:
    """Queued and started tasks of other steps: all messages archived on both; ours also
    marks the tasks failed (like upstream's later fix #645) so nothing looks in flight."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(
            conn,
            "f",
            [
                ("producer", []),
                ("items", [], "map"),
                ("other", []),
                ("consumer", ["producer"], "map"),
            ],
        )
        run_id = start_flow(conn, "f", [1, 2, 3, 4])
        by_key = {
            (r["step_slug"], r["task_index"]): r["message_id"] for r in task_rows(conn, run_id)
        }
        assert len(read_ids(conn, "f", vt=30)) == 6
        wanted = [by_key["producer", 0], by_key["items", 0], by_key["items", 1]]
        (producer,) = [t for t in start_tasks(conn, "f", wanted) if t.step_slug == "producer"]
        complete(conn, producer, {"x": 1})
        assert producer.msg_id in archived_ids(conn, "f")
        assert queue_rows(conn, "f") == []
        assert set(by_key.values()) <= archived_ids(conn, "f")
        statuses = {(r["step_slug"], r["task_index"]): r["status"] for r in task_rows(conn, run_id)}
        if is_official(conn):
            assert statuses == {
                ("producer", 0): "failed",
                ("items", 0): "started",
                ("items", 1): "started",
                ("items", 2): "queued",
                ("items", 3): "queued",
                ("other", 0): "queued",
            }
        else:
            others = {k: v for k, v in statuses.items() if k != ("producer", 0)}
            assert (statuses["producer", 0], set(others.values())) == ("failed", {"cancelled"})
            rows = [r for r in task_rows(conn, run_id) if r["step_slug"] != "producer"]
            assert all(r["error_message"] is None and r["output"] is None for r in rows)


def test_first_map_child_in_step_order_is_named(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(
            conn,
            "f",
            [("p", []), ("plain", ["p"]), ("zeta", ["p"], "map"), ("alpha", ["p"], "map")],
        )
        run_id = start_flow(conn, "f", {})
        (task,) = read_and_start(conn, "f")
        complete(conn, task, "text")
        assert step_states(conn, run_id)["p"]["error_message"] == (
            "[TYPE_VIOLATION] Map step zeta expects array input but dependency p produced string"
        )

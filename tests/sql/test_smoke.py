"""A first end-to-end pass through the SQL core."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.sql.helpers import (
    complete,
    define_flow,
    events,
    queue_messages,
    read_and_start,
    run_row,
    start_flow,
    step_states,
)


def test_three_step_flow_completes_with_events_in_order(conn: psycopg.Connection[Any]) -> None:
    define_flow(conn, "demo", [("a", []), ("b", ["a"]), ("c", ["b"])])
    run_id = start_flow(conn, "demo", {"x": 1})
    (task,) = read_and_start(conn, "demo")
    assert (task.step_slug, task.input, task.flow_input) == ("a", {}, {"x": 1})
    complete(conn, task, {"a": 1})
    (task,) = read_and_start(conn, "demo")
    assert (task.step_slug, task.input, task.flow_input) == ("b", {"a": {"a": 1}}, None)
    complete(conn, task, [1, 2])
    (task,) = read_and_start(conn, "demo")
    complete(conn, task, "done")
    run = run_row(conn, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"c": "done"}
    assert run["remaining_steps"] == 0
    names = [e for e, _ in events(conn, run_id)]
    assert names == [
        "run:started",
        "step:a:started",
        "step:a:completed",
        "step:b:started",
        "step:b:completed",
        "step:c:started",
        "step:c:completed",
        "run:completed",
    ]
    assert queue_messages(conn, "demo") == []


def test_root_map_and_dependent_map(conn: psycopg.Connection[Any]) -> None:
    define_flow(conn, "maps", [("m", [], "map"), ("n", ["m"], "map"), ("s", ["n"])])
    run_id = start_flow(conn, "maps", [1, 2, 3])
    tasks = read_and_start(conn, "maps")
    assert sorted((t.task_index, t.input) for t in tasks) == [(0, 1), (1, 2), (2, 3)]
    for t in reversed(tasks):
        complete(conn, t, t.input * 10)
    assert step_states(conn, run_id)["m"]["output"] == [10, 20, 30]
    tasks = read_and_start(conn, "maps")
    assert sorted((t.task_index, t.input) for t in tasks) == [(0, 10), (1, 20), (2, 30)]
    for t in tasks:
        complete(conn, t, t.input + 1)
    (task,) = read_and_start(conn, "maps")
    assert task.input == {"n": [11, 21, 31]}
    complete(conn, task, "ok")
    assert run_row(conn, run_id)["output"] == {"s": "ok"}


def test_empty_root_map_cascades_in_start_flow(conn: psycopg.Connection[Any]) -> None:
    define_flow(conn, "empty", [("m", [], "map"), ("n", ["m"], "map")])
    run_id = start_flow(conn, "empty", [])
    run = run_row(conn, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"n": []}
    assert [e for e, _ in events(conn, run_id)] == [
        "run:started",
        "step:m:completed",
        "step:n:completed",
        "run:completed",
    ]

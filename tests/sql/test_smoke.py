"""A first end-to-end pass through the SQL core, on ours and on the official 0.8.1 SQL."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.sql.helpers import (
    Conn,
    complete,
    define_flow,
    events,
    is_official,
    queue_messages,
    read_and_start,
    run_row,
    start_flow,
    step_states,
)


@pytest.fixture
def conn(any_db_url: str) -> Iterator[Conn]:
    """Every test here runs on both cores: these are the behaviours they share."""
    with psycopg.connect(any_db_url, autocommit=True) as c:
        yield c


def test_three_step_flow_completes_with_events_in_order(conn: Conn) -> None:
    """A root step gets the run input: ours in ``flow_input`` (0.14's record), 0.8.1 under the
    ``run`` key of its input."""
    define_flow(conn, "demo", [("a", []), ("b", ["a"]), ("c", ["b"])])
    run_id = start_flow(conn, "demo", {"x": 1})
    official = is_official(conn)
    (task,) = read_and_start(conn, "demo")
    assert (task.step_slug, task.deps) == ("a", {})
    assert (task.input["run"] if official else task.flow_input) == {"x": 1}
    complete(conn, task, {"a": 1})
    (task,) = read_and_start(conn, "demo")
    assert (task.step_slug, task.deps, task.flow_input) == ("b", {"a": {"a": 1}}, None)
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


def test_root_map_and_dependent_map(conn: Conn) -> None:
    define_flow(conn, "maps", [("m", [], "map"), ("n", ["m"], "map"), ("s", ["n"])])
    run_id = start_flow(conn, "maps", [1, 2, 3])
    tasks = read_and_start(conn, "maps")
    assert sorted((t.task_index, t.input) for t in tasks) == [(0, 1), (1, 2), (2, 3)]
    for t in reversed(tasks):
        complete(conn, t, t.input * 10)
    if not is_official(conn):  # 0.8.1 has no step_states.output
        assert step_states(conn, run_id)["m"]["output"] == [10, 20, 30]
    tasks = read_and_start(conn, "maps")
    assert sorted((t.task_index, t.input) for t in tasks) == [(0, 10), (1, 20), (2, 30)]
    for t in tasks:
        complete(conn, t, t.input + 1)
    (task,) = read_and_start(conn, "maps")
    assert task.deps == {"n": [11, 21, 31]}
    complete(conn, task, "ok")
    assert run_row(conn, run_id)["output"] == {"s": "ok"}


def test_empty_root_map_cascades_in_start_flow(conn: Conn) -> None:
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

"""Map steps: fan-out, ordered output aggregation, run output, empty-array cascades."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.sql.helpers import (
    complete,
    define_flow,
    drain,
    event_names,
    is_official,
    queue_rows,
    read_and_start,
    run_row,
    start_flow,
    step_states,
    task_rows,
)

Conn = psycopg.Connection[Any]


def test_map_output_is_aggregated_in_task_order(any_db_url: str) -> None:
    """Tasks complete in reverse; the step's output (ours: step_states.output; both: the run
    output and the child's input) follows task_index."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("m", [], "map"), ("leaf", [], "map")])
        run_id = start_flow(conn, "f", ["a", "b", "c", "d"])
        tasks = read_and_start(conn, "f")
        assert len(tasks) == 8
        for t in sorted(tasks, key=lambda t: -t.task_index):
            complete(conn, t, {"v": t.input.upper(), "i": t.task_index})
        expected = [{"v": x.upper(), "i": i} for i, x in enumerate("abcd")]
        run = run_row(conn, run_id)
        assert run["status"] == "completed"
        assert run["output"] == {"m": expected, "leaf": expected}
        if not is_official(conn):
            state = step_states(conn, run_id)["m"]
            assert (state["output"], state["remaining_tasks"], state["initial_tasks"]) == (
                expected,
                0,
                4,
            )


def test_map_of_map_and_single_after_map(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("m1", [], "map"), ("m2", ["m1"], "map"), ("total", ["m2"])])
        run_id = start_flow(conn, "f", [1, 2, 3])
        m1 = read_and_start(conn, "f")
        for t in m1:
            complete(conn, t, [t.input] * t.input)  # map task outputs need not be arrays
        m2 = sorted(read_and_start(conn, "f"), key=lambda t: t.task_index)
        assert [t.input for t in m2] == [[1], [2, 2], [3, 3, 3]]
        for t in m2:
            complete(conn, t, sum(t.input))
        (total,) = read_and_start(conn, "f")
        assert total.deps == {"m2": [1, 4, 9]}
        complete(conn, total, 14)
        assert run_row(conn, run_id)["output"] == {"total": 14}


def test_dependent_map_of_a_single_step(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("list", []), ("each", ["list"], "map")])
        run_id = start_flow(conn, "f", {"n": 3})
        assert step_states(conn, run_id)["each"]["initial_tasks"] is None
        (producer,) = read_and_start(conn, "f")
        complete(conn, producer, [10, None, {"x": 1}])
        states = step_states(conn, run_id)
        assert (states["each"]["status"], states["each"]["initial_tasks"]) == ("started", 3)
        each = sorted(read_and_start(conn, "f"), key=lambda t: t.task_index)
        assert [t.input for t in each] == [10, None, {"x": 1}]
        for t in each:
            complete(conn, t, t.input)
        assert run_row(conn, run_id)["output"] == {"each": [10, None, {"x": 1}]}


def test_run_output_holds_every_leaf(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", []), ("b", ["a"]), ("c", ["a"]), ("nothing", ["a"])])
        run_id = start_flow(conn, "f", {})
        outputs = {"a": 1, "b": {"x": True}, "c": [1, 2], "nothing": None}
        drain(conn, "f", lambda t: outputs[t.step_slug])
        run = run_row(conn, run_id)
        assert run["status"] == "completed"
        assert run["remaining_steps"] == 0
        assert run["completed_at"] is not None
        assert run["output"] == {"b": {"x": True}, "c": [1, 2], "nothing": None}


def test_big_compressed_arrays_feed_root_and_dependent_maps(db_url: str) -> None:
    """Arrays big enough to be stored compressed (the run input, then the parent map's
    output) still hand every task its own element."""
    size = 1500
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("m1", [], "map"), ("m2", ["m1"], "map")])
        run_id = start_flow(conn, "f", [f"element number {i:05d}" for i in range(size)])
        row = conn.execute(
            "select pg_column_size(input) < octet_length(input::text) / 2 from pgflow.runs"
        ).fetchone()
        assert row == (True,), "the input should be stored compressed"
        m1 = read_and_start(conn, "f", qty=size)
        assert sorted((t.task_index, t.input) for t in m1) == [
            (i, f"element number {i:05d}") for i in range(size)
        ]
        for t in m1:
            complete(conn, t, f"output number {t.task_index:05d}")
        output = step_states(conn, run_id)["m1"]["output"]
        assert output == [f"output number {i:05d}" for i in range(size)]
        m2 = read_and_start(conn, "f", qty=size)
        assert sorted((t.task_index, t.input) for t in m2) == [
            (i, f"output number {i:05d}") for i in range(size)
        ]


# -- empty arrays -----------------------------------------------------------------------------


def _transactions(conn: Conn, run_id: Any) -> int:
    """How many transactions wrote this run's events (inserted_at is the transaction start)."""
    row = conn.execute(
        "select count(distinct inserted_at) from realtime.messages where topic = %s",
        (f"pgflow:run:{run_id}",),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_empty_root_map_chain_completes_inside_start_flow(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("m1", [], "map"), ("m2", ["m1"], "map"), ("m3", ["m2"], "map")])
        run_id = start_flow(conn, "f", [])
        run = run_row(conn, run_id)
        assert (run["status"], run["output"], run["remaining_steps"]) == (
            "completed",
            {"m3": []},
            0,
        )
        assert event_names(conn, run_id) == [
            "run:started",
            "step:m1:completed",
            "step:m2:completed",
            "step:m3:completed",
            "run:completed",
        ]
        assert _transactions(conn, run_id) == 1
        states = step_states(conn, run_id)
        for slug in ("m1", "m2", "m3"):
            assert states[slug]["status"] == "completed"
            assert states[slug]["remaining_tasks"] == 0
            assert states[slug]["initial_tasks"] == 0
        assert task_rows(conn, run_id) == []
        assert queue_rows(conn, "f") == []


def test_empty_array_from_a_single_step_cascades_in_its_transaction(any_db_url: str) -> None:
    """A single step returning [] completes its map child, the map's map child, and starts
    the single step after them, all inside the one complete_task call."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(
            conn,
            "f",
            [("list", []), ("m1", ["list"], "map"), ("m2", ["m1"], "map"), ("after", ["m2"])],
        )
        run_id = start_flow(conn, "f", {})
        (producer,) = read_and_start(conn, "f")
        complete(conn, producer, [])
        assert event_names(conn, run_id) == [
            "run:started",
            "step:list:started",
            "step:list:completed",
            "step:m1:completed",
            "step:m2:completed",
            "step:after:started",
        ]
        assert _transactions(conn, run_id) == 2
        (after,) = read_and_start(conn, "f")
        assert after.deps == {"m2": []}
        complete(conn, after, "done")
        assert run_row(conn, run_id)["output"] == {"after": "done"}
        if not is_official(conn):
            states = step_states(conn, run_id)
            assert states["m1"]["output"] == []
            assert states["m2"]["output"] == []


def test_empty_root_map_beside_other_steps(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("m", [], "map"), ("single", []), ("join", ["m", "single"])])
        run_id = start_flow(conn, "f", [])
        names = event_names(conn, run_id)
        assert names == ["run:started", "step:m:completed", "step:single:started"]
        (single,) = read_and_start(conn, "f")
        assert single.step_slug == "single"
        complete(conn, single, 5)
        (join,) = read_and_start(conn, "f")
        assert join.deps == {"m": [], "single": 5}


def test_map_step_events_never_show_started_when_empty(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("list", []), ("each", ["list"], "map")])
        run_id = start_flow(conn, "f", {})
        (producer,) = read_and_start(conn, "f")
        complete(conn, producer, [])
        names = event_names(conn, run_id)
        assert "step:each:started" not in names
        assert names[-2:] == ["step:each:completed", "run:completed"]
        assert run_row(conn, run_id)["output"] == {"each": []}

"""Starting runs: start_flow, its validation, start delays and the snapshot RPCs."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.sql.helpers import (
    complete,
    define_flow,
    drain,
    event_names,
    is_official,
    make_all_visible,
    queue_rows,
    raises_sqlstate,
    read_and_start,
    row_counts,
    run_row,
    start_flow,
    step_states,
    task_rows,
)

Conn = psycopg.Connection[Any]


def test_start_flow_creates_run_states_tasks_and_messages(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(
            conn,
            "f",
            [("root", []), ("items", [], "map"), ("after", ["root"]), ("each", ["after"], "map")],
        )
        run_id = start_flow(conn, "f", ["x", "y"])

        run = run_row(conn, run_id)
        assert run["status"] == "started"
        assert run["input"] == ["x", "y"]
        assert run["remaining_steps"] == 4
        assert run["output"] is None

        states = step_states(conn, run_id)
        summary = {
            slug: (s["status"], s["remaining_deps"], s["initial_tasks"], s["remaining_tasks"])
            for slug, s in states.items()
        }
        assert summary == {
            "root": ("started", 0, 1, 1),
            "items": ("started", 0, 2, 2),
            "after": ("created", 1, 1, None),
            "each": ("created", 1, None, None),
        }

        tasks = [(t["step_slug"], t["task_index"], t["status"]) for t in task_rows(conn, run_id)]
        assert tasks == [("items", 0, "queued"), ("items", 1, "queued"), ("root", 0, "queued")]
        messages = {
            (m.message["step_slug"], m.message["task_index"]): m for m in queue_rows(conn, "f")
        }
        assert set(messages) == {("items", 0), ("items", 1), ("root", 0)}
        for (step, index), m in messages.items():
            assert m.message == {
                "flow_slug": "f",
                "run_id": str(run_id),
                "step_slug": step,
                "task_index": index,
            }
            assert m.vt_in <= 0.5  # visible at once
        by_task = {
            (t["step_slug"], t["task_index"]): t["message_id"] for t in task_rows(conn, run_id)
        }
        assert by_task == {key: m.msg_id for key, m in messages.items()}


def test_start_flow_uses_the_given_run_id(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])])
        wanted = uuid.uuid4()
        assert start_flow(conn, "f", {}, run_id=wanted) == wanted
        assert run_row(conn, wanted)["flow_slug"] == "f"


def test_flow_without_steps_completes_at_once(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [])
        run_id = start_flow(conn, "f", {"x": 1})
        run = run_row(conn, run_id)
        assert (run["status"], run["output"], run["remaining_steps"]) == ("completed", None, 0)
        assert event_names(conn, run_id) == ["run:started", "run:completed"]


def _assert_nothing_written(conn: Conn, before: dict[str, int]) -> None:
    assert row_counts(conn, "f") == before


def test_unknown_flow_is_refused(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])])
        before = row_counts(conn, "f")
        ours = not is_official(conn)
        with raises_sqlstate("23503", *(["'ghost'", "does not exist"] if ours else [])):
            start_flow(conn, "ghost", {})
        _assert_nothing_written(conn, before)


def test_root_map_needs_an_array(any_db_url: str) -> None:
    """Same SQLSTATE and message on both cores."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("setup", []), ("items", [], "map")])
        start_flow(conn, "f", [1])  # some rows and messages already exist
        before = row_counts(conn, "f")
        for value, type_name in [
            ({"a": 1}, "object"),
            ("s", "string"),
            (3, "number"),
            (True, "boolean"),
            (None, "null"),
        ]:
            expected = f"Flow f has root map steps but input is not an array (got {type_name})"
            with raises_sqlstate("P0001", expected):
                conn.execute("select pgflow.start_flow('f', %s)", (Jsonb(value),))
        with raises_sqlstate("P0001", "Flow f has root map steps but input is NULL"):
            conn.execute("select pgflow.start_flow('f', null)")
        _assert_nothing_written(conn, before)


def test_null_input_without_root_map(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", []), ("m", ["a"], "map")])
        before = row_counts(conn, "f")
        ours = not is_official(conn)
        with raises_sqlstate("23502", *(["'f'", "NULL"] if ours else [])):
            conn.execute("select pgflow.start_flow('f', null)")
        _assert_nothing_written(conn, before)
        # JSON null is a value, not a missing input.
        run_id = start_flow(conn, "f", None)
        assert run_row(conn, run_id)["input"] is None


def test_duplicate_run_id_is_refused(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", []), ("items", [], "map")])
        run_id = start_flow(conn, "f", [1, 2])
        before = row_counts(conn, "f")
        ours = not is_official(conn)
        with raises_sqlstate("23505", *([str(run_id)] if ours else [])):
            start_flow(conn, "f", [3], run_id=run_id)
        _assert_nothing_written(conn, before)
        assert run_row(conn, run_id)["input"] == [1, 2]


def test_start_delay_hides_a_steps_first_messages(any_db_url: str) -> None:
    """The delay applies when the step starts: at run start for a root step, when its
    dependencies complete otherwise."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('f')")
        conn.execute("select pgflow.add_step('f', 'now')")
        conn.execute("select pgflow.add_step('f', 'later', start_delay => 30)")
        conn.execute(
            "select pgflow.add_step('f', 'fan', '{now}', start_delay => 120, step_type => 'map')"
        )
        start_flow(conn, "f", {})
        vt = {m.message["step_slug"]: m.vt_in for m in queue_rows(conn, "f")}
        assert vt["now"] < 1
        assert 28 < vt["later"] <= 30.5
        (task,) = read_and_start(conn, "f")
        assert task.step_slug == "now"
        complete(conn, task, [1, 2, 3])
        fan = [m.vt_in for m in queue_rows(conn, "f") if m.message["step_slug"] == "fan"]
        assert len(fan) == 3
        assert all(118 < v <= 120.5 for v in fan)
        assert read_and_start(conn, "f") == []  # nothing visible yet


# -- snapshot RPCs ----------------------------------------------------------------------------


def test_start_flow_with_states_returns_run_and_ordered_steps(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("zz", []), ("aa", ["zz"]), ("mm", [], "map")])
        row = conn.execute(
            "select pgflow.start_flow_with_states('f', %s)", (Jsonb([1, 2]),)
        ).fetchone()
        assert row is not None
        snapshot = row[0]
        assert set(snapshot) == {"run", "steps"}
        run_id = uuid.UUID(snapshot["run"]["run_id"])
        assert snapshot["run"]["status"] == "started"
        assert snapshot["run"]["input"] == [1, 2]
        steps = snapshot["steps"]
        if not is_official(conn):  # the official SQL does not order the steps
            assert [s["step_slug"] for s in steps] == ["zz", "aa", "mm"]
        assert {s["step_slug"]: s["status"] for s in steps} == {
            "zz": "started",
            "aa": "created",
            "mm": "started",
        }
        again = conn.execute("select pgflow.get_run_with_states(%s)", (run_id,)).fetchone()
        assert again is not None
        assert again[0]["run"] == snapshot["run"]
        assert sorted(again[0]["steps"], key=lambda s: s["step_slug"]) == sorted(
            steps, key=lambda s: s["step_slug"]
        )


def test_snapshot_row_keys(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])])
        row = conn.execute("select pgflow.start_flow_with_states('f', '{}')").fetchone()
        assert row is not None
        snapshot = row[0]
        assert set(snapshot["run"]) == {
            "run_id",
            "flow_slug",
            "status",
            "input",
            "output",
            "remaining_steps",
            "started_at",
            "completed_at",
            "failed_at",
            # pgflow-py's, for operating runs; pgflow's clients ignore keys they do not know.
            "cancelled_at",
            "cancel_reason",
            "restart_of_run_id",
        }
        assert set(snapshot["steps"][0]) >= {
            "flow_slug",
            "run_id",
            "step_slug",
            "status",
            "remaining_tasks",
            "initial_tasks",
            "remaining_deps",
            "output",
            "error_message",
            "created_at",
            "started_at",
            "completed_at",
            "failed_at",
        }


def test_get_run_with_states_for_an_unknown_run_is_null(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        row = conn.execute("select pgflow.get_run_with_states(%s)", (uuid.uuid4(),)).fetchone()
        assert row == (None,)


def test_start_flow_with_states_errors_like_start_flow(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("items", [], "map")])
        with raises_sqlstate("P0001", "not an array"):
            conn.execute("select pgflow.start_flow_with_states('f', '{}')")
        with raises_sqlstate("23503"):
            conn.execute("select pgflow.start_flow_with_states('ghost', '{}')")
        assert conn.execute("select count(*) from pgflow.runs").fetchone() == (0,)


def test_get_run_with_states_sees_outputs(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", []), ("b", ["a"])])
        run_id = start_flow(conn, "f", {})
        (task,) = read_and_start(conn, "f")
        complete(conn, task, {"n": 1})
        row = conn.execute("select pgflow.get_run_with_states(%s)", (run_id,)).fetchone()
        assert row is not None
        a, b = row[0]["steps"]
        assert (a["step_slug"], a["status"], a["output"]) == ("a", "completed", {"n": 1})
        assert (b["step_slug"], b["status"]) == ("b", "started")


def test_steps_start_on_a_pgmq_without_the_timed_send(db_url: str) -> None:
    """pgmq before 1.5 (Supabase's for a long time) has no ``send`` with headers and a time:
    single-task steps start all the same, their delay included (their messages are written by
    the connection's prepared statement on the queue's table, which needs neither send)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        # The timed send out of sight, and the send with a delay in seconds no longer built
        # on it: pgmq's functions as they were before 1.5.
        conn.execute(
            "alter function pgmq.send(text, jsonb, jsonb, timestamp with time zone)"
            " rename to send_out_of_sight"
        )
        conn.execute(
            "create or replace function pgmq.send(queue_name text, msg jsonb, delay integer)"
            " returns setof bigint language sql as $$ select * from pgmq.send_out_of_sight("
            "queue_name, msg, null, clock_timestamp() + make_interval(secs => delay)) $$"
        )
        timed = "pgmq.send(text, jsonb, jsonb, timestamp with time zone)"
        assert conn.execute(f"select to_regprocedure('{timed}')").fetchone() == (None,)
        conn.execute("select pgflow.create_flow('f')")
        conn.execute("select pgflow.add_step('f', 'now')")
        conn.execute("select pgflow.add_step('f', 'later', start_delay => 30)")
        conn.execute("select pgflow.add_step('f', 'next', '{now}')")
        run_id = start_flow(conn, "f", {})
        vt = {m.message["step_slug"]: m.vt_in for m in queue_rows(conn, "f")}
        assert vt["now"] < 1
        assert 28 < vt["later"] <= 30.5
        assert drain(conn, "f", lambda task: task.step_slug) == 2
        make_all_visible(conn, "f")
        assert drain(conn, "f", lambda task: task.step_slug) == 1
        assert run_row(conn, run_id)["status"] == "completed"
        assert {s: row["status"] for s, row in step_states(conn, run_id).items()} == {
            "now": "completed",
            "later": "completed",
            "next": "completed",
        }

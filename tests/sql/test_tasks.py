"""Claiming and finishing tasks: start_tasks, complete_task and fail_task outside retries."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from tests.sql.helpers import (
    WORKER_ID,
    Task,
    archived_ids,
    complete,
    define_flow,
    event_names,
    fail,
    is_official,
    make_all_visible,
    queue_rows,
    raises_sqlstate,
    read_and_start,
    read_ids,
    row_counts,
    run_row,
    start_flow,
    start_tasks,
    step_states,
    task_row,
    task_rows,
)

Conn = psycopg.Connection[Any]
OTHER_WORKER = uuid.UUID("22222222-2222-2222-2222-222222222222")


# -- start_tasks: what it claims --------------------------------------------------------------


def test_start_tasks_marks_tasks_started(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])])
        run_id = start_flow(conn, "f", {})
        (before,) = task_rows(conn, run_id)
        assert (before["status"], before["attempts_count"], before["started_at"]) == (
            "queued",
            0,
            None,
        )
        (task,) = read_and_start(conn, "f", worker_id=OTHER_WORKER)
        row = task_row(conn, task)
        assert row["status"] == "started"
        assert row["attempts_count"] == 1
        assert row["last_worker_id"] == str(OTHER_WORKER)
        assert row["started_at"] is not None
        assert task.msg_id == row["message_id"]


def test_start_tasks_claims_each_task_once(any_db_url: str) -> None:
    """A message read again (its task already started) returns nothing; unknown ids and
    ids of another flow's messages are ignored."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])])
        define_flow(conn, "g", [("a", [])])
        start_flow(conn, "f", {})
        for _ in range(3):
            start_flow(conn, "g", {})
        ids = read_ids(conn, "f")
        g_id = max(read_ids(conn, "g"))  # pgmq numbers each queue from 1: pick one f lacks
        assert g_id not in ids
        assert len(start_tasks(conn, "f", ids)) == 1
        assert start_tasks(conn, "f", ids) == []
        assert start_tasks(conn, "f", [g_id, 987_654]) == []
        (g_task,) = start_tasks(conn, "g", [g_id])
        assert g_task.flow_slug == "g"


def test_start_tasks_skips_tasks_of_failed_runs(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", []), ("b", [])], max_attempts=1)
        start_flow(conn, "f", {})
        ids = read_ids(conn, "f")
        assert len(ids) == 2
        (first,) = start_tasks(conn, "f", ids[:1])
        fail(conn, first, "boom")  # the run fails while the other message has been read
        assert start_tasks(conn, "f", ids[1:]) == []


def test_start_tasks_skips_tasks_of_steps_not_started(any_db_url: str) -> None:
    """Ours claims only tasks whose step is `started`; the official SQL looks at the run only,
    so it hands out a task of a step that has already failed."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])])
        run_id = start_flow(conn, "f", {})
        conn.execute(
            "update pgflow.step_states set status = 'failed', failed_at = now() where run_id = %s",
            (run_id,),
        )
        claimed = read_and_start(conn, "f")
        if is_official(conn):
            assert [t.step_slug for t in claimed] == ["a"]
        else:
            assert claimed == []
            assert task_rows(conn, run_id)[0]["status"] == "queued"


def test_start_tasks_sets_visibility_to_timeout_plus_two(any_db_url: str) -> None:
    """Ours hides a claimed message for the step's (else the flow's) timeout + 2 s. The
    official SQL never applies it (its set_vt_batch call sits in a CTE nothing reads), so the
    message keeps the worker's read timeout: a known upstream bug."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('f', timeout => 40)")
        conn.execute("select pgflow.add_step('f', 'flow_timeout')")
        conn.execute("select pgflow.add_step('f', 'own_timeout', timeout => 100)")
        start_flow(conn, "f", {})
        tasks = read_and_start(conn, "f", vt=7)
        assert len(tasks) == 2
        vt = {m.message["step_slug"]: m.vt_in for m in queue_rows(conn, "f")}
        if is_official(conn):
            assert 5 < vt["flow_timeout"] <= 7.5
            assert 5 < vt["own_timeout"] <= 7.5
        else:
            assert 40 < vt["flow_timeout"] <= 42.5
            assert 100 < vt["own_timeout"] <= 102.5


# -- start_tasks: inputs ----------------------------------------------------------------------


def test_task_inputs(any_db_url: str) -> None:
    """Root map → element of the run input; dependent map → element of the parent's output;
    single → {dep: output}, `{}` for a root step. (0.8.1 adds a `run` key to non-map inputs,
    which `Task.deps` removes.)"""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(
            conn,
            "f",
            [
                ("items", [], "map"),
                ("root", []),
                ("double", ["items"], "map"),
                ("join", ["root", "double"]),
            ],
        )
        start_flow(conn, "f", [{"k": 1}, "two", [3]])
        first = read_and_start(conn, "f")
        items = sorted((t for t in first if t.step_slug == "items"), key=lambda t: t.task_index)
        assert [t.input for t in items] == [{"k": 1}, "two", [3]]
        (root,) = [t for t in first if t.step_slug == "root"]
        assert root.deps == {}
        for t in items:
            complete(conn, t, {"i": t.task_index})
        complete(conn, root, "r")
        second = read_and_start(conn, "f")
        double = sorted(second, key=lambda t: t.task_index)
        assert [t.step_slug for t in double] == ["double"] * 3
        assert [t.input for t in double] == [{"i": 0}, {"i": 1}, {"i": 2}]
        for t in reversed(double):
            complete(conn, t, t.task_index * 10)
        (join,) = read_and_start(conn, "f")
        assert join.deps == {"root": "r", "double": [0, 10, 20]}
        if is_official(conn):
            assert join.input["run"] == [{"k": 1}, "two", [3]]


def test_flow_input_only_for_root_single_steps(db_url: str) -> None:
    """Ours gives non-map tasks only their dependencies' outputs, plus `flow_input` (the run
    input) for root single steps; 0.8.1 has no flow_input and puts the run input under `run`."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("root", []), ("items", [], "map"), ("next", ["root"])])
        start_flow(conn, "f", [7, 8])
        first = {(t.step_slug, t.task_index): t for t in read_and_start(conn, "f")}
        assert first["root", 0].input == {}
        assert first["root", 0].flow_input == [7, 8]
        assert first["items", 0].flow_input is None
        assert first["items", 1].input == 8
        complete(conn, first["root", 0], {"out": 1})
        (nxt,) = read_and_start(conn, "f")
        assert (nxt.input, nxt.flow_input) == ({"root": {"out": 1}}, None)


def test_one_batch_mixing_runs_and_steps(any_db_url: str) -> None:
    """One start_tasks call over messages of two runs and three steps hands each task the
    input of its own run and step."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("items", [], "map"), ("root", []), ("next", ["root"])])
        first = start_flow(conn, "f", ["a", "b"])
        second = start_flow(conn, "f", ["x", "y", "z"])
        (root_first,) = [
            t
            for t in start_tasks(conn, "f", [r["message_id"] for r in task_rows(conn, first)])
            if t.step_slug == "root"
        ]
        complete(conn, root_first, "first root")
        tasks = read_and_start(conn, "f", qty=20)
        got = {(t.run_id, t.step_slug, t.task_index): t.deps for t in tasks}
        assert got == {
            (second, "items", 0): "x",
            (second, "items", 1): "y",
            (second, "items", 2): "z",
            (second, "root", 0): {},
            (first, "next", 0): {"root": "first root"},
        }


def test_duplicate_and_null_message_ids(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("m", [], "map")])
        run_id = start_flow(conn, "f", [1, 2])
        ids = [r["message_id"] for r in task_rows(conn, run_id)]
        tasks = start_tasks(conn, "f", [ids[1], ids[0], ids[1], None])  # type: ignore[list-item]
        assert sorted(t.task_index for t in tasks) == [0, 1]
        assert [r["attempts_count"] for r in task_rows(conn, run_id)] == [1, 1]


# -- start_tasks: lost leases ----------------------------------------------------------------


def _expire(conn: Conn, task: Task, seconds: float) -> None:
    """Pretend the task started `seconds` ago and make its message readable again."""
    conn.execute(
        "update pgflow.step_tasks set started_at = started_at - make_interval(secs => %s),"
        " queued_at = queued_at - make_interval(secs => %s)"
        " where run_id = %s and step_slug = %s and task_index = %s",
        (seconds, seconds, task.run_id, task.step_slug, task.task_index),
    )
    make_all_visible(conn, task.flow_slug)


def test_expired_lease_is_failed_and_retried_with_backoff(db_url: str) -> None:
    """Ours only: a message whose task is still `started` more than timeout + 2 s after it
    started means the worker is gone; start_tasks fails that attempt (retry with backoff) and
    does not hand the task out in the same call."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])], timeout=10, base_delay=3)
        run_id = start_flow(conn, "f", {})
        (task,) = read_and_start(conn, "f")
        _expire(conn, task, 13)
        ids = read_ids(conn, "f")
        assert ids == [task.msg_id]
        assert start_tasks(conn, "f", ids, OTHER_WORKER) == []
        row = task_row(conn, task)
        assert row["status"] == "queued"
        assert row["attempts_count"] == 1
        assert "lease expired" in row["error_message"]
        (message,) = queue_rows(conn, "f")
        assert 5 < message.vt_in <= 6.5  # floor(3 * 2^1)
        assert run_row(conn, run_id)["status"] == "started"
        assert "step:a:failed" not in event_names(conn, run_id)
        # After the backoff the next worker gets it as attempt 2.
        make_all_visible(conn, "f")
        (again,) = read_and_start(conn, "f", worker_id=OTHER_WORKER)
        assert task_row(conn, again)["attempts_count"] == 2


def test_lease_not_yet_expired_is_left_alone(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])], timeout=10)
        start_flow(conn, "f", {})
        (task,) = read_and_start(conn, "f")
        _expire(conn, task, 11)  # within timeout + 2 s
        assert start_tasks(conn, "f", read_ids(conn, "f")) == []
        row = task_row(conn, task)
        assert (row["status"], row["attempts_count"], row["error_message"]) == (
            "started",
            1,
            None,
        )


def test_expired_lease_on_the_last_attempt_fails_the_run(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", []), ("b", [])], timeout=5, max_attempts=1)
        run_id = start_flow(conn, "f", {})
        tasks = read_and_start(conn, "f")
        (a,) = [t for t in tasks if t.step_slug == "a"]
        _expire(conn, a, 60)
        assert start_tasks(conn, "f", read_ids(conn, "f")) == []
        assert run_row(conn, run_id)["status"] == "failed"
        assert step_states(conn, run_id)["a"]["status"] == "failed"
        assert "lease expired" in step_states(conn, run_id)["a"]["error_message"]
        assert [r["status"] for r in task_rows(conn, run_id)] == ["failed", "cancelled"]
        assert queue_rows(conn, "f") == []
        names = event_names(conn, run_id)
        assert names[-2:] == ["step:a:failed", "run:failed"]


def test_a_run_failed_by_an_expired_lease_hands_out_nothing(db_url: str) -> None:
    """Expired leases are handled before claiming: when one fails the run, the queued tasks
    of that run read in the same batch are not handed out."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", []), ("b", [])], timeout=5, max_attempts=1)
        run_id = start_flow(conn, "f", {})
        ids = {r["step_slug"]: r["message_id"] for r in task_rows(conn, run_id)}
        (a,) = start_tasks(conn, "f", [ids["a"]])
        _expire(conn, a, 60)
        assert start_tasks(conn, "f", [ids["b"], ids["a"]], OTHER_WORKER) == []
        assert run_row(conn, run_id)["status"] == "failed"
        assert [r["status"] for r in task_rows(conn, run_id)] == ["failed", "cancelled"]
        assert queue_rows(conn, "f") == []


# -- complete_task / fail_task: errors --------------------------------------------------------


def test_unknown_run_or_task(any_db_url: str) -> None:
    """Ours raises no_data_found (P0002) naming run, step and index; the official SQL returns
    no row and does nothing."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])])
        run_id = start_flow(conn, "f", {})
        ghost_run = uuid.uuid4()
        cases = [
            (ghost_run, "a", 0, [str(ghost_run)]),
            (run_id, "zz", 0, [str(run_id), "zz[0]"]),
            (run_id, "a", 3, [str(run_id), "a[3]"]),
        ]
        before = row_counts(conn, "f")
        tasks_before = task_rows(conn, run_id)
        for rid, step, index, needles in cases:
            task = Task("f", rid, step, None, 0, index)
            if is_official(conn):
                assert complete(conn, task, 1) == []
                assert fail(conn, task, "x") == []
            else:
                with raises_sqlstate("P0002", "complete_task", *needles):
                    complete(conn, task, 1)
                with raises_sqlstate("P0002", "fail_task", *needles):
                    fail(conn, task, "x")
            assert row_counts(conn, "f") == before, (rid, step, index)
        assert run_row(conn, run_id)["status"] == "started"
        assert task_rows(conn, run_id) == tasks_before


def test_finishing_a_task_that_is_not_started(any_db_url: str) -> None:
    """While run and step are active, a report for a queued or already completed task changes
    nothing, raises nothing and returns the task row as it is (ours, as pgflow 0.15.1; 0.8.1
    returns no row). The queued task keeps its message for the worker that claims it."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("m", [], "map")])
        run_id = start_flow(conn, "f", [1, 2, 3])
        ids = read_ids(conn, "f")
        (first,) = start_tasks(conn, "f", ids[:1])
        complete(conn, first, "done")
        queued = Task("f", run_id, "m", None, 0, 2)
        events_before = event_names(conn, run_id)
        before = row_counts(conn, "f")
        assert (before["queue"], before["archive"]) == (2, 1)
        for call in (complete, fail):
            for task in (queued, first):
                before_row = task_row(conn, task)
                returned = call(conn, task, "x")
                if not is_official(conn):  # 0.8.1 returns no row for a task it did not update
                    assert returned == [before_row]
                assert task_row(conn, task) == before_row
        rows = task_rows(conn, run_id)
        assert [(r["status"], r["output"]) for r in rows] == [
            ("completed", "done"),
            ("queued", None),
            ("queued", None),
        ]
        assert step_states(conn, run_id)["m"]["remaining_tasks"] == 2
        assert event_names(conn, run_id) == events_before
        assert row_counts(conn, "f") == before


# -- late calls -------------------------------------------------------------------------------


def test_late_calls_on_a_failed_run_are_ignored(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", []), ("b", []), ("c", [])], max_attempts=1)
        run_id = start_flow(conn, "f", {})
        a, b, c = sorted(read_and_start(conn, "f"), key=lambda t: t.step_slug)
        fail(conn, a, "boom")
        names = event_names(conn, run_id)
        rows_before = {r["step_slug"]: r for r in task_rows(conn, run_id)}
        (late_b,) = complete(conn, b, {"late": True})
        (late_c,) = fail(conn, c, "late failure")
        if not is_official(conn):
            # Ours already ended the siblings when the run failed; the late calls change nothing.
            assert late_b == rows_before["b"]
            assert late_c == rows_before["c"]
            assert {r["step_slug"]: r for r in task_rows(conn, run_id)} == rows_before
        assert task_row(conn, b)["output"] is None
        assert event_names(conn, run_id) == names
        assert run_row(conn, run_id)["status"] == "failed"
        assert queue_rows(conn, "f") == []


def test_late_complete_on_a_completed_run_is_ignored(any_db_url: str) -> None:
    """Ours ignores it without a new event; the official SQL broadcasts step:completed again,
    after run:completed."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])])
        run_id = start_flow(conn, "f", {})
        (task,) = read_and_start(conn, "f")
        complete(conn, task, 1)
        names = event_names(conn, run_id)
        before = task_row(conn, task)
        assert complete(conn, task, 2) == [before]
        assert fail(conn, task, "late") == [before]
        assert task_row(conn, task) == before
        if is_official(conn):
            assert event_names(conn, run_id) == [*names, "step:a:completed"]
        else:
            assert event_names(conn, run_id) == names


def test_late_calls_on_a_step_no_longer_started_are_ignored(db_url: str) -> None:
    """Worker A loses its lease, worker B retries and completes the step; A's late result
    (or failure) is ignored while the run goes on, and A's message stays archived."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", []), ("b", ["a"])], timeout=5, base_delay=0)
        run_id = start_flow(conn, "f", {})
        (a_first,) = read_and_start(conn, "f")
        _expire(conn, a_first, 60)
        assert start_tasks(conn, "f", read_ids(conn, "f"), OTHER_WORKER) == []
        make_all_visible(conn, "f")
        (a_second,) = read_and_start(conn, "f", worker_id=OTHER_WORKER)
        complete(conn, a_second, "from B")
        names = event_names(conn, run_id)
        snapshot = task_row(conn, a_first)
        assert complete(conn, a_first, "from A") == [snapshot]
        assert fail(conn, a_first, "A gave up") == [snapshot]
        assert step_states(conn, run_id)["a"]["output"] == "from B"
        assert step_states(conn, run_id)["b"]["status"] == "started"
        assert event_names(conn, run_id) == names
        assert a_first.msg_id in archived_ids(conn, "f")
        (b,) = read_and_start(conn, "f")
        assert b.input == {"a": "from B"}
        assert task_row(conn, b)["last_worker_id"] == str(WORKER_ID)

"""Failures: retries with exponential backoff, exhausted attempts, stalled tasks."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.sql.helpers import (
    archived_ids,
    backdate_started,
    define_flow,
    events,
    fail,
    is_official,
    make_all_visible,
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


def test_calculate_retry_delay(any_db_url: str) -> None:
    cases = [(1, 0, 1), (1, 1, 2), (1, 5, 32), (5, 0, 5), (5, 3, 40), (2.5, 1, 5), (0, 9, 0)]
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        for base, attempts, expected in cases:
            row = conn.execute(
                "select pgflow.calculate_retry_delay(%s::numeric, %s::integer)", (base, attempts)
            ).fetchone()
            assert row == (expected,), (base, attempts)


def test_retry_delay_is_capped_instead_of_overflowing(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("select pgflow.calculate_retry_delay(5, 40)").fetchone()
        assert row == (2_147_483_647,)


def test_failed_attempts_are_retried_with_exponential_backoff(any_db_url: str) -> None:
    """Each failure while attempts remain puts the task back in the queue, invisible for
    floor(base_delay * 2^attempts_count) seconds, with no event."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])], max_attempts=4, base_delay=3)
        run_id = start_flow(conn, "f", {"x": 1})
        names = [name for name, _ in events(conn, run_id)]
        for attempt, delay in [(1, 6), (2, 12), (3, 24)]:
            (task,) = read_and_start(conn, "f")
            (row,) = fail(conn, task, f"failure {attempt}")
            assert row["status"] == "queued"
            assert row["attempts_count"] == attempt
            assert row["error_message"] == f"failure {attempt}"
            assert row["started_at"] is None
            assert row["failed_at"] is None
            (message,) = queue_rows(conn, "f")
            assert message.msg_id == task.msg_id
            assert delay - 1.5 < message.vt_in <= delay + 0.5
            assert read_and_start(conn, "f") == []
            make_all_visible(conn, "f")
        assert [name for name, _ in events(conn, run_id)] == names
        assert run_row(conn, run_id)["status"] == "started"
        assert step_states(conn, run_id)["a"]["status"] == "started"


def test_step_options_override_the_flows(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('f', max_attempts => 5, base_delay => 100)")
        conn.execute("select pgflow.add_step('f', 'once', max_attempts => 1)")
        conn.execute("select pgflow.add_step('f', 'quick', base_delay => 2)")
        run_id = start_flow(conn, "f", {})
        tasks = {t.step_slug: t for t in read_and_start(conn, "f")}
        (quick,) = fail(conn, tasks["quick"], "again")
        assert quick["status"] == "queued"
        vt = {m.message["step_slug"]: m.vt_in for m in queue_rows(conn, "f")}
        assert 2.5 < vt["quick"] <= 4.5  # floor(2 * 2^1)
        (once,) = fail(conn, tasks["once"], "fatal")
        assert once["status"] == "failed"
        assert run_row(conn, run_id)["status"] == "failed"


def test_exhausted_attempts_fail_task_step_and_run(any_db_url: str) -> None:
    """Events: step:failed then run:failed, both carrying the task's error. Ours also ends
    every other queued or started task of the run (like upstream's later fix #645); 0.8.1
    leaves them queued/started. Both archive every message of the run."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(
            conn,
            "f",
            [("a", []), ("b", []), ("items", [], "map"), ("after", ["a"])],
            max_attempts=2,
        )
        run_id = start_flow(conn, "f", [1, 2, 3])
        ids = {(r["step_slug"], r["task_index"]): r["message_id"] for r in task_rows(conn, run_id)}
        read_ids(conn, "f")
        # a and items[0] started; b, items[1] and items[2] stay queued.
        (a, _) = start_tasks(conn, "f", [ids["a", 0], ids["items", 0]])
        assert a.step_slug == "a"
        fail(conn, a, "first")
        make_all_visible(conn, "f")
        read_ids(conn, "f")
        (a,) = start_tasks(conn, "f", [ids["a", 0]])
        assert a.step_slug == "a"
        count_before = len(events(conn, run_id))
        (row,) = fail(conn, a, "second and last")
        assert (row["status"], row["attempts_count"], row["error_message"]) == (
            "failed",
            2,
            "second and last",
        )
        assert row["failed_at"] is not None

        run = run_row(conn, run_id)
        assert run["status"] == "failed"
        assert run["failed_at"] is not None
        state = step_states(conn, run_id)["a"]
        assert (state["status"], state["error_message"]) == ("failed", "second and last")
        assert step_states(conn, run_id)["after"]["status"] == "created"

        new = events(conn, run_id)[count_before:]
        assert [name for name, _ in new] == ["step:a:failed", "run:failed"]
        step_event, run_event = new[0][1], new[1][1]
        assert step_event["error_message"] == "second and last"
        assert step_event["step_slug"] == "a"
        assert run_event["error_message"] == "second and last"
        assert run_event["flow_slug"] == "f"

        assert queue_rows(conn, "f") == []
        every_message = {r["message_id"] for r in task_rows(conn, run_id)}
        assert every_message <= archived_ids(conn, "f")
        others = [r for r in task_rows(conn, run_id) if r["step_slug"] != "a"]
        assert len(others) == 4
        if is_official(conn):
            assert {r["status"] for r in others} <= {"queued", "started"}
        else:
            # pgflow 0.15.1: the culprit stays failed, the others are cancelled, untouched.
            assert {r["status"] for r in others} == {"cancelled"}
            assert all(r["failed_at"] is None for r in others)
            assert all(r["error_message"] is None for r in others)


def test_zero_max_attempts_fails_on_the_first_failure(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])], max_attempts=0)
        run_id = start_flow(conn, "f", {})
        (task,) = read_and_start(conn, "f")
        (row,) = fail(conn, task, "no retries")
        assert row["status"] == "failed"
        assert run_row(conn, run_id)["status"] == "failed"


def test_a_retried_task_succeeds_later(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])], base_delay=0)
        run_id = start_flow(conn, "f", {})
        (task,) = read_and_start(conn, "f")
        fail(conn, task, "flaky")
        (task,) = read_and_start(conn, "f")  # base delay 0: visible again at once
        conn.execute("select pgflow.complete_task(%s, 'a', 0, '\"ok\"')", (run_id,))
        row = task_row(conn, task)
        assert (row["status"], row["attempts_count"], row["output"]) == ("completed", 2, "ok")
        assert run_row(conn, run_id)["status"] == "completed"


# -- requeue_stalled_tasks (ours only: 0.8.1 has no such function) ------------------------------


def requeue(conn: Conn) -> int:
    row = conn.execute("select pgflow.requeue_stalled_tasks()").fetchone()
    assert row is not None
    return int(row[0])


def test_requeue_uses_the_steps_timeout(db_url: str) -> None:
    """A task started longer ago than its step's timeout + 30 s goes back to the queue,
    visible at once; the flow's timeout only applies to steps without one (upstream #621
    used the flow's for every step)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('f', timeout => 60)")
        conn.execute("select pgflow.add_step('f', 'short', timeout => 5)")
        conn.execute("select pgflow.add_step('f', 'long')")
        run_id = start_flow(conn, "f", {})
        tasks = {t.step_slug: t for t in read_and_start(conn, "f")}
        backdate_started(conn, run_id, "short", 34)
        backdate_started(conn, run_id, "long", 40)
        assert requeue(conn) == 0
        backdate_started(conn, run_id, "short", 2)
        assert requeue(conn) == 1
        short = task_row(conn, tasks["short"])
        assert (short["status"], short["requeued_count"], short["started_at"]) == (
            "queued",
            1,
            None,
        )
        assert short["last_requeued_at"] is not None
        assert task_row(conn, tasks["long"])["status"] == "started"
        vt = {m.message["step_slug"]: m.vt_in for m in queue_rows(conn, "f")}
        assert vt["short"] <= 0.1
        assert vt["long"] > 50
        (again,) = read_and_start(conn, "f")
        assert again.step_slug == "short"
        assert task_row(conn, again)["attempts_count"] == 2


def test_requeue_gives_up_after_three_times_and_archives(db_url: str) -> None:
    """The fourth stall marks the task permanently stalled and always archives its message,
    even when nothing else is requeued in the same call (an upstream bug kept it queued)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])], timeout=5)
        run_id = start_flow(conn, "f", {})
        for round_ in range(1, 4):
            (task,) = read_and_start(conn, "f")
            backdate_started(conn, run_id, "a", 36)
            assert requeue(conn) == 1
            assert task_row(conn, task)["requeued_count"] == round_
        (task,) = read_and_start(conn, "f")
        backdate_started(conn, run_id, "a", 36)
        assert requeue(conn) == 0
        row = task_row(conn, task)
        assert row["permanently_stalled_at"] is not None
        assert row["requeued_count"] == 3
        assert row["status"] == "started"
        assert queue_rows(conn, "f") == []
        assert task.msg_id in archived_ids(conn, "f")
        assert requeue(conn) == 0  # not looked at again
        assert task_row(conn, task)["permanently_stalled_at"] == row["permanently_stalled_at"]


def test_requeue_ignores_failed_runs(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("a", [])], timeout=5)
        run_id = start_flow(conn, "f", {})
        read_and_start(conn, "f")
        backdate_started(conn, run_id, "a", 100)
        conn.execute(
            "update pgflow.runs set status = 'failed', failed_at = now() where run_id = %s",
            (run_id,),
        )
        assert requeue(conn) == 0
        assert task_rows(conn, run_id)[0]["status"] == "started"

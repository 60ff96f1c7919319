"""The task lifecycle of pgflow 0.15.1: `skipped` and `cancelled` tasks, late and duplicate
reports, what start_tasks hands out and the visibility it sets, stalled-task recovery, the
repair of old data, and pgflow's names for the check constraints."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgflow_client import FlowTaskStatus
from pgflow_worker._database import list_migrations, migrate
from tests._stack import Stack
from tests.sql.helpers import (
    WORKER_ID,
    Conn,
    Task,
    archived_ids,
    backdate_started,
    complete,
    define_flow,
    event_names,
    fail,
    queue_rows,
    raises_sqlstate,
    read_and_start,
    read_ids,
    run_row,
    start_flow,
    start_tasks,
    step_states,
    task_row,
    task_rows,
)
from tests.sql.test_conditions import create_flow, statuses, step
from tests.sql.test_retries import requeue


def by_key(conn: Conn, run_id: uuid.UUID) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["step_slug"], r["task_index"]): r for r in task_rows(conn, run_id)}


# -- statuses ---------------------------------------------------------------------------------


def test_task_statuses_are_pgflows(conn: Conn) -> None:
    define_flow(conn, "f", [("a", [])])
    run_id = start_flow(conn, "f", {})
    for status in ("started", "skipped", "cancelled", "queued"):
        conn.execute("update pgflow.step_tasks set status = %s where run_id = %s", (status, run_id))
    with raises_sqlstate("23514", "valid_status"):
        conn.execute("update pgflow.step_tasks set status = 'paused' where run_id = %s", (run_id,))


def test_the_clients_task_statuses_are_the_tables(conn: Conn) -> None:
    row = conn.execute(
        "select pg_get_constraintdef(oid) from pg_constraint"
        " where conrelid = 'pgflow.step_tasks'::regclass and conname = 'valid_status'"
    ).fetchone()
    assert row is not None
    assert set(re.findall(r"'(\w+)'::text", row[0])) == {s.value for s in FlowTaskStatus}


# -- a failing run cancels its active tasks ----------------------------------------------------


def test_a_run_failed_by_an_exhausted_task_cancels_every_active_task(conn: Conn) -> None:
    """The culprit stays `failed`, a completed task keeps its outcome, queued and started tasks
    of every other step end `cancelled` (nothing else written on them) with their messages
    archived; the other step states are untouched and the events are sent once."""
    define_flow(conn, "f", [("a", []), ("m", [], "map"), ("b", [])], max_attempts=1)
    run_id = start_flow(conn, "f", [1, 2, 3])
    ids = {(r["step_slug"], r["task_index"]): r["message_id"] for r in task_rows(conn, run_id)}
    (a,) = start_tasks(conn, "f", [ids["a", 0]])
    m0, _m1 = start_tasks(conn, "f", [ids["m", 0], ids["m", 1]])
    complete(conn, m0, "zero")
    states_before = step_states(conn, run_id)

    (culprit,) = fail(conn, a, "boom")

    assert run_row(conn, run_id)["status"] == "failed"
    assert culprit["status"] == "failed"
    tasks = by_key(conn, run_id)
    assert {k: t["status"] for k, t in tasks.items()} == {
        ("a", 0): "failed",
        ("b", 0): "cancelled",
        ("m", 0): "completed",
        ("m", 1): "cancelled",
        ("m", 2): "cancelled",
    }
    for key in (("b", 0), ("m", 1), ("m", 2)):
        assert (tasks[key]["failed_at"], tasks[key]["error_message"]) == (None, None), key
    assert tasks["m", 0]["output"] == "zero"
    states = step_states(conn, run_id)
    assert states["a"]["status"] == "failed"
    for slug in ("m", "b"):
        assert states[slug] == states_before[slug], slug
    assert queue_rows(conn, "f") == []
    assert set(ids.values()) <= archived_ids(conn, "f")
    names = event_names(conn, run_id)
    assert (names.count("run:failed"), names.count("step:a:failed")) == (1, 1)


def test_a_failing_condition_replayed_sends_nothing_twice(conn: Conn) -> None:
    """cascade_resolve_conditions on a run it already failed returns false and changes
    nothing: no second run:failed, no second step:failed."""
    create_flow(conn, "f")
    step(conn, "f", "check")
    step(conn, "f", "slow", step_type="map")
    step(conn, "f", "gate", ["check"], if_={"check": "yes"}, when_unmet="fail")
    run_id = start_flow(conn, "f", [1, 2])
    ids = {(r["step_slug"], r["task_index"]): r["message_id"] for r in task_rows(conn, run_id)}
    (check,) = start_tasks(conn, "f", [ids["check", 0]])
    complete(conn, check, "no")
    assert run_row(conn, run_id)["status"] == "failed"
    assert {t["status"] for t in task_rows(conn, run_id, "slow")} == {"cancelled"}
    names = event_names(conn, run_id)
    row = conn.execute("select pgflow.cascade_resolve_conditions(%s)", (run_id,)).fetchone()
    assert row == (False,)
    assert event_names(conn, run_id) == names
    assert names.count("run:failed") == 1


# -- skipped steps skip their tasks ------------------------------------------------------------


def test_force_skipping_a_started_step_skips_its_tasks(conn: Conn) -> None:
    """_cascade_force_skip_steps on a step with queued and started tasks: they end `skipped`
    (a completed one keeps its outcome) and their messages are archived; the run goes on."""
    define_flow(conn, "f", [("m", [], "map"), ("after", ["m"]), ("other", [])])
    run_id = start_flow(conn, "f", [1, 2, 3])
    ids = {(r["step_slug"], r["task_index"]): r["message_id"] for r in task_rows(conn, run_id)}
    m0, _m1 = start_tasks(conn, "f", [ids["m", 0], ids["m", 1]])
    complete(conn, m0, 0)

    row = conn.execute(
        "select pgflow._cascade_force_skip_steps(%s, 'm', 'condition_unmet')", (run_id,)
    ).fetchone()

    assert row == (2,)
    tasks = by_key(conn, run_id)
    assert [tasks["m", i]["status"] for i in range(3)] == ["completed", "skipped", "skipped"]
    assert tasks["other", 0]["status"] == "queued"
    assert statuses(conn, run_id) == {"m": "skipped", "after": "skipped", "other": "started"}
    assert [m.msg_id for m in queue_rows(conn, "f")] == [ids["other", 0]]
    assert {ids["m", 1], ids["m", 2]} <= archived_ids(conn, "f")
    assert run_row(conn, run_id)["status"] == "started"


# -- late and duplicate reports ----------------------------------------------------------------


@pytest.mark.parametrize("call", ["complete", "fail"])
def test_a_late_report_on_a_failed_run_changes_nothing(conn: Conn, call: str) -> None:
    """The worker still holding a cancelled task reports: the row comes back unchanged (still
    `cancelled`), nothing is raised, no event is sent."""
    define_flow(conn, "f", [("a", []), ("b", [])], max_attempts=1)
    run_id = start_flow(conn, "f", {})
    a, b = sorted(read_and_start(conn, "f"), key=lambda t: t.step_slug)
    fail(conn, a, "boom")
    before = task_row(conn, b)
    names = event_names(conn, run_id)

    rows = complete(conn, b, {"late": True}) if call == "complete" else fail(conn, b, "late")

    assert rows == [before]
    assert before["status"] == "cancelled"
    assert task_row(conn, b) == before
    assert event_names(conn, run_id) == names
    assert b.msg_id in archived_ids(conn, "f")


@pytest.mark.parametrize("call", ["complete", "fail"])
def test_a_report_for_a_queued_task_changes_nothing(conn: Conn, call: str) -> None:
    """A report for a task nobody claimed (a duplicate from a worker whose attempt was already
    failed and queued for a retry) is ignored: the task keeps its message and is claimed and
    finished normally afterwards."""
    define_flow(conn, "f", [("a", [])], max_attempts=3, base_delay=0)
    run_id = start_flow(conn, "f", {})
    (a,) = read_and_start(conn, "f")
    fail(conn, a, "first attempt")
    before = task_row(conn, a)
    assert before["status"] == "queued"

    rows = complete(conn, a, "stale") if call == "complete" else fail(conn, a, "stale")

    assert rows == [before]
    assert task_row(conn, a) == before
    assert [m.msg_id for m in queue_rows(conn, "f")] == [a.msg_id]
    (again,) = start_tasks(conn, "f", [a.msg_id])
    complete(conn, again, "done")
    assert run_row(conn, run_id)["status"] == "completed"
    assert task_row(conn, a)["attempts_count"] == 2


def test_a_duplicate_completion_changes_nothing(conn: Conn) -> None:
    define_flow(conn, "f", [("m", [], "map")])
    run_id = start_flow(conn, "f", [1, 2])
    first, _second = read_and_start(conn, "f")
    complete(conn, first, "once")
    before = task_row(conn, first)
    names = event_names(conn, run_id)
    assert complete(conn, first, "twice") == [before]
    assert fail(conn, first, "after the fact") == [before]
    assert step_states(conn, run_id)["m"]["remaining_tasks"] == 1
    assert event_names(conn, run_id) == names


# -- start_tasks -------------------------------------------------------------------------------


def test_messages_of_ended_tasks_claim_nothing(conn: Conn) -> None:
    """Messages read before their tasks were skipped or cancelled hand out nothing and cost no
    attempt."""
    define_flow(conn, "f", [("m", [], "map"), ("x", [])], max_attempts=1)
    run_id = start_flow(conn, "f", [1, 2])
    ids = read_ids(conn, "f", vt=30)
    conn.execute("select pgflow._cascade_force_skip_steps(%s, 'm', 'condition_unmet')", (run_id,))
    assert [t.step_slug for t in start_tasks(conn, "f", ids)] == ["x"]
    assert {r["attempts_count"] for r in task_rows(conn, run_id, "m")} == {0}


def test_a_claim_whose_message_is_gone_is_undone(conn: Conn) -> None:
    """Every claimed message must get its visibility; a message deleted behind pgflow's back
    fails the whole call with pgflow's words and SQLSTATE (22P02), claiming nothing."""
    define_flow(conn, "f", [("a", []), ("b", [])])
    run_id = start_flow(conn, "f", {})
    ids = read_ids(conn, "f")
    conn.execute("select pgmq.delete('f', %s::bigint)", (ids[0],))
    with raises_sqlstate("22P02", "start_tasks(): visibility updated 1 of 2 claimed messages"):
        start_tasks(conn, "f", ids)
    rows = task_rows(conn, run_id)
    assert [(r["status"], r["attempts_count"], r["last_worker_id"]) for r in rows] == [
        ("queued", 0, None),
        ("queued", 0, None),
    ]


def test_claimed_messages_stay_hidden_for_the_steps_timeout(conn: Conn) -> None:
    conn.execute("select pgflow.create_flow('f', timeout => 60)")
    conn.execute("select pgflow.add_step('f', 'a', timeout => 7)")
    start_flow(conn, "f", {})
    (task,) = start_tasks(conn, "f", read_ids(conn, "f", vt=1))
    (row,) = queue_rows(conn, "f")
    assert row.msg_id == task.msg_id
    assert 8 < row.vt_in <= 9


# -- requeue_stalled_tasks ---------------------------------------------------------------------


def test_requeue_clears_the_worker(conn: Conn) -> None:
    define_flow(conn, "f", [("a", [])], timeout=5)
    run_id = start_flow(conn, "f", {})
    (task,) = read_and_start(conn, "f")
    assert task_row(conn, task)["last_worker_id"] == str(WORKER_ID)
    backdate_started(conn, run_id, "a", 40)
    assert requeue(conn) == 1
    row = task_row(conn, task)
    assert (row["status"], row["last_worker_id"], row["requeued_count"]) == ("queued", None, 1)


def test_requeue_leaves_tasks_of_an_ended_step_alone(conn: Conn) -> None:
    """A started task whose step is no longer `started` (here: its step failed while the run
    goes on, as when an older build left such a row) is not revived."""
    define_flow(conn, "f", [("a", []), ("b", [])], timeout=5)
    run_id = start_flow(conn, "f", {})
    tasks = {t.step_slug: t for t in read_and_start(conn, "f")}
    conn.execute(
        "update pgflow.step_states set status = 'failed', failed_at = now()"
        " where run_id = %s and step_slug = 'a'",
        (run_id,),
    )
    for slug in ("a", "b"):
        backdate_started(conn, run_id, slug, 40)
    assert requeue(conn) == 1
    assert task_row(conn, tasks["a"])["status"] == "started"
    assert task_row(conn, tasks["b"])["status"] == "queued"


# -- the migration repairs old data ------------------------------------------------------------


@pytest.fixture
def baseline_db(stack: Stack) -> Iterator[str]:
    """A database migrated up to the baseline only."""
    name = stack.empty("pgflow_lifecycle")
    try:
        url = stack.url(name)
        migrate(url, target=list_migrations()[0].version)
        yield url
    finally:
        stack.drop(name)


def test_the_migration_ends_tasks_left_active_by_older_builds(baseline_db: str) -> None:
    """Tasks left queued or started in a failed run become `cancelled`, those under a skipped
    step `skipped`, and their messages are archived, as pgflow's 0.15.1 migration does."""
    with psycopg.connect(baseline_db, autocommit=True) as conn:
        define_flow(conn, "f", [("a", []), ("m", [], "map")])
        failed_run = start_flow(conn, "f", [1, 2])
        going_run = start_flow(conn, "f", [1, 2])
        # What an older build could leave behind, written by hand.
        conn.execute(
            "update pgflow.runs set status = 'failed', failed_at = now() where run_id = %s",
            (failed_run,),
        )
        conn.execute(
            "update pgflow.step_states set status = 'skipped', skip_reason = 'condition_unmet',"
            " skipped_at = now(), remaining_tasks = null where run_id = %s and step_slug = 'm'",
            (going_run,),
        )
        (started,) = start_tasks(
            conn, "f", [r["message_id"] for r in task_rows(conn, going_run, "a")]
        )
        messages = {r["message_id"] for r in task_rows(conn, failed_run)} | {
            r["message_id"] for r in task_rows(conn, going_run, "m")
        }

        migrate(baseline_db)

        assert {r["status"] for r in task_rows(conn, failed_run)} == {"cancelled"}
        assert {r["status"] for r in task_rows(conn, going_run, "m")} == {"skipped"}
        assert task_row(conn, started)["status"] == "started"
        assert messages <= archived_ids(conn, "f")
        assert [m.msg_id for m in queue_rows(conn, "f")] == [started.msg_id]


# -- check constraints -------------------------------------------------------------------------

#: pgflow's names for the check constraints of its tables (pgflow's schema files as of 0.17),
#: and the few of ours pgflow has no counterpart for.
PGFLOW_CHECKS = {
    "flows": {
        "slug_is_valid",
        "opt_max_attempts_is_nonnegative",
        "opt_base_delay_is_nonnegative",
        "opt_timeout_is_positive",
        "queue_mode_is_valid",
    },
    "steps": {
        "queue_name_is_valid",
        "steps_deps_count_check",
        "steps_step_slug_check",
        "steps_step_type_check",
        "opt_max_attempts_is_nonnegative",
        "opt_base_delay_is_nonnegative",
        "opt_timeout_is_positive",
        "opt_start_delay_is_nonnegative",
        "when_unmet_is_valid",
        "when_exhausted_is_valid",
    },
    "deps": {"deps_check"},
    "runs": {
        "runs_remaining_steps_check",
        "completed_at_or_failed_at",
        "completed_at_is_after_started_at",
        "failed_at_is_after_started_at",
        "status_is_valid",
    },
    "step_states": {
        "step_states_initial_tasks_check",
        "step_states_remaining_deps_check",
        "status_is_valid",
        "status_and_remaining_tasks_match",
        "remaining_tasks_state_consistency",
        "initial_tasks_known_when_started",
        "output_only_for_completed_or_null",
        "skip_reason_matches_status",
        "completed_at_or_failed_at_or_skipped_at",
        "started_at_is_after_created_at",
        "completed_at_is_after_started_at",
        "failed_at_is_after_started_at",
        "skipped_at_is_after_created_at",
    },
    "step_tasks": {
        "queue_name_is_valid",
        "valid_status",
        "output_valid_only_for_completed",
        "attempts_count_nonnegative",
        "completed_at_or_failed_at",
        "completed_at_is_after_queued_at",
        "failed_at_is_after_queued_at",
        "started_at_is_after_queued_at",
        "completed_at_is_after_started_at",
        "failed_at_is_after_started_at",
    },
}
OURS_ONLY_CHECKS = {
    "steps": {"required_input_pattern_is_object", "forbidden_input_pattern_is_object"},
    "step_states": {"remaining_tasks_valid", "skipped_at_matches_status"},
    "step_tasks": {"task_index_nonnegative"},
    "runs": {"cancelled_only_when_failed", "cancel_reason_only_when_cancelled"},
}


def test_check_constraints_carry_pgflows_names(conn: Conn) -> None:
    rows = conn.execute(
        "select c.conrelid::regclass::text, c.conname from pg_constraint as c"
        " where c.connamespace = 'pgflow'::regnamespace and c.contype = 'c'"
    ).fetchall()
    found: dict[str, set[str]] = {}
    for table, name in rows:
        found.setdefault(table.removeprefix("pgflow."), set()).add(name)
    expected = {
        table: names | OURS_ONLY_CHECKS.get(table, set()) for table, names in PGFLOW_CHECKS.items()
    }
    assert {t: found.get(t, set()) for t in expected} == expected


def test_step_rows_pgflow_accepts_are_accepted(conn: Conn) -> None:
    """A started step without a remaining_tasks count and a skip reason outside pgflow's three
    are allowed by pgflow's constraints, and by ours now."""
    define_flow(conn, "f", [("a", []), ("b", [])])
    run_id = start_flow(conn, "f", {})
    conn.execute(
        "update pgflow.step_states set remaining_tasks = null"
        " where run_id = %s and step_slug = 'a'",
        (run_id,),
    )
    conn.execute(
        "update pgflow.step_states set status = 'skipped', skip_reason = 'operator_said_so',"
        " skipped_at = now(), remaining_tasks = null where run_id = %s and step_slug = 'b'",
        (run_id,),
    )
    with raises_sqlstate("23514", "remaining_tasks_state_consistency"):
        conn.execute(
            "update pgflow.step_states set remaining_tasks = 1"
            " where run_id = %s and step_slug = 'b'",
            (run_id,),
        )


# -- taskless cascades -------------------------------------------------------------------------


def test_a_cascade_of_taskless_steps_has_no_depth_limit(conn: Conn) -> None:
    """A root map over an empty array followed by a chain of 64 maps: every level completes in
    the one start_flow call and the run completes. pgflow stops such a cascade after 50
    levels with 'Cascade loop exceeded safety limit of 50 iterations'."""
    depth = 64
    chain: list[tuple[str, list[str], str]] = [("m0", [], "map")]
    chain += [(f"m{i}", [f"m{i - 1}"], "map") for i in range(1, depth + 1)]
    define_flow(conn, "f", chain)
    run_id = start_flow(conn, "f", [])
    run = run_row(conn, run_id)
    assert (run["status"], run["remaining_steps"]) == ("completed", 0)
    assert set(statuses(conn, run_id).values()) == {"completed"}
    assert event_names(conn, run_id).count(f"step:m{depth}:completed") == 1
    assert task_rows(conn, run_id) == []


def test_a_late_report_for_an_unknown_task_still_raises(conn: Conn) -> None:
    """Deliberately kept: a task that does not exist is a worker's bug, not a late report."""
    define_flow(conn, "f", [("a", [])])
    run_id = start_flow(conn, "f", {})
    with raises_sqlstate("P0002", "a[5]"):
        complete(conn, Task("f", run_id, "a", None, 0, 5), 1)

"""Upgrading a database built by 0001 to the latest migration in place, with runs in flight."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgflow_worker._database import list_migrations, migrate
from pgflow_worker.errors import MigrationError
from tests._stack import Stack
from tests.sql.helpers import (
    Conn,
    Task,
    complete,
    define_flow,
    drain,
    event_names,
    fail,
    make_all_visible,
    read_and_start,
    run_row,
    start_flow,
    start_tasks,
    step_states,
    task_rows,
)
from tests.sql.test_conditions import assert_run_consistent, create_flow, statuses, step


@pytest.fixture
def old_url(stack: Stack) -> Iterator[str]:
    """A fresh database with only the first migration applied."""
    name = stack.empty("pgflow_upgrade")
    try:
        url = stack.url(name)
        report = migrate(url, target="0001")
        assert report.applied == ["0001_pgflow_core.sql"]
        yield url
    finally:
        stack.drop(name)


@pytest.fixture
def old(old_url: str) -> Iterator[Conn]:
    with psycopg.connect(old_url, autocommit=True) as conn:
        yield conn


def claim(conn: Conn, flow: str, run_id: uuid.UUID, step_slug: str, qty: int = 1) -> list[Task]:
    """Start the first ``qty`` queued tasks of one step of one run, leaving the others queued."""
    ids = [
        r[0]
        for r in conn.execute(
            f"select msg_id from pgmq.q_{flow} where message->>'run_id' = %s"
            " and message->>'step_slug' = %s order by msg_id limit %s".encode(),
            (str(run_id), step_slug, qty),
        )
    ]
    return start_tasks(conn, flow, ids)


#: Every migration after the first, as migrate reports them and as pgflow.migrations lists them.
LATER = [m.path.name for m in list_migrations()[1:]]
ALL_VERSIONS = [m.version for m in list_migrations()]


def versions(conn: Conn) -> list[str]:
    return [r[0] for r in conn.execute("select version from pgflow.migrations order by 1")]


def test_migrate_can_stop_at_a_version(old: Conn, old_url: str) -> None:
    assert versions(old) == ["0001"]
    row = old.execute(
        "select count(*) from information_schema.columns where table_schema = 'pgflow'"
        " and table_name = 'steps' and column_name = 'when_unmet'"
    ).fetchone()
    assert row == (0,)
    with pytest.raises(MigrationError, match="no migration '0009'"):
        migrate(old_url, target="0009")
    report = migrate(old_url)
    assert report.applied == LATER
    assert LATER[:1] == ["0002_conditions.sql"]
    assert report.already_applied == ["0001_pgflow_core.sql"]
    assert versions(old) == ALL_VERSIONS
    assert migrate(old_url).applied == []


def test_runs_in_flight_finish_after_the_upgrade(old: Conn, old_url: str) -> None:
    define_flow(old, "legacy", [("a", []), ("m", ["a"], "map"), ("b", ["m", "a"])], base_delay=0)
    define_flow(old, "roots", [("each", [], "map")], max_attempts=1)

    # Run 1: `a` done, the map half way: one task completed, one started, one queued.
    mid_map = start_flow(old, "legacy", {"n": 1})
    (a,) = claim(old, "legacy", mid_map, "a")
    complete(old, a, [1, 2, 3])
    m_tasks = claim(old, "legacy", mid_map, "m", qty=2)
    complete(old, m_tasks[0], 10)
    # Run 2: its root task is queued, never read.
    queued = start_flow(old, "legacy", {"n": 2})
    # Run 3: a failed attempt waits for its retry.
    retrying = start_flow(old, "legacy", {"n": 3})
    (a3,) = claim(old, "legacy", retrying, "a")
    assert fail(old, a3, "flaky")[0]["status"] == "queued"
    # Finished runs, one each way.
    done = start_flow(old, "roots", [1])
    drain(old, "roots")
    failed = start_flow(old, "roots", [1])
    (task,) = read_and_start(old, "roots")
    fail(old, task, "broken")
    assert run_row(old, failed)["status"] == "failed"
    events_before = {r: event_names(old, r) for r in (mid_map, queued, retrying)}

    migrate(old_url)

    # The connection opened before the upgrade keeps working (no stale cached plans).
    assert versions(old) == ALL_VERSIONS
    assert statuses(old, mid_map) == {"a": "completed", "m": "started", "b": "created"}
    assert [t["status"] for t in task_rows(old, mid_map, "m")] == [
        "completed",
        "started",
        "queued",
    ]
    complete(old, m_tasks[1], 20)
    make_all_visible(old, "legacy")
    drain(old, "legacy", _handler)

    assert run_row(old, mid_map)["output"] == {"b": {"a": [1, 2, 3], "m": [10, 20, 30]}}
    assert event_names(old, mid_map) == [
        *events_before[mid_map],
        "step:m:completed",
        "step:b:started",
        "step:b:completed",
        "run:completed",
    ]
    for run_id, n in ((queued, 2), (retrying, 3)):
        run = run_row(old, run_id)
        assert run["status"] == "completed"
        assert run["output"] == {"b": {"a": [n], "m": [n * 10]}}
        assert event_names(old, run_id)[: len(events_before[run_id])] == events_before[run_id]
    for run_id in (mid_map, queued, retrying, done, failed):
        assert_run_consistent(old, run_id)
    snapshot = old.execute("select pgflow.get_run_with_states(%s)", (done,)).fetchone()
    assert snapshot is not None
    (each,) = snapshot[0]["steps"]
    assert (each["status"], each["skip_reason"], each["skipped_at"]) == ("completed", None, None)


def _handler(task: Task) -> Any:
    """legacy's steps: a -> [n], m -> element * 10, b -> its input."""
    if task.step_slug == "a":
        return [task.flow_input["n"]]
    if task.step_slug == "m":
        return task.input * 10
    return task.input


def test_existing_definitions_get_the_defaults_and_new_features_work(
    old: Conn, old_url: str
) -> None:
    define_flow(old, "legacy", [("a", []), ("b", ["a"])])
    migrate(old_url)

    rows = old.execute(
        "select step_slug, required_input_pattern, forbidden_input_pattern, when_unmet,"
        " when_exhausted from pgflow.steps where flow_slug = 'legacy' order by step_index"
    ).fetchall()
    assert rows == [("a", None, None, "skip", "fail"), ("b", None, None, "skip", "fail")]

    create_flow(old, "fresh", max_attempts=1)
    step(old, "fresh", "gate", if_={"go": True})
    step(old, "fresh", "work", when_exhausted="skip-cascade")
    step(old, "fresh", "after_work", ["work"])
    step(old, "fresh", "end", ["gate"])
    run_id = start_flow(old, "fresh", {"go": False})
    (work,) = claim(old, "fresh", run_id, "work")
    fail(old, work, "nope")
    states = step_states(old, run_id)
    assert {s: (st["status"], st["skip_reason"]) for s, st in states.items()} == {
        "gate": ("skipped", "condition_unmet"),
        "work": ("skipped", "handler_failed"),
        "after_work": ("skipped", "dependency_skipped"),
        "end": ("started", None),
    }
    drain(old, "fresh", lambda t: "ok")
    assert run_row(old, run_id)["output"] == {"end": "ok"}
    assert_run_consistent(old, run_id)
    old.execute("select pgflow.prune_data_older_than('1 day')")


def test_0003_replaces_functions_in_place_keeping_their_grants(stack: Stack) -> None:
    """0003 redefines add_step, _skip_step and _terminate_run_tasks with the same signatures:
    EXECUTE granted on them at 0002 is still there afterwards, and add_step's new message
    is in force on a connection opened before the upgrade."""
    role = f"pgflow_app_{uuid.uuid4().hex[:8]}"
    add_step_sig = (
        "pgflow.add_step(text, text, text[], integer, integer, integer, integer, text,"
        " jsonb, jsonb, text, text)"
    )
    name = stack.empty("pgflow_upgrade")
    with psycopg.connect(stack.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create role {}").format(sql.Identifier(role)))
    try:
        url = stack.url(name)
        assert migrate(url, target="0002").applied == [
            "0001_pgflow_core.sql",
            "0002_conditions.sql",
        ]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("grant execute on function {} to {}").format(
                    sql.SQL(add_step_sig), sql.Identifier(role)
                )
            )
            define_flow(conn, "f", [("a", []), ("b", [])])
            with pytest.raises(psycopg.Error) as before:
                conn.execute("select pgflow.add_step('f', 'm', '{a,b}', step_type => 'map')")
            assert "(flow 'f')" not in str(before.value)
            assert migrate(url).applied == ["0003_lock_order.sql"]
            with pytest.raises(psycopg.Error) as after:
                conn.execute("select pgflow.add_step('f', 'm', '{a,b}', step_type => 'map')")
            assert "(flow 'f')" in str(after.value)
            row = conn.execute(
                "select has_function_privilege(%s, %s, 'execute')", (role, add_step_sig)
            ).fetchone()
            assert row == (True,)
    finally:
        stack.drop(name)
        with psycopg.connect(stack.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))

"""Retention: pgflow.prune_data_older_than."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.sql.helpers import (
    WORKER_ID,
    Conn,
    complete,
    ensure_worker,
    fail,
    raises_sqlstate,
    read_and_start,
    start_flow,
)
from tests.sql.test_conditions import create_flow, step


def prune(conn: Conn, interval: str | None) -> None:
    conn.execute("select pgflow.prune_data_older_than(%s::interval)", (interval,))


def age_run(conn: Conn, run_id: uuid.UUID, days: int) -> None:
    """Pretend the run started (and finished, if it did) ``days`` ago."""
    conn.execute(
        "update pgflow.runs set started_at = started_at - make_interval(days => %s),"
        " completed_at = completed_at - make_interval(days => %s),"
        " failed_at = failed_at - make_interval(days => %s) where run_id = %s",
        (days, days, days, run_id),
    )


def age_archive(conn: Conn, flow: str, run_id: uuid.UUID, days: int) -> None:
    conn.execute(
        f"update pgmq.a_{flow} set archived_at = archived_at - make_interval(days => %s)"
        " where message->>'run_id' = %s".encode(),
        (days, str(run_id)),
    )


def counts(conn: Conn, run_id: uuid.UUID, flow: str = "f") -> dict[str, int]:
    queries = {
        "runs": "select count(*) from pgflow.runs where run_id = %(r)s",
        "step_states": "select count(*) from pgflow.step_states where run_id = %(r)s",
        "step_tasks": "select count(*) from pgflow.step_tasks where run_id = %(r)s",
        "events": "select count(*) from realtime.messages where topic = 'pgflow:run:' || %(r)s",
        "queue": f"select count(*) from pgmq.q_{flow} where message->>'run_id' = %(r)s::text",
        "archive": f"select count(*) from pgmq.a_{flow} where message->>'run_id' = %(r)s::text",
    }
    out = {}
    for key, query in queries.items():
        row = conn.execute(query.encode(), {"r": run_id}).fetchone()
        assert row is not None
        out[key] = int(row[0])
    return out


def finish(conn: Conn, flow: str = "f", fail_it: bool = False) -> None:
    for task in read_and_start(conn, flow, qty=100):
        if fail_it:
            fail(conn, task, "no")
        else:
            complete(conn, task, 1)


@pytest.fixture
def runs(conn: Conn) -> dict[str, uuid.UUID]:
    """Runs of every age and status: old ones are 40 days old, the cut is at 30 days."""
    create_flow(conn, "f", max_attempts=1)
    step(conn, "f", "a")
    step(conn, "f", "b", ["a"], if_={"a": 2})  # skipped: its rows go with the run
    out = {}
    out["old_completed"] = start_flow(conn, "f", {})
    finish(conn)
    out["old_failed"] = start_flow(conn, "f", {})
    finish(conn, fail_it=True)
    out["old_running"] = start_flow(conn, "f", {})
    out["recent_completed"] = start_flow(conn, "f", {})
    # old_running's task stays started; recent_completed completes now
    for task in read_and_start(conn, "f", qty=100):
        if task.run_id == out["recent_completed"]:
            complete(conn, task, 1)
    for name in ("old_completed", "old_failed", "old_running"):
        age_run(conn, out[name], 40)
        age_archive(conn, "f", out[name], 40)
    return out


def test_prune_deletes_old_finished_runs_with_everything_they_own(
    conn: Conn, runs: dict[str, uuid.UUID]
) -> None:
    before = {name: counts(conn, run_id) for name, run_id in runs.items()}
    assert before["old_completed"]["step_tasks"] == 1
    assert before["old_completed"]["events"] > 0
    assert before["old_failed"]["archive"] == 1

    prune(conn, "30 days")

    empty = dict.fromkeys(before["old_completed"], 0)
    assert counts(conn, runs["old_completed"]) == empty
    assert counts(conn, runs["old_failed"]) == empty
    assert counts(conn, runs["old_running"]) == before["old_running"], "still running: kept"
    assert counts(conn, runs["recent_completed"]) == before["recent_completed"]


def test_prune_keeps_recent_archived_messages(conn: Conn, runs: dict[str, uuid.UUID]) -> None:
    """Archive rows go by their own age, not their run's: an old run's recent ones stay."""
    age_archive(conn, "f", runs["recent_completed"], 35)
    prune(conn, "30 days")
    assert counts(conn, runs["recent_completed"])["archive"] == 0
    assert counts(conn, runs["recent_completed"])["runs"] == 1


def test_prune_deletes_messages_left_in_the_queue(conn: Conn, runs: dict[str, uuid.UUID]) -> None:
    row = conn.execute(
        "select * from pgmq.send('f', jsonb_build_object('run_id', %s::text))",
        (runs["old_completed"],),
    ).fetchone()
    assert row is not None
    conn.execute(
        "update pgflow.step_tasks set message_id = %s where run_id = %s and step_slug = 'a'",
        (row[0], runs["old_completed"]),
    )
    prune(conn, "30 days")
    assert counts(conn, runs["old_completed"])["queue"] == 0


def test_prune_leaves_a_supabase_realtime_table_alone(
    conn: Conn, runs: dict[str, uuid.UUID]
) -> None:
    conn.execute(
        "comment on function realtime.send(jsonb, text, text, boolean) is 'Supabase Realtime'"
    )
    events = counts(conn, runs["old_completed"])["events"]
    prune(conn, "30 days")
    after = counts(conn, runs["old_completed"])
    assert (after["runs"], after["events"]) == (0, events)


def test_prune_works_without_a_realtime_schema(conn: Conn, runs: dict[str, uuid.UUID]) -> None:
    conn.execute("drop schema realtime cascade")
    prune(conn, "30 days")
    row = conn.execute("select count(*) from pgflow.runs").fetchone()
    assert row == (2,)


def test_prune_with_a_zero_interval_takes_every_finished_run(
    conn: Conn, runs: dict[str, uuid.UUID]
) -> None:
    prune(conn, "0 seconds")
    left = conn.execute("select run_id from pgflow.runs").fetchall()
    assert left == [(runs["old_running"],)]


def test_prune_deletes_silent_workers(conn: Conn, runs: dict[str, uuid.UUID]) -> None:
    silent = uuid.uuid4()
    ensure_worker(conn, "f", silent)
    conn.execute(
        "update pgflow.workers set last_heartbeat_at = now() - interval '31 days',"
        " started_at = now() - interval '40 days' where worker_id = %s",
        (silent,),
    )
    conn.execute(
        "update pgflow.step_tasks set last_worker_id = %s where run_id = %s",
        (silent, runs["old_running"]),
    )
    prune(conn, "30 days")
    workers = conn.execute("select worker_id from pgflow.workers").fetchall()
    assert workers == [(WORKER_ID,)]
    row = conn.execute(
        "select status, last_worker_id from pgflow.step_tasks where run_id = %s",
        (runs["old_running"],),
    ).fetchone()
    assert row == ("started", None), "the task of a running run stays, without its worker"


def test_prune_of_an_empty_database(conn: Conn) -> None:
    prune(conn, "1 day")
    create_flow(conn, "f")
    prune(conn, "1 day")


@pytest.mark.parametrize(("interval", "needle"), [("-1 day", "-1 days"), (None, "NULL")])
def test_prune_rejects_a_negative_or_missing_interval(
    conn: Conn, interval: Any, needle: str
) -> None:
    with raises_sqlstate("22023", "retention interval", needle):
        prune(conn, interval)

"""Operating runs in SQL: cancel_run, retry_run and list_runs, and their races with workers.

Races use real concurrent connections: one call holds its transaction open while the other is
seen (through ``pg_blocking_pids``) waiting for its locks, or both are released together.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import psycopg
import pytest

from tests.sql.concurrency import connections, together, wait_until_blocked, worker_ids
from tests.sql.helpers import (
    Task,
    archived_ids,
    complete,
    define_flow,
    event_names,
    events,
    fail,
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


def cancel(conn: Conn, run_id: uuid.UUID, reason: str | None = None) -> dict[str, Any]:
    row = conn.execute(
        "select to_jsonb(r) from pgflow.cancel_run(%s, %s) as r", (run_id, reason)
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def retry(conn: Conn, run_id: uuid.UUID, new_run_id: uuid.UUID | None = None) -> dict[str, Any]:
    row = conn.execute(
        "select to_jsonb(r) from pgflow.retry_run(%s, %s) as r", (run_id, new_run_id)
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def listed(conn: Conn, **filters: Any) -> list[dict[str, Any]]:
    names = ", ".join(f"{name} => %({name})s" for name in filters)
    rows = conn.execute(
        f"select to_jsonb(r) from pgflow.list_runs({names}) as r".encode(), filters
    ).fetchall()
    return [r[0] for r in rows]


def assert_cancelled_cleanly(conn: Conn, run_id: uuid.UUID, flow: str = "f") -> None:
    """The run ended failed and cancelled, with one run:failed and no run:completed; none of
    its tasks is active and nothing of it is left in the queue, even made visible."""
    run = run_row(conn, run_id)
    assert run["status"] == "failed"
    assert run["cancelled_at"] is not None
    assert run["cancelled_at"] == run["failed_at"]
    names = event_names(conn, run_id)
    assert names.count("run:failed") == 1
    assert "run:completed" not in names
    rows = task_rows(conn, run_id)
    assert [r for r in rows if r["status"] in ("queued", "started")] == []
    assert all(m.message["run_id"] != str(run_id) for m in queue_rows(conn, flow))
    assert {r["message_id"] for r in rows} <= archived_ids(conn, flow)
    make_all_visible(conn, flow)
    assert read_ids(conn, flow, qty=1000) == []


def holding(
    holder: Conn,
    hold: Callable[[], object],
    waiter: Conn,
    wait: Callable[[], object],
    observer: Conn,
) -> tuple[object, BaseException | None]:
    """Run ``hold`` in an open transaction on ``holder``; start ``wait`` on ``waiter`` in a
    thread, see it blocked behind the holder's locks, commit, and return what ``wait`` returned
    or raised."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = wait()
        except BaseException as exc:  # returned to the test
            outcome["error"] = exc
        finally:
            done.set()

    with holder.transaction():
        hold()
        thread = threading.Thread(target=run)
        thread.start()
        wait_until_blocked(observer, waiter.info.backend_pid)
        assert not done.is_set()
    assert done.wait(10)
    thread.join(10)
    return outcome.get("value"), outcome.get("error")


# -- cancel_run -------------------------------------------------------------------------------


def test_cancel_ends_the_run_failed_and_marked_cancelled(conn: Conn) -> None:
    """first → second; a map beside them. The run fails, marked cancelled with the reason; one
    run:failed carries it; every active task ends cancelled, its message archived; the step
    states are left as a failed run leaves them; nothing starts afterwards."""
    define_flow(conn, "f", [("first", []), ("second", ["first"]), ("m", [], "map")])
    run_id = start_flow(conn, "f", [1, 2, 3])
    (first,) = read_and_start(conn, "f", qty=1)
    assert first.step_slug == "first"
    row = cancel(conn, run_id, "  operator says stop  ")
    assert row["status"] == "failed"
    assert row["cancel_reason"] == "operator says stop"
    assert row == run_row(conn, run_id)
    assert_cancelled_cleanly(conn, run_id)
    assert {r["status"] for r in task_rows(conn, run_id)} == {"cancelled"}
    (failed,) = [payload for name, payload in events(conn, run_id) if name == "run:failed"]
    assert failed["error_message"] == "Run cancelled: operator says stop"
    assert set(failed) - {"id"} == {
        "event_type",
        "run_id",
        "flow_slug",
        "status",
        "error_message",
        "failed_at",
    }
    assert {s["status"] for s in step_states(conn, run_id).values()} == {"started", "created"}

    # The in-flight task reports late: no error, nothing changes, second never starts.
    names = event_names(conn, run_id)
    assert complete(conn, first, {"done": True}) == [task_row(conn, first)]
    assert task_row(conn, first)["status"] == "cancelled"
    assert event_names(conn, run_id) == names
    assert task_rows(conn, run_id, "second") == []
    assert fail(conn, first, "late") == [task_row(conn, first)]
    assert event_names(conn, run_id) == names


def test_cancel_without_reason(conn: Conn) -> None:
    define_flow(conn, "f", [("only", [])])
    run_id = start_flow(conn, "f", {})
    for blank in (None, "", "   "):
        if blank is not None:
            run_id = start_flow(conn, "f", {})
        assert cancel(conn, run_id, blank)["cancel_reason"] is None
        (failed,) = [p for name, p in events(conn, run_id) if name == "run:failed"]
        assert failed["error_message"] == "Run cancelled"


def test_cancelling_twice_or_an_ended_run_is_refused_and_changes_nothing(conn: Conn) -> None:
    define_flow(conn, "f", [("only", [])], max_attempts=1)
    cancelled = start_flow(conn, "f", {})
    cancel(conn, cancelled, "first")
    completed = start_flow(conn, "f", {})
    (task,) = read_and_start(conn, "f")
    complete(conn, task, 1)
    failed = start_flow(conn, "f", {})
    (task,) = read_and_start(conn, "f")
    fail(conn, task, "boom")
    before = row_counts(conn, "f")
    rows = {rid: run_row(conn, rid) for rid in (cancelled, completed, failed)}
    with raises_sqlstate("55000", f"run {cancelled} was already cancelled at"):
        cancel(conn, cancelled, "second")
    with raises_sqlstate("55000", f"run {completed} has already completed at"):
        cancel(conn, completed)
    with raises_sqlstate("55000", f"run {failed} has already failed at"):
        cancel(conn, failed)
    missing = uuid.uuid4()
    with raises_sqlstate("P0002", f"cancel_run: run {missing} does not exist"):
        cancel(conn, missing)
    assert row_counts(conn, "f") == before
    assert {rid: run_row(conn, rid) for rid in rows} == rows


def test_the_new_columns_keep_their_meaning(conn: Conn) -> None:
    """A cancellation time belongs to a failed run, a reason to a cancelled one."""
    define_flow(conn, "f", [("only", [])])
    run_id = start_flow(conn, "f", {})
    with raises_sqlstate("23514", "cancelled_only_when_failed"):
        conn.execute("update pgflow.runs set cancelled_at = now() where run_id = %s", (run_id,))
    with raises_sqlstate("23514", "cancel_reason_only_when_cancelled"):
        conn.execute("update pgflow.runs set cancel_reason = 'x' where run_id = %s", (run_id,))


# -- retry_run --------------------------------------------------------------------------------


def test_retry_starts_a_new_run_naming_its_source(conn: Conn) -> None:
    define_flow(conn, "f", [("only", [])], max_attempts=1)
    source = start_flow(conn, "f", {"n": 1})
    cancel(conn, source, "try again")
    source_row = run_row(conn, source)
    chosen = uuid.uuid4()
    first = retry(conn, source, chosen)
    assert first["run_id"] == str(chosen)
    assert (first["flow_slug"], first["input"], first["status"]) == ("f", {"n": 1}, "started")
    assert first["restart_of_run_id"] == str(source)
    assert first["cancelled_at"] is None
    assert run_row(conn, source) == source_row
    # start_flow's event, unchanged.
    (name, started), *_ = events(conn, chosen)
    assert name == "run:started"
    assert set(started) - {"id"} == {
        "event_type",
        "run_id",
        "flow_slug",
        "input",
        "status",
        "remaining_steps",
        "started_at",
    }

    # A failed (not cancelled) retry is retried in turn; the new one names its own source.
    (task,) = read_and_start(conn, "f")
    fail(conn, task, "boom")
    second = retry(conn, chosen)
    assert second["restart_of_run_id"] == str(chosen)
    assert second["run_id"] not in (str(source), str(chosen))


def test_retrying_a_run_that_has_not_failed_is_refused(conn: Conn) -> None:
    define_flow(conn, "f", [("only", [])])
    started = start_flow(conn, "f", {})
    completed = start_flow(conn, "f", {})
    for task in read_and_start(conn, "f"):
        if task.run_id == completed:
            complete(conn, task, 1)
    before = row_counts(conn, "f")
    with raises_sqlstate("55000", f"retry_run: run {started} has not failed (it is started)"):
        retry(conn, started)
    with raises_sqlstate("55000", f"run {completed} has not failed (it is completed)"):
        retry(conn, completed)
    missing = uuid.uuid4()
    with raises_sqlstate("P0002", f"retry_run: run {missing} does not exist"):
        retry(conn, missing)
    cancel(conn, started)
    with raises_sqlstate("23505", f"a run with id {completed} already exists"):
        retry(conn, started, completed)
    assert row_counts(conn, "f")["runs"] == before["runs"]


def test_deleting_a_source_run_keeps_its_retry(conn: Conn) -> None:
    define_flow(conn, "f", [("only", [])])
    source = start_flow(conn, "f", {})
    cancel(conn, source)
    new = uuid.UUID(retry(conn, source)["run_id"])
    conn.execute("delete from pgflow.step_tasks where run_id = %s", (source,))
    conn.execute("delete from pgflow.step_states where run_id = %s", (source,))
    conn.execute("delete from pgflow.runs where run_id = %s", (source,))
    assert run_row(conn, new)["restart_of_run_id"] is None


# -- list_runs --------------------------------------------------------------------------------


def test_list_runs_newest_first_with_filters_and_pages(conn: Conn) -> None:
    define_flow(conn, "f", [("only", [])])
    define_flow(conn, "g", [("only", [])])
    ids = [start_flow(conn, "f" if i % 2 == 0 else "g", {"i": i}) for i in range(7)]
    # Distinct start times, oldest first (one transaction would give them all the same).
    for age, rid in enumerate(reversed(ids)):
        conn.execute(
            "update pgflow.runs set started_at = now() - make_interval(mins => %s)"
            " where run_id = %s",
            (age, rid),
        )
    cancel(conn, ids[0], "old")
    (task,) = [t for t in read_and_start(conn, "f", qty=10) if t.run_id == ids[2]]
    complete(conn, task, 1)

    everything = listed(conn)
    assert [r["run_id"] for r in everything] == [str(r) for r in reversed(ids)]
    assert "input" not in everything[0]
    assert "output" not in everything[0]
    assert [r["run_id"] for r in listed(conn, flow_slug="g")] == [str(ids[i]) for i in (5, 3, 1)]
    assert [r["run_id"] for r in listed(conn, status="completed")] == [str(ids[2])]
    assert [r["run_id"] for r in listed(conn, status="cancelled")] == [str(ids[0])]
    assert listed(conn, status="failed")[0]["cancel_reason"] == "old"
    assert len(listed(conn, status="started")) == 5
    assert len(listed(conn, flow_slug="f", status="started")) == 2
    since = run_row(conn, ids[4])["started_at"]
    assert [r["run_id"] for r in listed(conn, since=since)] == [str(ids[i]) for i in (6, 5, 4)]

    pages: list[str] = []
    cursor: str | None = None
    while True:
        page = listed(conn, max_runs=3, before_run_id=cursor)
        pages += [r["run_id"] for r in page]
        if len(page) < 3:
            break
        cursor = page[-1]["run_id"]
    assert pages == [r["run_id"] for r in everything]

    # Runs started in one transaction share their start time: the id orders them.
    with conn.transaction():
        twins = [start_flow(conn, "f", {}) for _ in range(4)]
    page_one = listed(conn, max_runs=2)
    page_two = listed(conn, max_runs=2, before_run_id=page_one[-1]["run_id"])
    assert [r["run_id"] for r in page_one + page_two] == sorted(map(str, twins), reverse=True)


def test_list_runs_refuses_bad_filters(conn: Conn) -> None:
    with raises_sqlstate("22023", "status 'running' is not one of started, completed"):
        listed(conn, status="running")
    for bad in (0, -1, 10001, None):
        with raises_sqlstate("22023", "max_runs must be between 1 and 10000"):
            listed(conn, max_runs=bad)
    missing = uuid.uuid4()
    with raises_sqlstate("P0002", f"run {missing} (before_run_id) does not exist"):
        listed(conn, before_run_id=missing)


# -- races ------------------------------------------------------------------------------------


def map_flow(conn: Conn, **options: Any) -> None:
    define_flow(conn, "f", [("m", [], "map"), ("after", ["m"])], **options)


def test_cancel_while_workers_claim_its_tasks(db_url: str) -> None:
    """Ten rounds: three workers claim a 60-task map's messages at the moment the run is
    cancelled. No deadlock, each task handed out once at most, and every task of the run ends
    cancelled with its message archived."""
    with psycopg.connect(db_url, autocommit=True) as conn, connections(db_url, 4) as conns:
        map_flow(conn)
        workers = worker_ids(4)
        for _ in range(10):
            run_id = start_flow(conn, "f", list(range(60)))
            batches = [read_ids(conns[i], "f", qty=20, vt=30) for i in (1, 2, 3)]
            calls: list[Callable[[], object]] = [partial(cancel, conns[0], run_id, "race")]
            calls += [
                partial(start_tasks, conns[i], "f", batches[i - 1], workers[i]) for i in (1, 2, 3)
            ]
            handed = cast(list[list[Task]], together(calls)[1:])
            keys = [(t.step_slug, t.task_index) for batch in handed for t in batch]
            assert len(keys) == len(set(keys))
            assert_cancelled_cleanly(conn, run_id)
            assert {r["status"] for r in task_rows(conn, run_id)} == {"cancelled"}


def test_cancel_waiting_behind_a_claim_cancels_what_was_claimed(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        map_flow(conn)
        run_id = start_flow(conn, "f", [1, 2, 3])
        with connections(db_url, 3) as (worker, operator, observer):
            ids = read_ids(worker, "f", qty=3)
            claimed: list[Task] = []
            _value, error = holding(
                worker,
                lambda: claimed.extend(start_tasks(worker, "f", ids)),
                operator,
                lambda: cancel(operator, run_id),
                observer,
            )
        assert error is None
        assert len(claimed) == 3
        assert_cancelled_cleanly(conn, run_id)
        for task in claimed:
            assert complete(conn, task, "late")[0]["status"] == "cancelled"
        assert task_rows(conn, run_id, "after") == []


def test_a_claim_waiting_behind_a_cancel_claims_nothing(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        map_flow(conn)
        run_id = start_flow(conn, "f", [1, 2, 3])
        with connections(db_url, 3) as (worker, operator, observer):
            ids = read_ids(worker, "f", qty=3)
            value, error = holding(
                operator,
                lambda: cancel(operator, run_id),
                worker,
                lambda: start_tasks(worker, "f", ids),
                observer,
            )
        assert error is None
        assert value == []
        assert_cancelled_cleanly(conn, run_id)


def test_cancel_waiting_behind_the_last_completion_is_refused(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("only", [])])
        run_id = start_flow(conn, "f", {})
        (task,) = read_and_start(conn, "f")
        with connections(db_url, 3) as (worker, operator, observer):
            _, error = holding(
                worker,
                lambda: complete(worker, task, "done"),
                operator,
                lambda: cancel(operator, run_id),
                observer,
            )
        assert isinstance(error, psycopg.Error)
        assert error.sqlstate == "55000"
        assert "has already completed" in str(error)
        run = run_row(conn, run_id)
        assert (run["status"], run["cancelled_at"], run["output"]) == (
            "completed",
            None,
            {"only": "done"},
        )
        assert "run:failed" not in event_names(conn, run_id)


def test_the_last_completion_waiting_behind_a_cancel_changes_nothing(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("only", [])])
        run_id = start_flow(conn, "f", {})
        (task,) = read_and_start(conn, "f")
        with connections(db_url, 3) as (worker, operator, observer):
            value, error = holding(
                operator,
                lambda: cancel(operator, run_id, "stop"),
                worker,
                lambda: complete(worker, task, "done"),
                observer,
            )
        assert error is None
        assert cast(list[dict[str, Any]], value)[0]["status"] == "cancelled"
        assert_cancelled_cleanly(conn, run_id)
        assert run_row(conn, run_id)["output"] is None
        assert step_states(conn, run_id)["only"]["status"] == "started"


@pytest.mark.parametrize("cancel_waits", [True, False])
def test_cancel_during_a_retrys_backoff(db_url: str, cancel_waits: bool) -> None:
    """A failed attempt goes back to the queue for a long backoff; a cancel (waiting behind
    that fail_task, or after it) ends it: it never starts again."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("only", [])], max_attempts=3, base_delay=3600)
        run_id = start_flow(conn, "f", {})
        (task,) = read_and_start(conn, "f")
        with connections(db_url, 3) as (worker, operator, observer):
            if cancel_waits:
                _, error = holding(
                    worker,
                    lambda: fail(worker, task, "try again"),
                    operator,
                    lambda: cancel(operator, run_id),
                    observer,
                )
                assert error is None
            else:
                assert fail(worker, task, "try again")[0]["status"] == "queued"
                (row,) = queue_rows(conn, "f")
                assert row.vt_in > 3000
                cancel(operator, run_id)
        assert task_row(conn, task)["status"] == "cancelled"
        assert_cancelled_cleanly(conn, run_id)


def test_two_cancels_at_once(db_url: str) -> None:
    """Released together, and one parked behind the other: one cancel wins, the other is
    refused, and the run failed once."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        map_flow(conn)
        with connections(db_url, 3) as (a, b, observer):
            for _ in range(5):
                run_id = start_flow(conn, "f", [1, 2])

                def attempt(c: Conn, reason: str, rid: uuid.UUID = run_id) -> str:
                    try:
                        cancel(c, rid, reason)
                    except psycopg.errors.ObjectNotInPrerequisiteState:
                        return "refused"
                    return reason

                outcomes = sorted(together([partial(attempt, a, "a"), partial(attempt, b, "b")]))
                assert outcomes[1] == "refused"
                assert outcomes[0] in "ab"
                assert run_row(conn, run_id)["cancel_reason"] == outcomes[0]
                assert_cancelled_cleanly(conn, run_id)

            run_id = start_flow(conn, "f", [1, 2])
            _, error = holding(
                a,
                lambda: cancel(a, run_id, "first"),
                b,
                lambda: cancel(b, run_id, "second"),
                observer,
            )
            assert isinstance(error, psycopg.Error)
            assert error.sqlstate == "55000"
            assert run_row(conn, run_id)["cancel_reason"] == "first"
            assert_cancelled_cleanly(conn, run_id)


def test_retry_of_a_cancelled_run_runs_to_completion(conn: Conn) -> None:
    """The retry's tasks are queued afresh on the same queue, untouched by its source's end."""
    map_flow(conn)
    source = start_flow(conn, "f", [1, 2])
    cancel(conn, source)
    new = uuid.UUID(retry(conn, source)["run_id"])
    for _ in range(3):
        for task in read_and_start(conn, "f", qty=10):
            assert task.run_id == new
            complete(conn, task, task.input if task.step_slug == "m" else "ok")
    assert run_row(conn, new)["status"] == "completed"
    assert run_row(conn, source)["status"] == "failed"

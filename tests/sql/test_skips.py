"""Skipped steps: `when_exhausted`, skipped tasks, and `_cascade_force_skip_steps`."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from pgflow_worker import Flow, FlowWorker
from pgflow_worker._shape import ensure_flow
from tests.sql.helpers import (
    Conn,
    Task,
    archived_ids,
    complete,
    drain,
    event_names,
    events,
    fail,
    queue_rows,
    raises_sqlstate,
    read_and_start,
    run_row,
    start_flow,
    start_tasks,
    step_states,
    task_rows,
)
from tests.sql.test_conditions import (
    SKIP_KEYS,
    assert_run_consistent,
    create_flow,
    event,
    payload_keys,
    skip_reasons,
    statuses,
    step,
)
from tests.worker.helpers import start_run, steps_of, wait_run

HANDLER_SKIP_KEYS = {
    "event_type",
    "run_id",
    "step_slug",
    "status",
    "skip_reason",
    "error_message",
    "skipped_at",
}


def one(conn: Conn, flow: str, step_slug: str) -> Task:
    """Claim the only visible task of one step (leaving other steps' messages alone)."""
    ids = [
        r[0]
        for r in conn.execute(
            f"select msg_id from pgmq.q_{flow} where message->>'step_slug' = %s"
            " and vt <= clock_timestamp() order by msg_id".encode(),
            (step_slug,),
        )
    ]
    tasks = start_tasks(conn, flow, ids)
    assert len(tasks) == 1, tasks
    return tasks[0]


def force_skip(conn: Conn, run_id: uuid.UUID, step_slug: str, reason: str) -> int:
    row = conn.execute(
        "select pgflow._cascade_force_skip_steps(%s, %s, %s)", (run_id, step_slug, reason)
    ).fetchone()
    assert row is not None
    return int(row[0])


# -- when_exhausted = 'fail' (the default) ------------------------------------------------------


def test_exhausted_task_fails_step_and_run_by_default(conn: Conn) -> None:
    create_flow(conn, "f", max_attempts=1)
    step(conn, "f", "a")
    step(conn, "f", "b", ["a"])
    run_id = start_flow(conn, "f", {})
    fail(conn, one(conn, "f", "a"), "boom")
    assert run_row(conn, run_id)["status"] == "failed"
    assert statuses(conn, run_id) == {"a": "failed", "b": "created"}
    assert event_names(conn, run_id)[-2:] == ["step:a:failed", "run:failed"]
    assert_run_consistent(conn, run_id)


# -- when_exhausted = 'skip' --------------------------------------------------------------------


def test_exhausted_skip_skips_the_step_and_the_run_goes_on(conn: Conn) -> None:
    create_flow(conn, "f", base_delay=0)
    step(conn, "f", "enrich", max_attempts=2, when_exhausted="skip")
    step(conn, "f", "base")
    step(conn, "f", "report", ["enrich", "base"])
    run_id = start_flow(conn, "f", {})
    complete(conn, one(conn, "f", "base"), "b")

    first = fail(conn, one(conn, "f", "enrich"), "try 1")
    assert first[0]["status"] == "queued", "attempts left: a plain retry"
    assert statuses(conn, run_id)["enrich"] == "started"
    last = fail(conn, one(conn, "f", "enrich"), "try 2")
    assert (last[0]["status"], last[0]["error_message"]) == ("failed", "try 2")

    state = step_states(conn, run_id)["enrich"]
    assert (state["status"], state["skip_reason"], state["error_message"]) == (
        "skipped",
        "handler_failed",
        "try 2",
    )
    assert state["remaining_tasks"] is None
    assert state["failed_at"] is None
    assert run_row(conn, run_id)["status"] == "started"
    payload = event(conn, run_id, "step:enrich:skipped")
    assert payload_keys(payload) == HANDLER_SKIP_KEYS
    assert (payload["skip_reason"], payload["error_message"]) == ("handler_failed", "try 2")
    assert payload["skipped_at"] == state["skipped_at"]
    assert_run_consistent(conn, run_id)

    report = one(conn, "f", "report")
    assert report.input == {"base": "b"}, "the skipped dependency is absent"
    complete(conn, report, "r")
    run = run_row(conn, run_id)
    assert (run["status"], run["output"]) == ("completed", {"report": "r"})
    assert [n for n in event_names(conn, run_id) if n.startswith("step:enrich")] == [
        "step:enrich:started",
        "step:enrich:skipped",
    ]
    assert_run_consistent(conn, run_id)


def test_exhausted_skip_of_a_leaf_leaves_it_out_of_the_output(conn: Conn) -> None:
    create_flow(conn, "f", max_attempts=1)
    step(conn, "f", "root")
    step(conn, "f", "ok", ["root"])
    step(conn, "f", "flaky", ["root"], when_exhausted="skip")
    run_id = start_flow(conn, "f", {})
    complete(conn, one(conn, "f", "root"), 1)
    for task in read_and_start(conn, "f"):
        if task.step_slug == "flaky":
            fail(conn, task, "nope")
        else:
            complete(conn, task, "fine")
    run = run_row(conn, run_id)
    assert (run["status"], run["output"]) == ("completed", {"ok": "fine"})
    assert event_names(conn, run_id)[-1] == "run:completed"
    assert_run_consistent(conn, run_id)


def test_exhausted_skip_on_a_map_ends_its_other_tasks(conn: Conn) -> None:
    create_flow(conn, "f", max_attempts=1)
    step(conn, "f", "each", step_type="map", when_exhausted="skip")
    step(conn, "f", "again", ["each"], step_type="map")
    step(conn, "f", "total", ["again"])
    run_id = start_flow(conn, "f", [1, 2, 3, 4])
    started = read_and_start(conn, "f", qty=2)  # tasks 0 and 1 started, 2 and 3 queued
    complete(conn, started[0], "done")

    fail(conn, started[1], "bad element")

    tasks = {t["task_index"]: t for t in task_rows(conn, run_id, "each")}
    assert {i: t["status"] for i, t in tasks.items()} == {
        0: "completed",
        1: "failed",
        2: "skipped",
        3: "skipped",
    }
    assert {tasks[i]["message_id"] for i in (1, 2, 3)} <= archived_ids(conn, "f")
    assert [m.message["step_slug"] for m in queue_rows(conn, "f")] == ["total"]
    states = step_states(conn, run_id)
    assert states["each"]["status"] == "skipped"
    assert states["each"]["output"] is None
    assert (states["again"]["status"], states["again"]["output"]) == ("completed", [])
    assert_run_consistent(conn, run_id)
    total = one(conn, "f", "total")
    assert total.input == {"again": []}
    complete(conn, total, 0)
    assert run_row(conn, run_id)["output"] == {"total": 0}
    assert_run_consistent(conn, run_id)


def test_late_results_for_a_skipped_step_change_nothing(conn: Conn) -> None:
    create_flow(conn, "f", max_attempts=1)
    step(conn, "f", "each", step_type="map", when_exhausted="skip")
    step(conn, "f", "other")
    run_id = start_flow(conn, "f", [1, 2, 3])
    tasks = [t for t in read_and_start(conn, "f", qty=10) if t.step_slug == "each"]
    fail(conn, tasks[0], "bad")
    before = (step_states(conn, run_id), run_row(conn, run_id), event_names(conn, run_id))

    assert complete(conn, tasks[1], "late")[0]["status"] == "skipped"
    assert fail(conn, tasks[2], "late failure")[0]["status"] == "skipped"

    assert (step_states(conn, run_id), run_row(conn, run_id), event_names(conn, run_id)) == before
    assert run_row(conn, run_id)["remaining_steps"] == 1, "skipped once, counted once"
    assert_run_consistent(conn, run_id)


def test_skipped_tasks_are_never_handed_out_again(conn: Conn) -> None:
    create_flow(conn, "f", max_attempts=1)
    step(conn, "f", "each", step_type="map", when_exhausted="skip")
    run_id = start_flow(conn, "f", [1, 2])
    first, second = read_and_start(conn, "f", qty=2)
    fail(conn, first, "bad")
    # Even if a stale message id reaches start_tasks, a skipped task is not claimed.
    assert conn.execute(
        "select count(*) from pgflow.start_tasks('f', %s::bigint[], %s)",
        ([second.msg_id], uuid.UUID(int=1)),
    ).fetchone() == (0,)
    assert conn.execute("select pgflow.requeue_stalled_tasks()").fetchone() == (0,)
    assert {t["status"] for t in task_rows(conn, run_id)} == {"failed", "skipped"}


def test_exhausted_skip_resolves_dependent_conditions(conn: Conn) -> None:
    create_flow(conn, "f", max_attempts=1)
    step(conn, "f", "parent", when_exhausted="skip")
    step(conn, "f", "needs_parent", ["parent"], if_={"parent": {}})
    step(conn, "f", "fallback", ["parent"], if_not={"parent": {}})
    run_id = start_flow(conn, "f", {})
    fail(conn, one(conn, "f", "parent"), "down")
    assert statuses(conn, run_id) == {
        "parent": "skipped",
        "needs_parent": "skipped",
        "fallback": "started",
    }
    assert skip_reasons(conn, run_id) == {
        "parent": "handler_failed",
        "needs_parent": "condition_unmet",
    }
    assert event_names(conn, run_id)[-3:] == [
        "step:parent:skipped",
        "step:needs_parent:skipped",
        "step:fallback:started",
    ]
    assert_run_consistent(conn, run_id)


def test_exhausted_skip_then_failing_condition_fails_the_run(conn: Conn) -> None:
    create_flow(conn, "f", max_attempts=1)
    step(conn, "f", "parent", when_exhausted="skip")
    step(conn, "f", "other", step_type="map")
    step(conn, "f", "child", ["parent"], if_={"parent": {"ok": True}}, when_unmet="fail")
    run_id = start_flow(conn, "f", [1, 2])
    parent = one(conn, "f", "parent")
    fail(conn, parent, "down")
    assert run_row(conn, run_id)["status"] == "failed"
    assert statuses(conn, run_id) == {"parent": "skipped", "other": "started", "child": "failed"}
    assert {t["status"] for t in task_rows(conn, run_id, "other")} == {"cancelled"}
    assert parent.msg_id in archived_ids(conn, "f")
    assert event_names(conn, run_id)[-3:] == [
        "step:parent:skipped",
        "step:child:failed",
        "run:failed",
    ]
    assert_run_consistent(conn, run_id)


# -- when_exhausted = 'skip-cascade' ------------------------------------------------------------


def test_exhausted_skip_cascade_skips_everything_downstream(conn: Conn) -> None:
    create_flow(conn, "f", max_attempts=1)
    step(conn, "f", "fetch", when_exhausted="skip-cascade")
    step(conn, "f", "side")
    step(conn, "f", "parse", ["fetch"])
    step(conn, "f", "store", ["parse", "side"])
    step(conn, "f", "log", ["side"])
    run_id = start_flow(conn, "f", {})

    fail(conn, one(conn, "f", "fetch"), "404")

    assert statuses(conn, run_id) == {
        "fetch": "skipped",
        "side": "started",
        "parse": "skipped",
        "store": "skipped",
        "log": "created",
    }
    assert skip_reasons(conn, run_id) == {
        "fetch": "handler_failed",
        "parse": "dependency_skipped",
        "store": "dependency_skipped",
    }
    assert step_states(conn, run_id)["parse"]["error_message"] is None
    skipped = [(n, p) for n, p in events(conn, run_id) if n.endswith(":skipped")]
    assert [n for n, _ in skipped] == [
        "step:fetch:skipped",
        "step:parse:skipped",
        "step:store:skipped",
    ]
    assert payload_keys(skipped[0][1]) == HANDLER_SKIP_KEYS
    assert skipped[0][1]["error_message"] == "404"
    for _, payload in skipped[1:]:
        assert payload_keys(payload) == SKIP_KEYS
        assert payload["skip_reason"] == "dependency_skipped"
    assert run_row(conn, run_id)["remaining_steps"] == 2
    assert_run_consistent(conn, run_id)

    complete(conn, one(conn, "f", "side"), "s")
    complete(conn, one(conn, "f", "log"), "l")
    run = run_row(conn, run_id)
    assert (run["status"], run["output"]) == ("completed", {"log": "l"})
    assert_run_consistent(conn, run_id)


def test_exhausted_skip_cascade_from_a_map_over_a_map_chain(conn: Conn) -> None:
    """map -> map -> single: one element failing skips the whole chain, and the run ends."""
    create_flow(conn, "f", max_attempts=2, base_delay=0)
    step(conn, "f", "each", step_type="map", when_exhausted="skip-cascade")
    step(conn, "f", "again", ["each"], step_type="map")
    step(conn, "f", "total", ["again"])
    run_id = start_flow(conn, "f", [1, 2, 3])
    tasks = read_and_start(conn, "f", qty=3)
    complete(conn, tasks[0], 10)
    fail(conn, tasks[1], "first try")
    assert statuses(conn, run_id)["each"] == "started", "a retry is left"
    (retry,) = read_and_start(conn, "f")
    fail(conn, retry, "second try")

    assert statuses(conn, run_id) == {"each": "skipped", "again": "skipped", "total": "skipped"}
    assert [t["status"] for t in task_rows(conn, run_id)] == ["completed", "failed", "skipped"]
    assert queue_rows(conn, "f") == []
    run = run_row(conn, run_id)
    assert (run["status"], run["output"], run["remaining_steps"]) == ("completed", None, 0)
    assert event_names(conn, run_id)[-4:] == [
        "step:each:skipped",
        "step:again:skipped",
        "step:total:skipped",
        "run:completed",
    ]
    assert_run_consistent(conn, run_id)
    # The element still running reports late: nothing changes.
    complete(conn, tasks[2], 30)
    assert run_row(conn, run_id)["status"] == "completed"


def test_type_violation_is_not_subject_to_when_exhausted(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "items", when_exhausted="skip")
    step(conn, "f", "each", ["items"], step_type="map")
    run_id = start_flow(conn, "f", {})
    complete(conn, one(conn, "f", "items"), {"not": "an array"})
    assert run_row(conn, run_id)["status"] == "failed"
    state = step_states(conn, run_id)["items"]
    assert state["status"] == "failed"
    assert state["error_message"].startswith("[TYPE_VIOLATION]")
    assert not any(n.endswith(":skipped") for n in event_names(conn, run_id))
    assert_run_consistent(conn, run_id)


def test_type_violation_check_ignores_a_skipped_map_child(conn: Conn) -> None:
    """A map child that will never run does not turn a non-array output into a violation."""
    create_flow(conn, "f")
    step(conn, "f", "items")
    step(conn, "f", "each", ["items"], step_type="map")
    step(conn, "f", "other", ["items"])
    run_id = start_flow(conn, "f", {})
    items = one(conn, "f", "items")
    assert force_skip(conn, run_id, "each", "condition_unmet") == 1
    complete(conn, items, {"not": "an array"})
    assert statuses(conn, run_id) == {"items": "completed", "each": "skipped", "other": "started"}


# -- _cascade_force_skip_steps ------------------------------------------------------------------


def test_force_skip_of_a_started_step_ends_its_tasks(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "each", step_type="map")
    step(conn, "f", "after", ["each"])
    step(conn, "f", "free")
    run_id = start_flow(conn, "f", [1, 2, 3])
    claimed = [t for t in read_and_start(conn, "f", qty=2) if t.step_slug == "each"]

    assert force_skip(conn, run_id, "each", "handler_failed") == 2

    assert skip_reasons(conn, run_id) == {"each": "handler_failed", "after": "dependency_skipped"}
    assert {t["status"] for t in task_rows(conn, run_id, "each")} == {"skipped"}
    assert {m.message["step_slug"] for m in queue_rows(conn, "f")} == {"free"}
    for name in ("step:each:skipped", "step:after:skipped"):
        assert payload_keys(event(conn, run_id, name)) == SKIP_KEYS
    assert run_row(conn, run_id)["remaining_steps"] == 1
    assert_run_consistent(conn, run_id)
    assert force_skip(conn, run_id, "each", "handler_failed") == 0, "idempotent"
    assert complete(conn, claimed[0], "late")[0]["status"] == "skipped"
    drain(conn, "f")
    assert run_row(conn, run_id)["status"] == "completed"
    assert_run_consistent(conn, run_id)


def test_force_skip_leaves_terminal_steps_and_finished_runs_alone(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "a")
    step(conn, "f", "b", ["a"])
    run_id = start_flow(conn, "f", {})
    complete(conn, one(conn, "f", "a"), 1)
    assert force_skip(conn, run_id, "a", "condition_unmet") == 1, "only b was still open"
    assert statuses(conn, run_id) == {"a": "completed", "b": "skipped"}
    assert run_row(conn, run_id)["status"] == "completed"
    assert force_skip(conn, run_id, "a", "condition_unmet") == 0


@pytest.mark.parametrize(
    ("step_slug", "reason", "sqlstate", "needle"),
    [
        ("a", "bored", "22023", "'bored'"),
        ("a", None, "22023", "NULL"),
        ("zzz", "condition_unmet", "P0002", "has no step 'zzz'"),
    ],
)
def test_force_skip_rejects_bad_arguments(
    conn: Conn, step_slug: str, reason: str | None, sqlstate: str, needle: str
) -> None:
    create_flow(conn, "f")
    step(conn, "f", "a")
    run_id = start_flow(conn, "f", {})
    with raises_sqlstate(sqlstate, needle):
        conn.execute(
            "select pgflow._cascade_force_skip_steps(%s, %s, %s)", (run_id, step_slug, reason)
        )


def test_force_skip_of_an_unknown_run(conn: Conn) -> None:
    missing = uuid.uuid4()
    with raises_sqlstate("P0002", str(missing)):
        force_skip(conn, missing, "a", "condition_unmet")


# -- with a real worker -------------------------------------------------------------------------


async def test_a_worker_runs_a_flow_with_conditions_and_skips(db_url: str) -> None:
    """Compiled from the DSL, run by FlowWorker: handlers see skipped dependencies as absent."""
    flow = Flow("worker_skips", max_attempts=2, base_delay=1)
    seen: dict[str, Any] = {}

    @flow.step(if_={"plan": "pro"})
    def premium(input: Any) -> str:
        return "premium"

    @flow.step(when_exhausted="skip", max_attempts=1)
    def flaky(input: Any) -> str:
        raise RuntimeError("service down")

    @flow.array
    def items(input: Any) -> list[int]:
        return list(input["items"])

    @flow.map(array=items, if_={"items": [2]})
    def double(item: int) -> int:
        return item * 2

    @flow.step(depends_on=[premium, flaky, double])
    def report(input: dict[str, Any]) -> dict[str, Any]:
        seen["report"] = input
        return {"keys": sorted(input), "premium": input.get("premium", "basic")}

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await ensure_flow(conn, flow)
    async with FlowWorker(flow, db_url, max_poll_seconds=1, poll_interval_ms=50):
        run_id = await start_run(db_url, flow.slug, {"plan": "free", "items": [1, 2]})
        run = await wait_run(db_url, run_id)
    states = await steps_of(db_url, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"report": {"keys": ["double"], "premium": "basic"}}
    assert seen["report"] == {"double": [2, 4]}
    assert (states["premium"]["status"], states["premium"]["skip_reason"]) == (
        "skipped",
        "condition_unmet",
    )
    assert (states["flaky"]["skip_reason"], states["flaky"]["error_message"]) == (
        "handler_failed",
        "RuntimeError: service down",
    )

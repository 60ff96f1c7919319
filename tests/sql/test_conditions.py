"""Step conditions: `required_input_pattern` / `forbidden_input_pattern` and `when_unmet`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from tests.sql.helpers import (
    Conn,
    add_step,
    complete,
    drain,
    event_names,
    events,
    fail,
    queue_messages,
    raises_sqlstate,
    read_and_start,
    run_row,
    start_flow,
    step_states,
    task_rows,
)

SKIP_KEYS = {
    "event_type",
    "run_id",
    "flow_slug",
    "step_slug",
    "status",
    "skip_reason",
    "skipped_at",
}


# -- helpers shared with the other condition/skip test modules ---------------------------------


def create_flow(conn: Conn, slug: str, **options: Any) -> None:
    extra = "".join(f", {k} => %s" for k in options)
    conn.execute(f"select pgflow.create_flow(%s{extra})".encode(), (slug, *options.values()))


def step(
    conn: Conn,
    flow: str,
    slug: str,
    deps: Sequence[str] = (),
    *,
    if_: Any = None,
    if_not: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """pgflow.add_step with patterns given as Python values."""
    if if_ is not None:
        options["required_input_pattern"] = Jsonb(if_)
    if if_not is not None:
        options["forbidden_input_pattern"] = Jsonb(if_not)
    return add_step(conn, flow, slug, deps, **options)  # type: ignore[no-any-return]


def statuses(conn: Conn, run_id: uuid.UUID) -> dict[str, str]:
    return {slug: s["status"] for slug, s in step_states(conn, run_id).items()}


def skip_reasons(conn: Conn, run_id: uuid.UUID) -> dict[str, str]:
    return {
        slug: s["skip_reason"]
        for slug, s in step_states(conn, run_id).items()
        if s["status"] == "skipped"
    }


def queue_message_ids(conn: Conn, flow: str, run_id: uuid.UUID) -> set[int]:
    rows = conn.execute(
        f"select msg_id from pgmq.q_{flow.lower()} where message->>'run_id' = %s".encode(),
        (str(run_id),),
    ).fetchall()
    return {r[0] for r in rows}


def assert_run_consistent(conn: Conn, run_id: uuid.UUID) -> None:
    """The run's counters, task statuses and queue messages agree with its step states.

    remaining_steps counts the steps still created or started; tasks of a finished step are
    finished; exactly the queued and started tasks have a message in the queue (no orphan
    message, no task without one); a finished run has neither.
    """
    run = run_row(conn, run_id)
    states = step_states(conn, run_id)
    open_steps = sorted(s for s, st in states.items() if st["status"] in ("created", "started"))
    if run["status"] == "started":
        assert run["remaining_steps"] == len(open_steps), (run, open_steps)
    elif run["status"] == "completed":
        assert run["remaining_steps"] == 0
        assert open_steps == []
        assert {st["status"] for st in states.values()} <= {"completed", "skipped"}
    tasks = task_rows(conn, run_id)
    for task in tasks:
        if states[task["step_slug"]]["status"] != "started":
            assert task["status"] not in ("queued", "started"), task
    active = {t["message_id"] for t in tasks if t["status"] in ("queued", "started")}
    if run["status"] != "started":
        assert active == set()
    assert queue_message_ids(conn, run["flow_slug"], run_id) == active


def payload_keys(payload: dict[str, Any]) -> set[str]:
    """A broadcast payload's keys, without the ``id`` realtime.send adds."""
    return set(payload) - {"id"}


def event(conn: Conn, run_id: uuid.UUID, name: str) -> dict[str, Any]:
    (payload,) = [p for n, p in events(conn, run_id) if n == name]
    return payload


# -- root steps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "runs"),
    [
        ({"if_": {"plan": "pro"}}, True),
        ({"if_": {"plan": "free"}}, False),
        ({"if_not": {"plan": "free"}}, True),
        ({"if_not": {"plan": "pro"}}, False),
        ({"if_": {"plan": "pro"}, "if_not": {"flags": ["gamma"]}}, True),
        ({"if_": {"plan": "pro"}, "if_not": {"flags": ["x"]}}, False),
        ({"if_": {"plan": "free"}, "if_not": {"flags": ["gamma"]}}, False),
        ({"if_": {"user": {"age": 30}}}, True),
        ({"if_": {"user": {"age": 31}}}, False),
        ({"if_": {}}, True),
    ],
    ids=[
        "if-met",
        "if-unmet",
        "ifnot-met",
        "ifnot-unmet",
        "both-met",
        "forbidden-present",
        "required-missing",
        "nested-met",
        "nested-unmet",
        "empty-pattern",
    ],
)
def test_root_condition_against_the_flow_input(
    conn: Conn, options: dict[str, Any], runs: bool
) -> None:
    create_flow(conn, "f")
    step(conn, "f", "gate", **options)
    run_id = start_flow(
        conn, "f", {"plan": "pro", "flags": ["beta", "x"], "user": {"age": 30, "name": "Ada"}}
    )
    assert statuses(conn, run_id) == {"gate": "started" if runs else "skipped"}
    assert_run_consistent(conn, run_id)
    if runs:
        (task,) = read_and_start(conn, "f")
        complete(conn, task, "done")
        assert run_row(conn, run_id)["output"] == {"gate": "done"}
    else:
        assert skip_reasons(conn, run_id) == {"gate": "condition_unmet"}
        assert task_rows(conn, run_id) == []
        assert run_row(conn, run_id)["output"] is None
    assert run_row(conn, run_id)["status"] == "completed"
    assert_run_consistent(conn, run_id)


def test_skipped_root_step_lets_its_dependent_run_without_it(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "premium", if_={"plan": "pro"})
    step(conn, "f", "basic")
    step(conn, "f", "report", ["premium", "basic"])
    run_id = start_flow(conn, "f", {"plan": "free"})

    assert statuses(conn, run_id) == {"premium": "skipped", "basic": "started", "report": "created"}
    assert step_states(conn, run_id)["report"]["remaining_deps"] == 1
    assert_run_consistent(conn, run_id)
    (basic,) = read_and_start(conn, "f")
    complete(conn, basic, {"n": 1})
    (report,) = read_and_start(conn, "f")
    assert report.input == {"basic": {"n": 1}}, "a skipped dependency is absent from the input"
    complete(conn, report, "ok")

    run = run_row(conn, run_id)
    assert (run["status"], run["output"]) == ("completed", {"report": "ok"})
    assert_run_consistent(conn, run_id)


def test_skip_event_and_order(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "a", if_={"go": True})
    step(conn, "f", "b")
    run_id = start_flow(conn, "f", {"go": False})

    assert event_names(conn, run_id) == ["run:started", "step:a:skipped", "step:b:started"]
    payload = event(conn, run_id, "step:a:skipped")
    assert payload_keys(payload) == SKIP_KEYS
    state = step_states(conn, run_id)["a"]
    assert payload["event_type"] == "step:skipped"
    assert payload["run_id"] == str(run_id)
    assert (payload["flow_slug"], payload["step_slug"], payload["status"]) == ("f", "a", "skipped")
    assert payload["skip_reason"] == "condition_unmet"
    assert payload["skipped_at"] == state["skipped_at"]
    assert state["remaining_tasks"] is None
    assert state["error_message"] is None


def test_snapshot_rows_carry_skip_reason_and_skipped_at(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "a", if_={"go": True})
    step(conn, "f", "b")
    run_id = start_flow(conn, "f", {})
    row = conn.execute("select pgflow.get_run_with_states(%s)", (run_id,)).fetchone()
    assert row is not None
    a, b = row[0]["steps"]
    assert (a["step_slug"], a["status"], a["skip_reason"]) == ("a", "skipped", "condition_unmet")
    assert a["skipped_at"] is not None
    assert (b["status"], b["skip_reason"], b["skipped_at"]) == ("started", None, None)


# -- dependent steps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "runs"),
    [
        ({"if_": {"check": {"ok": True}}}, True),
        ({"if_": {"check": {"ok": False}}}, False),
        ({"if_not": {"check": {"ok": False}}}, True),
        ({"if_not": {"check": {"ok": True}}}, False),
        ({"if_": {"check": {"ok": True}, "other": 5}}, True),
        ({"if_": {"other": 6}}, False),
    ],
    ids=["if-met", "if-unmet", "ifnot-met", "ifnot-unmet", "two-deps-met", "second-dep-unmet"],
)
def test_dependent_condition_against_dependency_outputs(
    conn: Conn, options: dict[str, Any], runs: bool
) -> None:
    create_flow(conn, "f")
    step(conn, "f", "check")
    step(conn, "f", "other")
    step(conn, "f", "act", ["check", "other"], **options)
    step(conn, "f", "after", ["act"])
    run_id = start_flow(conn, "f", {"check": {"ok": False}})  # the flow input is not looked at

    outputs = {"check": {"ok": True, "score": 3}, "other": 5}
    for task in read_and_start(conn, "f"):
        complete(conn, task, outputs[task.step_slug])
    if runs:
        assert statuses(conn, run_id)["act"] == "started"
        (act,) = read_and_start(conn, "f")
        assert act.input == outputs
        complete(conn, act, "acted")
        (after,) = read_and_start(conn, "f")
        assert after.input == {"act": "acted"}
    else:
        assert statuses(conn, run_id)["act"] == "skipped"
        assert skip_reasons(conn, run_id) == {"act": "condition_unmet"}
        (after,) = read_and_start(conn, "f")
        assert after.input == {}, "the skipped step is absent from its dependent's input"
    assert_run_consistent(conn, run_id)
    complete(conn, after, "end")
    assert run_row(conn, run_id)["output"] == {"after": "end"}
    assert_run_consistent(conn, run_id)


def test_dependent_condition_is_checked_when_the_last_dependency_completes(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "a")
    step(conn, "f", "b")
    step(conn, "f", "c", ["a", "b"], if_={"a": 1, "b": 2})
    run_id = start_flow(conn, "f", {})
    tasks = {t.step_slug: t for t in read_and_start(conn, "f")}
    complete(conn, tasks["a"], 1)
    assert statuses(conn, run_id)["c"] == "created", "not evaluated while b is pending"
    complete(conn, tasks["b"], 2)
    assert statuses(conn, run_id)["c"] == "started"
    assert_run_consistent(conn, run_id)


def test_condition_sees_only_completed_dependencies(conn: Conn) -> None:
    """A dependency that was skipped is absent from what the condition is checked against."""
    create_flow(conn, "f")
    step(conn, "f", "maybe", if_={"on": True})
    step(conn, "f", "always")
    step(conn, "f", "needs_maybe", ["maybe", "always"], if_={"always": "x"}, if_not={"maybe": {}})
    step(conn, "f", "wants_maybe", ["maybe", "always"], if_={"maybe": {}})
    run_id = start_flow(conn, "f", {"on": False})
    (always,) = read_and_start(conn, "f")
    complete(conn, always, "x")
    assert statuses(conn, run_id) == {
        "maybe": "skipped",
        "always": "completed",
        "needs_maybe": "started",
        "wants_maybe": "skipped",
    }
    (task,) = read_and_start(conn, "f")
    assert (task.step_slug, task.input) == ("needs_maybe", {"always": "x"})
    assert_run_consistent(conn, run_id)


def test_map_step_condition_is_checked_against_its_dependency_object(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "items")
    step(conn, "f", "each", ["items"], step_type="map", if_={"items": [2]})
    step(conn, "f", "other_each", ["items"], step_type="map", if_={"items": [9]})
    run_id = start_flow(conn, "f", {})
    (items,) = read_and_start(conn, "f")
    complete(conn, items, [1, 2, 3])
    assert statuses(conn, run_id) == {
        "items": "completed",
        "each": "started",
        "other_each": "skipped",
    }
    tasks = read_and_start(conn, "f")
    assert sorted(t.input for t in tasks) == [1, 2, 3]
    for task in tasks:
        complete(conn, task, task.input * 10)
    assert run_row(conn, run_id)["output"] == {"each": [10, 20, 30]}
    assert_run_consistent(conn, run_id)


# -- when_unmet = 'fail' ------------------------------------------------------------------------


def test_unmet_root_condition_with_fail_fails_the_run_at_start(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "other")
    step(conn, "f", "gate", if_={"ok": True}, when_unmet="fail")
    step(conn, "f", "after", ["gate"])
    run_id = start_flow(conn, "f", {"ok": False})

    run = run_row(conn, run_id)
    assert run["status"] == "failed"
    assert run["failed_at"] is not None
    state = step_states(conn, run_id)["gate"]
    assert (state["status"], state["error_message"]) == ("failed", "Condition not met")
    assert statuses(conn, run_id) == {"other": "created", "gate": "failed", "after": "created"}
    assert event_names(conn, run_id) == ["run:started", "step:gate:failed", "run:failed"]
    step_failed = event(conn, run_id, "step:gate:failed")
    assert payload_keys(step_failed) == {
        "event_type",
        "run_id",
        "step_slug",
        "status",
        "error_message",
        "failed_at",
    }
    assert step_failed["error_message"] == "Condition not met"
    run_failed = event(conn, run_id, "run:failed")
    assert payload_keys(run_failed) == {
        "event_type",
        "run_id",
        "flow_slug",
        "status",
        "error_message",
        "failed_at",
    }
    assert (run_failed["flow_slug"], run_failed["error_message"]) == ("f", "Condition not met")
    assert task_rows(conn, run_id) == [], "no task was created"
    assert_run_consistent(conn, run_id)


def test_unmet_dependent_condition_with_fail_ends_the_other_tasks(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "check")
    step(conn, "f", "slow", step_type="map")
    step(conn, "f", "act", ["check"], if_={"check": "yes"}, when_unmet="fail")
    run_id = start_flow(conn, "f", [1, 2, 3])
    tasks = read_and_start(conn, "f", qty=2)
    check = next(t for t in tasks if t.step_slug == "check")

    complete(conn, check, "no")

    assert run_row(conn, run_id)["status"] == "failed"
    assert statuses(conn, run_id) == {"check": "completed", "slow": "started", "act": "failed"}
    slow = task_rows(conn, run_id, "slow")
    assert {t["status"] for t in slow} == {"cancelled"}, "queued and started tasks are ended"
    assert all(t["error_message"] is None and t["failed_at"] is None for t in slow)
    assert queue_messages(conn, "f") == [], "their messages are archived"
    assert event_names(conn, run_id)[-3:] == [
        "step:check:completed",
        "step:act:failed",
        "run:failed",
    ]
    assert_run_consistent(conn, run_id)
    # A late result from a worker that held a map task is ignored.
    late = next(t for t in tasks if t.step_slug == "slow")
    assert complete(conn, late, 1)[0]["status"] == "cancelled"
    assert run_row(conn, run_id)["status"] == "failed"


def test_fail_mode_is_looked_for_before_skips(conn: Conn) -> None:
    """Like pgflow, an unmet 'fail' condition fails the run before any sibling is skipped."""
    create_flow(conn, "f")
    step(conn, "f", "skippable", if_={"x": 1})
    step(conn, "f", "strict", if_={"x": 1}, when_unmet="fail")
    run_id = start_flow(conn, "f", {"x": 2})
    assert statuses(conn, run_id) == {"skippable": "created", "strict": "failed"}
    assert event_names(conn, run_id) == ["run:started", "step:strict:failed", "run:failed"]


def test_met_fail_condition_runs_normally(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "gate", if_={"ok": True}, when_unmet="fail")
    run_id = start_flow(conn, "f", {"ok": True})
    drain(conn, "f", lambda t: "fine")
    assert run_row(conn, run_id)["output"] == {"gate": "fine"}


# -- when_unmet = 'skip' chains -----------------------------------------------------------------


def test_skips_propagate_until_nothing_changes(conn: Conn) -> None:
    """A skip makes dependents ready; their conditions see the skipped step as absent."""
    create_flow(conn, "f")
    step(conn, "f", "a", if_={"go": True})
    step(conn, "f", "b", ["a"], if_={"a": {}})
    step(conn, "f", "c", ["b"], if_={"b": {}})
    step(conn, "f", "d", ["c"])
    run_id = start_flow(conn, "f", {})
    assert statuses(conn, run_id) == {
        "a": "skipped",
        "b": "skipped",
        "c": "skipped",
        "d": "started",
    }
    assert skip_reasons(conn, run_id) == dict.fromkeys("abc", "condition_unmet")
    assert event_names(conn, run_id) == [
        "run:started",
        "step:a:skipped",
        "step:b:skipped",
        "step:c:skipped",
        "step:d:started",
    ]
    (d,) = read_and_start(conn, "f")
    assert d.input == {}
    complete(conn, d, 4)
    assert run_row(conn, run_id)["output"] == {"d": 4}
    assert_run_consistent(conn, run_id)


def test_a_run_of_only_skipped_steps_completes_with_no_output(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "a", if_={"go": True})
    step(conn, "f", "b", ["a"], if_={"a": 1})
    run_id = start_flow(conn, "f", {})
    run = run_row(conn, run_id)
    assert (run["status"], run["output"], run["remaining_steps"]) == ("completed", None, 0)
    assert event_names(conn, run_id) == [
        "run:started",
        "step:a:skipped",
        "step:b:skipped",
        "run:completed",
    ]
    assert_run_consistent(conn, run_id)


def test_skipped_leaf_is_absent_from_the_run_output(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "root")
    step(conn, "f", "leaf_run", ["root"])
    step(conn, "f", "leaf_skip", ["root"], if_={"root": "never"})
    run_id = start_flow(conn, "f", {})
    drain(conn, "f", lambda t: t.step_slug)
    run = run_row(conn, run_id)
    assert run["output"] == {"leaf_run": "leaf_run"}
    assert statuses(conn, run_id)["leaf_skip"] == "skipped"


def test_skipped_only_dependency_of_a_map_chain_leaves_it_empty(conn: Conn) -> None:
    """A map whose only dependency was skipped has no tasks: map -> map -> single all run
    on empty arrays."""
    create_flow(conn, "f")
    step(conn, "f", "items", if_={"go": True})
    step(conn, "f", "double", ["items"], step_type="map")
    step(conn, "f", "again", ["double"], step_type="map")
    step(conn, "f", "total", ["again"])
    run_id = start_flow(conn, "f", {})
    assert statuses(conn, run_id) == {
        "items": "skipped",
        "double": "completed",
        "again": "completed",
        "total": "started",
    }
    states = step_states(conn, run_id)
    assert (states["double"]["initial_tasks"], states["double"]["output"]) == (0, [])
    (total,) = read_and_start(conn, "f")
    assert total.input == {"again": []}
    complete(conn, total, 0)
    assert run_row(conn, run_id)["output"] == {"total": 0}
    assert event_names(conn, run_id) == [
        "run:started",
        "step:items:skipped",
        "step:double:completed",
        "step:again:completed",
        "step:total:started",
        "step:total:completed",
        "run:completed",
    ]
    assert_run_consistent(conn, run_id)


def test_conditions_are_checked_for_steps_an_empty_map_makes_ready(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "each", step_type="map")
    step(conn, "f", "need_items", ["each"], if_={"each": [1]})
    step(conn, "f", "on_empty", ["each"], if_={"each": []}, if_not={"each": [1]})
    step(conn, "f", "strict", ["each"], if_={"each": [1]}, when_unmet="skip-cascade")
    step(conn, "f", "below_strict", ["strict"])
    run_id = start_flow(conn, "f", [])
    assert statuses(conn, run_id) == {
        "each": "completed",
        "need_items": "skipped",
        "on_empty": "started",
        "strict": "skipped",
        "below_strict": "skipped",
    }
    assert task_rows(conn, run_id, "need_items") == []
    assert skip_reasons(conn, run_id)["below_strict"] == "dependency_skipped"
    assert_run_consistent(conn, run_id)


def test_failing_condition_after_an_empty_map_stops_the_cascade(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "each", step_type="map")
    step(conn, "f", "gate", ["each"], if_={"each": [1]}, when_unmet="fail")
    step(conn, "f", "next_each", ["gate"], step_type="map")
    run_id = start_flow(conn, "f", [])
    assert run_row(conn, run_id)["status"] == "failed"
    assert statuses(conn, run_id) == {
        "each": "completed",
        "gate": "failed",
        "next_each": "created",
    }
    assert event_names(conn, run_id) == [
        "run:started",
        "step:each:completed",
        "step:gate:failed",
        "run:failed",
    ]


# -- when_unmet = 'skip-cascade' ----------------------------------------------------------------


def test_skip_cascade_skips_every_descendant_in_step_order(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "gate", if_={"go": True}, when_unmet="skip-cascade")
    step(conn, "f", "side")
    step(conn, "f", "left", ["gate"])
    step(conn, "f", "right", ["gate", "side"])
    step(conn, "f", "join", ["left", "right"])
    step(conn, "f", "free", ["side"])
    run_id = start_flow(conn, "f", {"go": False})

    assert statuses(conn, run_id) == {
        "gate": "skipped",
        "side": "started",
        "left": "skipped",
        "right": "skipped",
        "join": "skipped",
        "free": "created",
    }
    assert skip_reasons(conn, run_id) == {
        "gate": "condition_unmet",
        "left": "dependency_skipped",
        "right": "dependency_skipped",
        "join": "dependency_skipped",
    }
    assert event_names(conn, run_id) == [
        "run:started",
        "step:gate:skipped",
        "step:left:skipped",
        "step:right:skipped",
        "step:join:skipped",
        "step:side:started",
    ]
    for name, payload in events(conn, run_id):
        if name.endswith(":skipped"):
            assert payload_keys(payload) == SKIP_KEYS
    assert run_row(conn, run_id)["remaining_steps"] == 2
    assert_run_consistent(conn, run_id)

    (side,) = read_and_start(conn, "f")
    complete(conn, side, "s")
    assert statuses(conn, run_id)["right"] == "skipped", "a late dependency does not revive it"
    (free,) = read_and_start(conn, "f")
    assert free.input == {"side": "s"}
    complete(conn, free, "f")
    run = run_row(conn, run_id)
    assert (run["status"], run["output"]) == ("completed", {"free": "f"})
    assert_run_consistent(conn, run_id)


def test_skip_cascade_over_a_map_chain(conn: Conn) -> None:
    """gate -> items -> map -> map -> single: everything below the gate is skipped, no task."""
    create_flow(conn, "f")
    step(conn, "f", "gate", if_={"go": True}, when_unmet="skip-cascade")
    step(conn, "f", "items", ["gate"])
    step(conn, "f", "double", ["items"], step_type="map")
    step(conn, "f", "again", ["double"], step_type="map")
    step(conn, "f", "total", ["again"])
    run_id = start_flow(conn, "f", {"go": False})
    assert set(statuses(conn, run_id).values()) == {"skipped"}
    assert skip_reasons(conn, run_id) == {
        "gate": "condition_unmet",
        "items": "dependency_skipped",
        "double": "dependency_skipped",
        "again": "dependency_skipped",
        "total": "dependency_skipped",
    }
    assert task_rows(conn, run_id) == []
    run = run_row(conn, run_id)
    assert (run["status"], run["output"]) == ("completed", None)
    assert event_names(conn, run_id)[-1] == "run:completed"
    assert_run_consistent(conn, run_id)


def test_skip_cascade_on_a_dependent_map(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "items")
    step(conn, "f", "each", ["items"], step_type="map", if_={"items": [1]}, when_unmet="fail")
    step(
        conn,
        "f",
        "big",
        ["items"],
        step_type="map",
        if_={"items": [100]},
        when_unmet="skip-cascade",
    )
    step(conn, "f", "big_again", ["big"], step_type="map")
    step(conn, "f", "sum", ["big_again", "each"])
    run_id = start_flow(conn, "f", {})
    (items,) = read_and_start(conn, "f")
    complete(conn, items, [1, 2])
    assert statuses(conn, run_id) == {
        "items": "completed",
        "each": "started",
        "big": "skipped",
        "big_again": "skipped",
        "sum": "skipped",
    }
    assert run_row(conn, run_id)["remaining_steps"] == 1
    drain(conn, "f", lambda t: t.input)
    run = run_row(conn, run_id)
    # each completed but is no leaf, and the only leaf was skipped: no output at all
    assert (run["status"], run["output"]) == ("completed", None)
    assert step_states(conn, run_id)["each"]["output"] == [1, 2]
    assert_run_consistent(conn, run_id)


# -- conditions with retries --------------------------------------------------------------------


def test_conditions_with_retries(conn: Conn) -> None:
    """A step that needs two attempts produces the output its dependents' conditions read."""
    create_flow(conn, "f", max_attempts=3, base_delay=0)
    step(conn, "f", "fetch")
    step(conn, "f", "on_ok", ["fetch"], if_={"fetch": {"status": "ok"}})
    step(conn, "f", "on_error", ["fetch"], if_={"fetch": {"status": "error"}})
    step(conn, "f", "notify", ["on_ok", "on_error"], if_not={"on_error": {}})
    run_id = start_flow(conn, "f", {})

    (fetch,) = read_and_start(conn, "f")
    assert fail(conn, fetch, "timeout")[0]["status"] == "queued"
    assert event_names(conn, run_id) == ["run:started", "step:fetch:started"], "no retry event"
    assert_run_consistent(conn, run_id)
    (fetch,) = read_and_start(conn, "f")
    complete(conn, fetch, {"status": "ok", "body": "hi"})
    assert statuses(conn, run_id) == {
        "fetch": "completed",
        "on_ok": "started",
        "on_error": "skipped",
        "notify": "created",
    }
    (on_ok,) = read_and_start(conn, "f")
    assert fail(conn, on_ok, "flaky")[0]["status"] == "queued"
    (on_ok,) = read_and_start(conn, "f")
    complete(conn, on_ok, "handled")
    (notify,) = read_and_start(conn, "f")
    assert notify.input == {"on_ok": "handled"}
    complete(conn, notify, "sent")
    run = run_row(conn, run_id)
    assert (run["status"], run["output"]) == ("completed", {"notify": "sent"})
    assert event_names(conn, run_id) == [
        "run:started",
        "step:fetch:started",
        "step:fetch:completed",
        "step:on_error:skipped",
        "step:on_ok:started",
        "step:on_ok:completed",
        "step:notify:started",
        "step:notify:completed",
        "run:completed",
    ]
    assert_run_consistent(conn, run_id)


# -- cascade_resolve_conditions itself ----------------------------------------------------------


def test_cascade_resolve_conditions_reports_whether_the_run_goes_on(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "a", if_={"ok": True}, when_unmet="fail")
    failed = start_flow(conn, "f", {"ok": False})
    done = start_flow(conn, "f", {"ok": True})
    drain(conn, "f")

    def resolve(run_id: uuid.UUID) -> bool:
        row = conn.execute("select pgflow.cascade_resolve_conditions(%s)", (run_id,)).fetchone()
        assert row is not None
        return bool(row[0])

    assert resolve(failed) is False
    assert resolve(done) is True
    with raises_sqlstate("P0002", "does not exist"):
        resolve(uuid.uuid4())


# -- definitions --------------------------------------------------------------------------------


def test_add_step_stores_conditions_and_defaults(conn: Conn) -> None:
    create_flow(conn, "f")
    plain = step(conn, "f", "plain")
    assert (
        plain["required_input_pattern"],
        plain["forbidden_input_pattern"],
        plain["when_unmet"],
        plain["when_exhausted"],
    ) == (None, None, "skip", "fail")
    full = step(
        conn,
        "f",
        "full",
        ["plain"],
        if_={"plain": {"ok": True}},
        if_not={"plain": {"err": 1}},
        when_unmet="skip-cascade",
        when_exhausted="skip",
        max_attempts=2,
    )
    assert full["required_input_pattern"] == {"plain": {"ok": True}}
    assert full["forbidden_input_pattern"] == {"plain": {"err": 1}}
    assert (full["when_unmet"], full["when_exhausted"], full["opt_max_attempts"]) == (
        "skip-cascade",
        "skip",
        2,
    )


def test_add_step_keeps_every_call_style(conn: Conn) -> None:
    create_flow(conn, "f")
    conn.execute("select pgflow.add_step('f', 'a')")
    conn.execute("select pgflow.add_step('f', 'b', ARRAY['a'])")
    conn.execute("select pgflow.add_step('f', 'c', ARRAY['a'], 2, 3, 4, 5, 'single')")
    conn.execute("select pgflow.add_step('f', 'd', '{b,c}', timeout => 7)")
    conn.execute("select pgflow.add_step(flow_slug => 'f', step_slug => 'e', step_type => 'map')")
    conn.execute(
        "select pgflow.add_step('f', 'g', ARRAY['d'], max_attempts => 1, start_delay => 0,"
        """ required_input_pattern => '{"d":{"x":1}}', forbidden_input_pattern => '{"d":[]}',"""
        " when_unmet => 'fail', when_exhausted => 'skip-cascade', step_type => 'single')"
    )
    conn.execute(
        "select pgflow.add_step('f', 'h', ARRAY['a'], null, null, null, null, 'single',"
        """ '{"a":1}', null, 'skip', 'skip')"""
    )
    rows = conn.execute(
        "select step_slug, deps_count, opt_max_attempts, opt_base_delay, opt_timeout,"
        " opt_start_delay, step_type, required_input_pattern, forbidden_input_pattern,"
        " when_unmet, when_exhausted from pgflow.steps where flow_slug = 'f' order by step_index"
    ).fetchall()
    assert rows == [
        ("a", 0, None, None, None, None, "single", None, None, "skip", "fail"),
        ("b", 1, None, None, None, None, "single", None, None, "skip", "fail"),
        ("c", 1, 2, 3, 4, 5, "single", None, None, "skip", "fail"),
        ("d", 2, None, None, 7, None, "single", None, None, "skip", "fail"),
        ("e", 0, None, None, None, None, "map", None, None, "skip", "fail"),
        ("g", 1, 1, None, None, 0, "single", {"d": {"x": 1}}, {"d": []}, "fail", "skip-cascade"),
        ("h", 1, None, None, None, None, "single", {"a": 1}, None, "skip", "skip"),
    ]
    functions = conn.execute(
        "select count(*) from pg_proc where proname = 'add_step'"
        " and pronamespace = 'pgflow'::regnamespace"
    ).fetchone()
    assert functions == (1,), "the old signature is gone: no ambiguous overload"


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        ({"required_input_pattern": Jsonb([1])}, ["required_input_pattern", "JSON array"]),
        ({"forbidden_input_pattern": Jsonb("x")}, ["forbidden_input_pattern", "JSON string"]),
        ({"when_unmet": "ignore"}, ["when_unmet 'ignore'", "skip-cascade"]),
        ({"when_unmet": None}, ["when_unmet NULL"]),
        ({"when_exhausted": "retry"}, ["when_exhausted 'retry'"]),
        ({"when_exhausted": None}, ["when_exhausted NULL"]),
    ],
    ids=["required-array", "forbidden-string", "bad-unmet", "null-unmet", "bad-exhausted", "null"],
)
def test_add_step_rejects_bad_conditions(
    conn: Conn, options: dict[str, Any], needles: list[str]
) -> None:
    create_flow(conn, "flow_x")
    with raises_sqlstate("23514", "step 's'", "flow 'flow_x'", *needles):
        add_step(conn, "flow_x", "s", **options)
    assert conn.execute("select count(*) from pgflow.steps").fetchone() == (0,)


def test_table_constraints_guard_conditions(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "a")
    for assignment in (
        "required_input_pattern = '[1]'",
        "forbidden_input_pattern = '1'",
        "when_unmet = 'nope'",
        "when_exhausted = 'nope'",
    ):
        with raises_sqlstate("23514"):
            conn.execute(f"update pgflow.steps set {assignment} where step_slug = 'a'".encode())


def test_skip_columns_are_guarded(conn: Conn) -> None:
    create_flow(conn, "f")
    step(conn, "f", "a", if_={"x": 1})
    step(conn, "f", "b")
    run_id = start_flow(conn, "f", {})
    for assignment, slug in (
        ("skip_reason = null", "a"),
        ("skipped_at = null", "a"),
        ("completed_at = now()", "a"),
        ("skip_reason = 'condition_unmet'", "b"),
        ("status = 'skipped'", "b"),
    ):
        with raises_sqlstate("23514"):
            conn.execute(
                f"update pgflow.step_states set {assignment}"
                f" where run_id = %s and step_slug = %s".encode(),
                (run_id, slug),
            )

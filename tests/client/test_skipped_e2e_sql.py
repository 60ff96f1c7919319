"""Skipped steps as the SQL core really reports them: broadcasts, snapshots, a live client."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from pgflow_client import (
    FlowRunStatus,
    FlowStepStatus,
    PgflowClient,
    SkipReason,
    StepSkippedEvent,
)
from pgflow_client._events import parse_broadcast
from pgflow_client._snapshot import parse_step_row, step_row_to_event

Conn = psycopg.Connection[Any]
WORKER = uuid.UUID("22222222-2222-2222-2222-222222222222")

FLOW_SQL = [
    "select pgflow.create_flow('skips', max_attempts => 1)",
    """select pgflow.add_step('skips', 'gate', required_input_pattern => '{"go": true}',"""
    " when_unmet => 'skip-cascade')",
    "select pgflow.add_step('skips', 'below_gate', ARRAY['gate'])",
    """select pgflow.add_step('skips', 'optional', forbidden_input_pattern => '{"lite": true}')""",
    "select pgflow.add_step('skips', 'flaky', when_exhausted => 'skip')",
    "select pgflow.add_step('skips', 'last', ARRAY['optional', 'flaky'])",
]


def define(conn: Conn) -> None:
    for statement in FLOW_SQL:
        conn.execute(statement.encode())
    conn.execute(
        "insert into pgflow.workers (worker_id, queue_name, function_name)"
        " values (%s, 'skips', 'tests')",
        (WORKER,),
    )


def fail_flaky(conn: Conn, run_id: str) -> None:
    """Claim the run's `flaky` task and fail it for good (it then is skipped)."""
    conn.execute(
        "select pgflow.start_tasks('skips', array(select msg_id from pgmq.q_skips"
        " where message->>'run_id' = %s and message->>'step_slug' = 'flaky'), %s)",
        (run_id, WORKER),
    )
    conn.execute("select pgflow.fail_task(%s, 'flaky', 0, 'service down')", (run_id,))


def test_every_skip_broadcast_parses_into_a_typed_event(conn: Conn) -> None:
    define(conn)
    row = conn.execute(
        "select run_id from pgflow.start_flow('skips', '{\"go\": false, \"lite\": true}')"
    ).fetchone()
    assert row is not None
    run_id = str(row[0])
    fail_flaky(conn, run_id)
    rows = conn.execute(
        "select event, payload from realtime.messages where topic = %s order by inserted_at, ctid",
        (f"pgflow:run:{run_id}",),
    ).fetchall()

    parsed = [parse_broadcast(event, payload) for event, payload in rows]
    assert None not in parsed, "every broadcast of the run is understood"
    skipped = {e.step_slug: e for e in parsed if isinstance(e, StepSkippedEvent)}
    assert {slug: e.skip_reason for slug, e in skipped.items()} == {
        "gate": SkipReason.CONDITION_UNMET,
        "below_gate": SkipReason.DEPENDENCY_SKIPPED,
        "optional": SkipReason.CONDITION_UNMET,
        "flaky": SkipReason.HANDLER_FAILED,
    }
    assert skipped["flaky"].error_message == "service down"
    assert skipped["gate"].error_message is None
    for event in skipped.values():
        assert event.run_id == run_id
        assert event.status is FlowStepStatus.SKIPPED
        assert event.skipped_at.tzinfo is not None


def test_snapshot_rows_of_skipped_steps_become_skip_events(conn: Conn) -> None:
    define(conn)
    row = conn.execute(
        "select pgflow.start_flow_with_states('skips', '{\"go\": false, \"lite\": true}')"
    ).fetchone()
    assert row is not None
    run_id = row[0]["run"]["run_id"]
    fail_flaky(conn, run_id)
    snapshot = conn.execute("select pgflow.get_run_with_states(%s)", (run_id,)).fetchone()
    assert snapshot is not None

    events = {}
    for step in snapshot[0]["steps"]:
        event = step_row_to_event(parse_step_row(step))
        if isinstance(event, StepSkippedEvent):
            events[event.step_slug] = event
    assert sorted(events) == ["below_gate", "flaky", "gate", "optional"]
    assert events["flaky"].skip_reason is SkipReason.HANDLER_FAILED
    assert events["flaky"].error_message == "service down"
    assert events["below_gate"].skip_reason is SkipReason.DEPENDENCY_SKIPPED


async def test_a_live_client_sees_steps_skipped(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    for statement in FLOW_SQL:
        await aconn.execute(statement.encode())

    async def claim_and(run_id: str, call: str) -> None:
        await aconn.execute(
            "insert into pgflow.workers (worker_id, queue_name, function_name)"
            " values (%s, 'skips', 'tests') on conflict do nothing",
            (WORKER,),
        )
        await aconn.execute(
            "select pgflow.start_tasks('skips', array(select msg_id from pgmq.q_skips"
            " where message->>'run_id' = %s), %s)",
            (run_id, WORKER),
        )
        await aconn.execute(call.encode(), (run_id,))

    async with await PgflowClient.connect(db_url) as client:
        run = await client.start_flow("skips", {"go": False})
        # Skipped inside start_flow: the snapshot already says so.
        gate = run.step("gate")
        assert (gate.status, gate.skip_reason) == (
            FlowStepStatus.SKIPPED,
            SkipReason.CONDITION_UNMET,
        )
        assert run.step("below_gate").skip_reason is SkipReason.DEPENDENCY_SKIPPED
        assert run.step("optional").status is FlowStepStatus.STARTED

        seen: list[StepSkippedEvent] = []
        run.step("flaky").on("skipped", seen.append)
        await claim_and(run.run_id, "select pgflow.fail_task(%s, 'flaky', 0, 'service down')")
        flaky = await run.step("flaky").wait_for_status("skipped", timeout=10)
        assert flaky.skip_reason is SkipReason.HANDLER_FAILED
        assert flaky.error_message == "service down"
        assert flaky.skipped_at is not None
        assert [e.skip_reason for e in seen] == [SkipReason.HANDLER_FAILED]

        await claim_and(run.run_id, "select pgflow.complete_task(%s, 'optional', 0, '\"o\"')")
        await claim_and(run.run_id, "select pgflow.complete_task(%s, 'last', 0, '\"l\"')")
        await run.wait_for_status("completed", timeout=10)
        assert run.status is FlowRunStatus.COMPLETED
        assert run.output == {"last": "l"}

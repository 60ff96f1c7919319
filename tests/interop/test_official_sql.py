"""pgflow-py's client and worker on the official ``@pgflow/core`` 0.8.1 SQL, against our SQL.

The same flows run on a database migrated with our SQL and on one migrated with the official
SQL (same server). They must end the same way, with the same outputs, the same events
committed in the same order, and the same events accepted by the Python client, over Supabase
(the stand-in) and over plain Postgres.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from supabase import acreate_client

from pgflow_client import FlowRun, PgflowClient
from pgflow_worker import FlowWorker, WorkerSettings
from tests.interop._emitted import EmittedEvents, topic_of
from tests.interop.flows import CASES, Case, define
from tests.supabase_standin import SupabaseStandIn
from tests.supabase_standin.fixtures import close_client

FAST = WorkerSettings(max_poll_seconds=1, poll_interval_ms=50)
TIMEOUT = 30.0

# Keys every event of each kind carries on both SQLs (the official 0.8.1 SQL predates some of
# ours, so these are what a client may rely on).
PAYLOAD_KEYS = {
    "run:started": {"event_type", "run_id", "flow_slug", "status", "input", "started_at"},
    "run:completed": {"event_type", "run_id", "flow_slug", "status", "output", "completed_at"},
    "run:failed": {"event_type", "run_id", "flow_slug", "status", "error_message", "failed_at"},
    "step:started": {"event_type", "run_id", "step_slug", "status", "started_at"},
    "step:completed": {"event_type", "run_id", "step_slug", "status", "output", "completed_at"},
    "step:failed": {"event_type", "run_id", "step_slug", "status", "error_message", "failed_at"},
}


@dataclass
class Outcome:
    """How one case ended on one SQL, as the Python client and the database saw it."""

    status: str
    output: Any
    error_message: str | None
    steps: dict[str, tuple[str, Any]]
    accepted: list[tuple[str, str | None, str]]
    emitted: list[str]
    payloads: list[dict[str, Any]]


@contextlib.asynccontextmanager
async def client_over(transport: str, dsn: str) -> AsyncIterator[PgflowClient]:
    if transport == "postgres":
        async with await PgflowClient.connect(dsn) as client:
            yield client
        return
    async with SupabaseStandIn(dsn) as standin:
        supabase = await acreate_client(standin.url, standin.key)
        try:
            async with PgflowClient(supabase) as client:
                yield client
        finally:
            await close_client(supabase)


def record_accepted(run: FlowRun, case: Case) -> list[tuple[str, str | None, str]]:
    """Every event the client accepts from now on, as (event_type, step_slug, status)."""
    accepted: list[tuple[str, str | None, str]] = []
    run.on("*", lambda e: accepted.append((e.event_type, None, e.status.value)))
    for slug in case.step_slugs():
        run.step(slug).on(
            "*", lambda e: accepted.append((e.event_type, e.step_slug, e.status.value))
        )
    return accepted


async def run_cases(dsn: str, transport: str) -> dict[str, Outcome]:
    """Start every case from the client, then let one Python worker per flow run them."""
    await define(dsn, *CASES)
    async with EmittedEvents(dsn) as emitted, client_over(transport, dsn) as client:
        runs = {case.name: await client.start_flow(case.flow.slug, case.input) for case in CASES}
        accepted = {case.name: record_accepted(runs[case.name], case) for case in CASES}
        async with contextlib.AsyncExitStack() as workers:
            for case in CASES:
                await workers.enter_async_context(FlowWorker(case.flow, dsn, settings=FAST))
            for case in CASES:
                await runs[case.name].wait_for_status(case.status, timeout=TIMEOUT)
        outcomes = {}
        for case in CASES:
            run = runs[case.name]
            events, _ = await emitted.settled(topic_of(run.run_id))
            outcomes[case.name] = Outcome(
                status=run.status.value,
                output=run.output,
                error_message=run.error_message,
                steps={
                    slug: (run.step(slug).status.value, run.step(slug).output)
                    for slug in case.step_slugs()
                },
                accepted=accepted[case.name],
                emitted=[e.event for e in events],
                payloads=[e.payload for e in events],
            )
    return outcomes


def kind_of(event: str) -> str:
    head, *_, status = event.split(":")
    return f"{head}:{status}"


@pytest.mark.parametrize("transport", ["supabase", "postgres"])
async def test_same_flows_end_the_same_on_both_sqls(
    db_url: str, official_db_url: str, transport: str
) -> None:
    ours = await run_cases(db_url, transport)
    official = await run_cases(official_db_url, transport)

    for case in CASES:
        mine, theirs = ours[case.name], official[case.name]
        assert mine.status == theirs.status == case.status, case.name
        if case.status == "completed":
            assert mine.output == theirs.output == case.output, case.name
        else:
            assert case.error_contains is not None
            assert mine.error_message is not None
            assert theirs.error_message is not None
            assert case.error_contains in mine.error_message, case.name
            assert mine.error_message == theirs.error_message, case.name
        assert mine.steps == theirs.steps, case.name
        assert mine.emitted == theirs.emitted, case.name
        assert mine.accepted == theirs.accepted, case.name
        assert mine.accepted, f"{case.name}: the client accepted no event"
        for outcome in (mine, theirs):
            assert outcome.emitted[0] == "run:started"
            assert outcome.emitted[-1] == f"run:{case.status}"
            for event, payload in zip(outcome.emitted, outcome.payloads, strict=True):
                assert PAYLOAD_KEYS[kind_of(event)] <= payload.keys(), (case.name, event)

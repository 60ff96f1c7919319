"""The official ``@pgflow/client`` (npm, over supabase-js) on pgflow-py's SQL and worker.

A Node process runs the unmodified TypeScript client against the Supabase stand-in over a
database migrated with our SQL. It starts a run; our Python worker executes it. The client must
receive every event our SQL committed, in commit order and byte-for-byte, and end in the state
the run ended in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from pgflow_worker import FlowWorker, WorkerSettings
from tests.interop._emitted import Emitted, EmittedEvents, topic_of
from tests.interop._node import NodeSession
from tests.interop.flows import EMPTY_MAP, FAILING, MIXED, Case, define
from tests.supabase_standin import SupabaseStandIn

pytestmark = pytest.mark.usefixtures("ts_packages")

FAST = WorkerSettings(max_poll_seconds=1, poll_interval_ms=50)
WAIT_MS = 20_000


@dataclass
class Followed:
    """One run as the TypeScript client saw it, next to what the SQL emitted."""

    run_id: str
    started: dict[str, Any]
    final: dict[str, Any]
    emitted: list[Emitted]
    received: list[dict[str, Any]]
    typed: list[dict[str, Any]]


async def received_until(node: NodeSession, run_id: str, marker: str) -> tuple[list[Any], ...]:
    """The run's broadcasts and accepted status changes the client reported, up to ``marker``."""
    received: list[dict[str, Any]] = []
    typed: list[dict[str, Any]] = []
    while True:
        message = await node.next_event()
        if message["type"] == "typed" and message["run_id"] == run_id:
            typed.append(message)
        elif message["type"] == "event":
            payload = message["payload"]
            if payload.get("id") == marker:
                return received, typed
            if payload.get("run_id") == run_id:
                received.append(payload)


async def follow(
    db_url: str, case: Case, *, vsn: str | None = None, settle_ms: int | None = None
) -> Followed:
    """Start ``case`` from the TypeScript client, run it with the Python worker, and collect."""
    await define(db_url, case)
    slugs = case.step_slugs()
    async with (
        SupabaseStandIn(db_url) as standin,
        EmittedEvents(db_url) as emitted,
        NodeSession(
            "client_session.mjs",
            {"url": standin.url, "key": standin.key, "vsn": vsn, "settle_ms": settle_ms},
        ) as node,
    ):
        started = await node.request(
            "start", flow_slug=case.flow.slug, input=case.input, steps=slugs
        )
        run_id = started["run_id"]
        # The worker starts only now: the 0.8.1 client applies its start snapshot after the
        # RPC returns and would let it overwrite newer events (a race of its own, not ours).
        async with FlowWorker(case.flow, db_url, settings=FAST):
            final = await node.request(
                "wait",
                run_id=run_id,
                status=case.status,
                timeout_ms=WAIT_MS,
                steps=slugs,
                timeout=WAIT_MS / 1000 + 5,
            )
        events, marker = await emitted.settled(topic_of(run_id))
        received, typed = await received_until(node, run_id, marker)
    return Followed(run_id, started, final, events, received, typed)


def assert_received_everything(followed: Followed) -> None:
    """Same events, same order, same payloads as the SQL committed."""
    assert [p["id"] for p in followed.received] == [e.id for e in followed.emitted]
    assert followed.received == [e.payload for e in followed.emitted]


def event_names(followed: Followed) -> list[str]:
    return [e.event for e in followed.emitted]


@pytest.mark.parametrize("vsn", [None, "1.0.0"], ids=["vsn-default", "vsn-1.0.0"])
async def test_ts_client_follows_a_run_of_the_python_worker(db_url: str, vsn: str | None) -> None:
    followed = await follow(db_url, MIXED, vsn=vsn)

    assert followed.started["run"]["status"] == "started"
    assert followed.started["run"]["remaining_steps"] == 4
    assert followed.started["steps"]["full_name"]["status"] == "started"
    assert_received_everything(followed)
    assert event_names(followed) == [
        "run:started",
        "step:full_name:started",
        "step:full_name:completed",
        "step:letters:started",
        "step:letters:completed",
        "step:upper:started",
        "step:upper:completed",
        "step:summary:started",
        "step:summary:completed",
        "run:completed",
    ]
    run, steps = followed.final["run"], followed.final["steps"]
    assert run["status"] == "completed"
    assert run["output"] == MIXED.output
    assert run["remaining_steps"] == 0
    assert run["completed_at"] is not None
    assert {slug: s["status"] for slug, s in steps.items()} == dict.fromkeys(
        MIXED.step_slugs(), "completed"
    )
    assert steps["upper"]["output"] == ["A", "D", "A", "L"]
    assert steps["full_name"]["output"] == {"name": "Ada Lovelace"}
    assert [t["status"] for t in followed.typed] == ["completed"]


async def test_ts_client_sees_the_step_and_the_run_fail(db_url: str) -> None:
    followed = await follow(db_url, FAILING)

    assert_received_everything(followed)
    assert event_names(followed) == [
        "run:started",
        "step:fetch:started",
        "step:fetch:completed",
        "step:publish:started",
        "step:publish:failed",
        "run:failed",
    ]
    run, steps = followed.final["run"], followed.final["steps"]
    assert run["status"] == "failed"
    assert FAILING.error_contains is not None
    assert FAILING.error_contains in run["error_message"]
    assert steps["publish"]["status"] == "failed"
    assert FAILING.error_contains in steps["publish"]["error_message"]
    assert steps["fetch"]["status"] == "completed"


async def test_ts_client_takes_an_empty_map_that_never_starts(db_url: str) -> None:
    followed = await follow(db_url, EMPTY_MAP)

    assert_received_everything(followed)
    names = event_names(followed)
    assert "step:each:started" not in names
    assert names.index("step:items:completed") < names.index("step:each:completed")
    steps = followed.final["steps"]
    assert steps["each"]["status"] == "completed"
    assert steps["each"]["output"] == []
    assert followed.final["run"]["output"] == EMPTY_MAP.output


async def test_ts_client_reads_a_finished_run_with_get_run(db_url: str) -> None:
    followed = await follow(db_url, MIXED, settle_ms=0)
    async with (
        SupabaseStandIn(db_url) as standin,
        NodeSession("client_session.mjs", {"url": standin.url, "key": standin.key}) as node,
    ):
        fetched = await node.request("get_run", run_id=followed.run_id, steps=MIXED.step_slugs())
        missing = await node.request(
            "get_run", run_id="00000000-0000-4000-8000-000000000000", steps=[]
        )
    run = fetched["run"]
    assert run["status"] == "completed"
    assert run["output"] == MIXED.output
    assert run["input"] == MIXED.input
    assert {s["status"] for s in fetched["steps"].values()} == {"completed"}
    assert missing["run"] is None


def _cancel(db_url: str, run_id: str, reason: str) -> None:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pgflow.cancel_run(%s, %s)", (run_id, reason))


async def test_ts_client_sees_a_cancelled_run_fail(db_url: str) -> None:
    """A run cancelled with pgflow-py's cancel_run is, to the official client, a failed run
    with the cancellation's message, live and when read again with getRun."""
    import asyncio

    await define(db_url, MIXED)
    slugs = MIXED.step_slugs()
    async with (
        SupabaseStandIn(db_url) as standin,
        NodeSession("client_session.mjs", {"url": standin.url, "key": standin.key}) as node,
    ):
        started = await node.request(
            "start", flow_slug=MIXED.flow.slug, input=MIXED.input, steps=slugs
        )
        run_id = started["run_id"]
        await asyncio.to_thread(_cancel, db_url, run_id, "stop")
        final = await node.request(
            "wait",
            run_id=run_id,
            status="failed",
            timeout_ms=WAIT_MS,
            steps=slugs,
            timeout=WAIT_MS / 1000 + 5,
        )
    async with (
        SupabaseStandIn(db_url) as standin,
        NodeSession("client_session.mjs", {"url": standin.url, "key": standin.key}) as node,
    ):
        fetched = await node.request("get_run", run_id=run_id, steps=slugs)
    assert final["run"]["status"] == "failed"
    assert final["run"]["error_message"] == "Run cancelled: stop"
    assert fetched["run"]["status"] == "failed"
    assert fetched["run"]["input"] == MIXED.input

"""PgflowClient end to end: real Postgres, a real worker, both transports."""

from __future__ import annotations

import asyncio
import gc
import os
import time
import uuid
import weakref
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from pgflow_client import (
    FlowNotFound,
    FlowRunStatus,
    FlowStepStatus,
    InvalidFlowInput,
    InvalidRunId,
    PgflowClient,
    RunAlreadyExists,
    StatusUnreachable,
)
from pgflow_worker import Flow, FlowWorker
from pgflow_worker._shape import ensure_flow
from tests.e2e.conftest import ClientFactory
from tests.e2e.flows import chain, empty_dependent_map, mapping, type_violation
from tests.supabase_standin._env import RealStack, stack_from_env, talks_to_supabase

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 20}


async def define(db_url: str, flow: Flow) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await ensure_flow(conn, flow)


async def collect(run: Any) -> list[str]:
    names = []
    async for event in run.events():
        step = getattr(event, "step_slug", None)
        names.append(f"{event.event_type}{':' + step if step else ''}")
    return names


async def test_three_step_happy_path_with_every_event_in_order(
    db_url: str, client: PgflowClient
) -> None:
    flow = chain()
    await define(db_url, flow)
    run = await client.start_flow("e2e_chain", {"id": 7})
    assert run.status is FlowRunStatus.STARTED
    assert run.remaining_steps == 3
    assert run.step("fetch").status is FlowStepStatus.STARTED  # from the snapshot
    seen: list[str] = []
    run.step("publish").on("completed", lambda e: seen.append(e.output["published"]))
    events = asyncio.create_task(collect(run))
    await asyncio.sleep(0)  # let the iterator attach before work begins
    async with FlowWorker(flow, db_url, **FAST):
        await run.wait_for_status("completed", timeout=30)
        names = await asyncio.wait_for(events, 10)
    assert names == [
        "step:completed:fetch",
        "step:started:summarize",
        "step:completed:summarize",
        "step:started:publish",
        "step:completed:publish",
        "run:completed",
    ]
    assert run.output == {"publish": {"published": "summary of title-7"}}
    assert run.step("summarize").output == "summary of title-7"
    assert seen == ["summary of title-7"]
    assert run.completed_at is not None
    assert run.remaining_steps == 0


async def test_failure_reaches_run_and_step(db_url: str, client: PgflowClient) -> None:
    flow = chain()
    await define(db_url, flow)
    run = await client.start_flow("e2e_chain", {"id": "boom"})
    async with FlowWorker(flow, db_url, **FAST):
        step = await run.step("publish").wait_for_status("failed", timeout=30)
        await run.wait_for_status("failed", timeout=10)
    assert step.error_message == "RuntimeError: publishing refused"
    assert run.error_message == "RuntimeError: publishing refused"
    with pytest.raises(StatusUnreachable) as caught:
        await run.wait_for_status("completed", timeout=10)
    assert caught.value.status == "failed"


async def test_a_map_fed_a_non_array_fails_with_a_type_violation(
    db_url: str, client: PgflowClient
) -> None:
    flow = type_violation()
    await define(db_url, flow)
    run = await client.start_flow("e2e_type_violation", {})
    failures: list[str | None] = []
    run.step("items").on("failed", lambda e: failures.append(e.error_message))
    # Waiting from before the failure: it must end when the failure arrives, not at timeout.
    waiting = asyncio.create_task(run.wait_for_status("completed", timeout=300))
    async with FlowWorker(flow, db_url, **FAST):
        items = await run.step("items").wait_for_status("failed", timeout=30)
        await run.wait_for_status("failed", timeout=10)
    expected = (
        "[TYPE_VIOLATION] Map step each expects array input but dependency items produced object"
    )
    assert items.error_message == expected
    assert failures == [expected]
    assert run.status is FlowRunStatus.FAILED
    assert run.error_message == expected
    assert run.step("each").status is FlowStepStatus.CREATED  # never started
    with pytest.raises(StatusUnreachable) as unreachable:
        await asyncio.wait_for(waiting, 5)
    assert unreachable.value.status == "failed"
    assert unreachable.value.error_message == expected
    began = time.monotonic()
    with pytest.raises(StatusUnreachable) as again:
        await run.wait_for_status("completed", timeout=300)
    assert time.monotonic() - began < 1
    assert (again.value.status, again.value.target) == ("failed", "completed")


async def test_map_and_empty_maps(db_url: str, client: PgflowClient) -> None:
    flows = [mapping(), empty_dependent_map()]
    for flow in flows:
        await define(db_url, flow)
    empty_root = await client.start_flow("e2e_map", [])
    # The empty map completed inside start_flow, without ever being started.
    assert empty_root.step("double").status is FlowStepStatus.COMPLETED
    assert empty_root.step("double").output == []
    assert empty_root.step("total").status is FlowStepStatus.STARTED
    with pytest.raises(StatusUnreachable):
        await empty_root.step("double").wait_for_status("started", timeout=5)

    run = await client.start_flow("e2e_map", [1, 2, 3])
    empty_dep = await client.start_flow("e2e_empty_dep", {"n": 0})
    worker_a = FlowWorker(flows[0], db_url, **FAST)
    worker_b = FlowWorker(flows[1], db_url, **FAST)
    async with worker_a, worker_b:
        await run.wait_for_status("completed", timeout=30)
        each = await empty_dep.step("each").wait_for_status("completed", timeout=30)
        await empty_dep.wait_for_status("completed", timeout=10)
        await empty_root.wait_for_status("completed", timeout=10)
    assert empty_root.output == {"total": 0}
    assert run.output == {"total": 12}
    assert run.step("double").output == [2, 4, 6]
    assert each.output == []
    with pytest.raises(StatusUnreachable):
        await each.wait_for_status("started", timeout=5)


async def test_get_run_of_existing_and_missing_runs(
    db_url: str, make_client: ClientFactory
) -> None:
    flow = mapping()
    await define(db_url, flow)
    starter = await make_client()
    run = await starter.start_flow("e2e_map", [5])
    async with FlowWorker(flow, db_url, **FAST):
        await run.wait_for_status("completed", timeout=30)
    observer = await make_client()
    fetched = await observer.get_run(run.run_id)
    assert fetched is not None
    assert fetched.status is FlowRunStatus.COMPLETED
    assert fetched.output == {"total": 10}
    assert fetched.step("double").output == [10]
    assert await observer.get_run(uuid.uuid4()) is None
    # A finished run needs no subscription, and is the same object every time.
    assert fetched.disposed
    assert observer.subscriptions() == frozenset()
    assert observer.runs == {}
    assert await observer.get_run(run.run_id) is fetched
    assert await observer.get_run(run.run_id.upper()) is fetched
    # So is the run start_flow returned, once it finished and released itself.
    assert run.disposed
    assert await starter.get_run(run.run_id) is run


async def test_finished_runs_are_kept_only_while_referenced_or_until_disposed(
    db_url: str, make_client: ClientFactory
) -> None:
    flow = mapping()
    await define(db_url, flow)
    client = await make_client()
    run = await client.start_flow("e2e_map", [1])
    async with FlowWorker(flow, db_url, **FAST):
        await run.wait_for_status("completed", timeout=30)
    run_id = run.run_id
    client.dispose(run_id)  # forgotten: the next get_run fetches it again
    fetched = await client.get_run(run_id)
    assert fetched is not None
    assert fetched is not run
    assert fetched.output == run.output == {"total": 2}
    # Held weakly: once nobody references it, the client does not keep it alive.
    ref = weakref.ref(fetched)
    del run, fetched
    gc.collect()
    assert ref() is None
    again = await client.get_run(run_id)
    assert again is not None
    assert again.output == {"total": 2}
    assert await client.get_run(run_id) is again


async def test_many_clients_on_one_run_and_many_runs_on_one_client(
    db_url: str, make_client: ClientFactory
) -> None:
    flow = mapping()
    await define(db_url, flow)
    starter = await make_client()
    runs = [await starter.start_flow("e2e_map", [i, i]) for i in range(5)]
    watchers = [await make_client() for _ in range(3)]
    watched = [await w.get_run(runs[0].run_id) for w in watchers]
    async with FlowWorker(flow, db_url, **FAST):
        await asyncio.gather(*(r.wait_for_status("completed", timeout=30) for r in runs))
        for w in watched:
            assert w is not None
            await w.wait_for_status("completed", timeout=10)
    assert [r.output for r in runs] == [{"total": 4 * i} for i in range(5)]
    assert all(w is not None and w.output == {"total": 0} for w in watched)


async def test_bad_input_leaves_nothing_behind(db_url: str, make_client: ClientFactory) -> None:
    """Every refused call leaves nothing subscribed by the time its exception arrives: not
    in the client, not on the server (no joined channel, no LISTEN beyond the shared one)."""
    await define(db_url, mapping())
    client = await make_client()
    refused = make_client.assert_nothing_subscribed

    with pytest.raises(FlowNotFound) as missing:
        await client.start_flow("no_such_flow", {})
    assert missing.value.flow_slug == "no_such_flow"
    await refused(client)
    with pytest.raises(InvalidFlowInput, match="not an array"):
        await client.start_flow("e2e_map", {"not": "a list"})
    await refused(client)
    with pytest.raises(InvalidFlowInput, match="not JSON-serializable"):
        await client.start_flow("e2e_map", [float("nan")])
    await refused(client)
    with pytest.raises(InvalidRunId, match="not a UUID") as malformed:
        await client.start_flow("e2e_map", [1], run_id="not-a-uuid")
    assert malformed.value.run_id == "not-a-uuid"
    await refused(client)
    with pytest.raises(InvalidRunId, match="not a UUID"):
        await client.get_run("42")
    await refused(client)
    with pytest.raises(InvalidRunId):
        await client.get_run(42)  # type: ignore[arg-type]
    await refused(client)

    run_id = uuid.uuid4()
    await client.start_flow("e2e_map", [1], run_id=run_id)
    client.dispose(run_id)
    await refused(client, settle=True)
    with pytest.raises(RunAlreadyExists):
        await client.start_flow("e2e_map", [1], run_id=run_id)
    await refused(client)
    assert client.runs == {}
    await client.aclose()
    await refused(client, listeners=0)


async def test_dispose_releases_the_subscription(db_url: str, make_client: ClientFactory) -> None:
    await define(db_url, mapping())
    client = await make_client()
    released = make_client.assert_nothing_subscribed
    run = await client.start_flow("e2e_map", [1])
    calls: list[object] = []
    run.on("*", calls.append)
    assert client.subscriptions() == {run.run_id}
    if make_client.standin is not None:
        assert make_client.standin.joined_topics() == {f"pgflow:run:{run.run_id}": 1}
    client.dispose(run.run_id)
    assert run.disposed
    assert client.runs == {}
    assert client.subscriptions() == frozenset()  # at once, before the server hears of it
    await released(client, settle=True)

    # run.dispose() and dispose_all() release the same way.
    first = await client.start_flow("e2e_map", [1])
    first.on("*", calls.append)
    first.dispose()
    assert client.subscriptions() == frozenset()
    await released(client, settle=True)
    others = [await client.start_flow("e2e_map", [n]) for n in range(3)]
    assert client.subscriptions() == {r.run_id for r in others}
    client.dispose_all()
    assert all(r.disposed for r in others)
    await released(client, settle=True)
    await client.aclose()
    await released(client, listeners=0)
    assert calls == []


async def test_terminal_run_without_listeners_disposes_itself(
    db_url: str, client: PgflowClient
) -> None:
    flow = mapping()
    await define(db_url, flow)
    run = await client.start_flow("e2e_map", [2])
    async with FlowWorker(flow, db_url, **FAST):
        await run.wait_for_status("completed", timeout=30)
    await asyncio.sleep(0)
    assert run.disposed
    assert run.output == {"total": 4}
    assert run.run_id not in client.runs


def test_only_the_supabase_variant_goes_to_a_configured_stack(
    request: pytest.FixtureRequest, make_client: ClientFactory, db_url: str
) -> None:
    """With a real stack configured, the Supabase variant of these tests gets its database and
    the Postgres variant keeps a local clone: the marker on the fixture's param decides."""
    markers = {marker.name for marker in request.node.iter_markers()}
    supabase = make_client.transport == "supabase"
    assert talks_to_supabase(request.fixturenames, markers) is supabase
    stack = stack_from_env(os.environ)
    if supabase and isinstance(stack, RealStack):
        assert db_url == stack.db_url
        assert make_client.standin is None
    else:
        assert conninfo_to_dict(db_url)["dbname"].startswith("pgflow_test_")
        assert (make_client.standin is not None) is supabase

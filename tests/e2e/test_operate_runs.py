"""list_runs, cancel_run and retry_run from the client: both transports, async and sync."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pgflow_client import (
    FlowRunStatus,
    InvalidRunFilter,
    InvalidRunId,
    PgflowClient,
    RunAlreadyFinished,
    RunNotFailed,
    RunNotFound,
    RunRecord,
    SyncPgflowClient,
)
from pgflow_worker import FlowWorker
from tests.e2e.conftest import ClientFactory
from tests.e2e.flows import chain
from tests.e2e.test_client_e2e import FAST, define


def runs_row(db_url: str, run_id: str) -> dict[str, Any]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "select to_jsonb(r) from pgflow.runs as r where run_id = %s", (run_id,)
        ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


async def test_cancel_a_watched_run(db_url: str, make_client: ClientFactory) -> None:
    """The run this client watches is returned failed and cancelled at once; another client
    watching it gets the broadcast, and sees it cancelled once it reads the run."""
    await define(db_url, chain())
    client = await make_client()
    watcher = await make_client()
    run = await client.start_flow("e2e_chain", {"id": 1})
    seen = await watcher.get_run(run.run_id)
    assert seen is not None
    failed: list[str | None] = []
    seen.on("failed", lambda e: failed.append(e.error_message))

    cancelled = await client.cancel_run(run.run_id, reason="wrong input")
    assert cancelled is run
    assert run.status is FlowRunStatus.FAILED
    assert run.cancelled
    assert run.cancel_reason == "wrong input"
    assert run.cancelled_at == run.failed_at
    assert run.cancelled_at == datetime.fromisoformat(runs_row(db_url, run.run_id)["cancelled_at"])
    assert run.error_message == "Run cancelled: wrong input"

    await seen.wait_for_status("failed", timeout=10)
    assert failed == ["Run cancelled: wrong input"]
    assert seen.error_message == "Run cancelled: wrong input"
    fresh = await (await make_client()).get_run(run.run_id)
    assert fresh is not None
    assert fresh.cancelled
    assert fresh.error_message == "Run cancelled: wrong input"
    assert fresh.step("fetch").status.value == "started"  # step states as a failed run has them


async def test_cancel_refusals(db_url: str, client: PgflowClient) -> None:
    await define(db_url, chain())
    run = await client.start_flow("e2e_chain", {"id": 2})
    await client.cancel_run(run.run_id)
    with pytest.raises(RunAlreadyFinished, match="was already cancelled") as caught:
        await client.cancel_run(run.run_id, reason="again")
    assert caught.value.run_id == run.run_id
    assert caught.value.code == "55000"
    assert runs_row(db_url, run.run_id)["cancel_reason"] is None
    missing = str(uuid.uuid4())
    with pytest.raises(RunNotFound, match=f"run {missing} does not exist") as not_found:
        await client.cancel_run(missing)
    assert not_found.value.run_id == missing
    with pytest.raises(InvalidRunId):
        await client.cancel_run("not-a-uuid")


async def test_retry_a_cancelled_run_to_completion(db_url: str, client: PgflowClient) -> None:
    flow = chain()
    await define(db_url, flow)
    source = await client.start_flow("e2e_chain", {"id": 3})
    await client.cancel_run(source.run_id)
    before = runs_row(db_url, source.run_id)
    retried = await client.retry_run(source.run_id)
    assert retried.run_id != source.run_id
    assert retried.restart_of_run_id == source.run_id
    assert (retried.flow_slug, retried.input) == ("e2e_chain", {"id": 3})
    assert not retried.cancelled
    async with FlowWorker(flow, db_url, **FAST):
        await retried.wait_for_status("completed", timeout=30)
    assert retried.output == {"publish": {"published": "summary of title-3"}}
    assert runs_row(db_url, source.run_id) == before
    again = await client.retry_run(source.run_id)
    assert again.restart_of_run_id == source.run_id


async def test_retry_refusals(db_url: str, client: PgflowClient) -> None:
    await define(db_url, chain())
    run = await client.start_flow("e2e_chain", {"id": 4})
    with pytest.raises(RunNotFailed, match="has not failed \\(it is started\\)") as caught:
        await client.retry_run(run.run_id)
    assert caught.value.run_id == run.run_id
    with pytest.raises(RunNotFound):
        await client.retry_run(uuid.uuid4())
    assert [r.run_id for r in await client.list_runs()] == [run.run_id]
    assert client.subscriptions() == frozenset({run.run_id})


async def test_list_runs(db_url: str, client: PgflowClient) -> None:
    await define(db_url, chain())
    started = datetime.now(UTC)
    ids = []
    for i in range(5):
        ids.append((await client.start_flow("e2e_chain", {"id": i})).run_id)
    await client.cancel_run(ids[1], reason="stop")
    retry = await client.retry_run(ids[1])
    client.dispose_all()

    records = await client.list_runs()
    assert all(isinstance(r, RunRecord) for r in records)
    everything = [r.run_id for r in records]
    assert sorted(everything) == sorted([*ids, retry.run_id])
    newest_first = [r.started_at for r in records]
    assert newest_first == sorted(newest_first, reverse=True)
    (cancelled,) = await client.list_runs(status="cancelled")
    assert (cancelled.run_id, cancelled.cancelled, cancelled.cancel_reason) == (
        ids[1],
        True,
        "stop",
    )
    assert cancelled.model_dump(mode="json")["cancelled"] is True
    assert [r.run_id for r in await client.list_runs(status=FlowRunStatus.FAILED)] == [ids[1]]
    (retried,) = [r for r in records if r.restart_of_run_id is not None]
    assert retried.restart_of_run_id == ids[1]
    assert len(await client.list_runs(flow_slug="e2e_chain", status="started")) == 5
    assert await client.list_runs(flow_slug="nope") == []
    assert len(await client.list_runs(since=started - timedelta(minutes=1))) == 6
    assert await client.list_runs(since=datetime.now(UTC) + timedelta(minutes=1)) == []

    pages: list[str] = []
    before: str | None = None
    while page := await client.list_runs(limit=4, before=before):
        pages += [r.run_id for r in page]
        before = page[-1].run_id
    assert pages == everything
    assert client.subscriptions() == frozenset()

    with pytest.raises(InvalidRunFilter, match="status 'running' is not one of"):
        await client.list_runs(status="running")
    with pytest.raises(InvalidRunFilter, match="limit must be an int from 1 to 10000"):
        await client.list_runs(limit=0)
    with pytest.raises(InvalidRunFilter, match="timezone-aware"):
        await client.list_runs(since=datetime(2026, 1, 1))
    with pytest.raises(RunNotFound):
        await client.list_runs(before=uuid.uuid4())


async def test_sync_client(db_url: str) -> None:
    """The sync twin has the same three methods, with the same results and errors."""
    flow = chain()
    await define(db_url, flow)

    def scenario() -> tuple[list[RunRecord], str, str | None, str]:
        with SyncPgflowClient.connect(db_url) as client:
            run = client.start_flow("e2e_chain", {"id": 9})
            cancelled = client.cancel_run(run.run_id, reason="sync")
            assert cancelled.cancelled
            assert cancelled.cancel_reason == "sync"
            with pytest.raises(RunAlreadyFinished):
                client.cancel_run(run.run_id)
            retried = client.retry_run(run.run_id)
            output = retried.wait_for_status("completed", timeout=30).output
            return (
                client.list_runs(limit=10),
                retried.run_id,
                retried.restart_of_run_id,
                output["publish"]["published"],
            )

    async with FlowWorker(flow, db_url, **FAST):
        records, new_id, source, published = await asyncio.to_thread(scenario)
    assert records[0].run_id == new_id
    assert records[1].run_id == source
    assert records[1].cancelled
    assert published == "summary of title-9"


async def test_sync_client_over_supabase(db_url: str, supabase_env: tuple[str, str]) -> None:
    url, key = supabase_env
    await define(db_url, chain())

    def scenario() -> tuple[list[RunRecord], str, str | None]:
        with SyncPgflowClient.from_supabase(url, key) as client:
            run = client.start_flow("e2e_chain", {"id": 10})
            assert client.cancel_run(run.run_id, reason="sync").cancelled
            with pytest.raises(RunAlreadyFinished):
                client.cancel_run(run.run_id)
            retried = client.retry_run(run.run_id)
            with pytest.raises(RunNotFailed):
                client.retry_run(retried.run_id)
            return client.list_runs(), retried.run_id, retried.restart_of_run_id

    # The stand-in (when used) serves from this test's loop: the blocking calls run in a thread.
    records, new_id, source = await asyncio.to_thread(scenario)
    assert [(r.run_id, r.restart_of_run_id) for r in records] == [(new_id, source), (source, None)]
    assert records[1].cancel_reason == "sync"

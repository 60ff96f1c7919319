"""The Supabase transport's channel life: the first moments after a join, rejoins, refusals.

Realtime confirms a join (SUBSCRIBED) slightly before it routes broadcasts to it; the stand-in
reproduces that window by withholding broadcasts from fresh joins. The transport covers it
with snapshot checks shortly after ``start_flow`` and ``get_run`` (``reconcile_after``). A
channel the server closes is rejoined with bounded backoff and the run resynced. Every delay
the transport waits goes through its ``sleep``, which these tests replace with a gate that
records the delay and lets the test decide when the delayed work runs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest
from supabase import AsyncClient, acreate_client

from pgflow_client import FlowRunStatus, PgflowClient, SubscriptionError, WaitTimeout
from pgflow_client._supabase import SupabaseTransport
from pgflow_client._transport import TransportHooks
from pgflow_worker import Flow, FlowWorker
from pgflow_worker._shape import ensure_flow
from tests.e2e.flows import gated, mapping
from tests.supabase_standin import SupabaseStandIn
from tests.supabase_standin.fixtures import close_client

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 20}
FRESH_FOR_MS = 60_000  # longer than any test: every join stays "fresh" throughout
WAIT = 30.0


class GatedSleep:
    """Stands in for ``asyncio.sleep`` in the transport: records each delay asked for and
    holds every caller until :meth:`release` (after sleeping for real, when ``real``)."""

    def __init__(self, *, real: bool) -> None:
        self.delays: list[float] = []
        self._real = real
        self._open = asyncio.Event()
        self._called = asyncio.Condition()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        async with self._called:
            self._called.notify_all()
        if self._real:
            await asyncio.sleep(delay)
        await self._open.wait()

    async def wait_for_calls(self, count: int) -> None:
        async with self._called:
            await asyncio.wait_for(self._called.wait_for(lambda: len(self.delays) >= count), WAIT)

    def release(self) -> None:
        """Let every held caller, and every later one, go on at once."""
        self._open.set()


@pytest.fixture
async def standin(db_url: str) -> AsyncIterator[SupabaseStandIn]:
    async with SupabaseStandIn(db_url, record_broadcasts=True) as s:
        yield s


@pytest.fixture
async def supabase(standin: SupabaseStandIn) -> AsyncIterator[AsyncClient]:
    client = await acreate_client(standin.url, standin.key)
    try:
        yield client
    finally:
        await close_client(client)


def over(
    supabase: AsyncClient,
    sleep: GatedSleep,
    *,
    reconcile_after: Sequence[float] = (),
    rejoin_backoff: tuple[float, float] = (0.5, 10.0),
) -> PgflowClient:
    """A client whose Supabase transport waits every delay through ``sleep``."""

    def make(hooks: TransportHooks) -> SupabaseTransport:
        return SupabaseTransport(
            supabase,
            hooks,
            reconcile_after=reconcile_after,
            rejoin_backoff=rejoin_backoff,
            sleep=sleep,
        )

    return PgflowClient(transport=make)


async def define(db_url: str, flow: Flow) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await ensure_flow(conn, flow)


def topic_of(run_id: str) -> str:
    return f"pgflow:run:{run_id}"


async def wait_for_broadcast(standin: SupabaseStandIn, run_id: str, event: str) -> None:
    """Until the stand-in has handled (delivered or not) the run's broadcast ``event``."""
    topic = topic_of(run_id)
    await standin.wait_until(
        lambda: any(r.event == event for r in standin.broadcasts(topic)), within=WAIT
    )


def recorder(run: Any) -> list[Any]:
    """Outputs of the last step's and the run's completion, as their callbacks see them."""
    seen: list[Any] = []
    last = "total" if run.flow_slug == "e2e_map" else "second"
    run.step(last).on("completed", lambda e: seen.append(e.output))
    run.on("completed", lambda e: seen.append(e.output))
    return seen


# -- the window after a join ---------------------------------------------------------------------


async def test_reconcile_after_recovers_transitions_withheld_after_start_flow(
    db_url: str, standin: SupabaseStandIn, supabase: AsyncClient
) -> None:
    flow = mapping()
    await define(db_url, flow)
    standin.withhold_after_join(FRESH_FOR_MS)
    sleep = GatedSleep(real=True)
    async with over(supabase, sleep, reconcile_after=(0.05,)) as client:
        run = await client.start_flow("e2e_map", [1, 2])
        seen = recorder(run)
        async with FlowWorker(flow, db_url, **FAST):
            await wait_for_broadcast(standin, run.run_id, "run:completed")
        records = standin.broadcasts(topic_of(run.run_id))
        assert all((r.delivered, r.withheld) == (0, 1) for r in records), records
        assert run.status is FlowRunStatus.STARTED  # every transition was lost in the window
        assert seen == []
        await sleep.wait_for_calls(1)
        assert sleep.delays == [0.05]
        sleep.release()  # the reconciliation runs: the snapshot replays what was lost
        await run.wait_for_status("completed", timeout=10)
    assert seen == [6, {"total": 6}]
    assert run.step("double").output == [2, 4]


async def test_without_reconcile_a_transition_withheld_after_the_join_is_lost(
    db_url: str, standin: SupabaseStandIn, supabase: AsyncClient
) -> None:
    """The same run with ``reconcile_after=()``: what the window swallowed never arrives, so
    the test above can fail."""
    flow = mapping()
    await define(db_url, flow)
    standin.withhold_after_join(FRESH_FOR_MS)
    sleep = GatedSleep(real=True)
    sleep.release()
    async with over(supabase, sleep, reconcile_after=()) as client:
        run = await client.start_flow("e2e_map", [1, 2])
        seen = recorder(run)
        async with FlowWorker(flow, db_url, **FAST):
            await wait_for_broadcast(standin, run.run_id, "run:completed")
        with pytest.raises(WaitTimeout):
            await run.wait_for_status("completed", timeout=1.0)
    assert run.status is FlowRunStatus.STARTED
    assert seen == []
    assert sleep.delays == []


class CountingTransport(SupabaseTransport):
    """Records every snapshot the transport fetches."""

    fetched: list[str]

    async def get_run_with_states(self, run_id: str) -> dict[str, Any] | None:
        self.fetched.append(run_id)
        return await super().get_run_with_states(run_id)


async def test_reconcile_after_makes_no_call_for_a_run_that_arrived_whole(
    db_url: str, standin: SupabaseStandIn, supabase: AsyncClient
) -> None:
    """A run completed with every transition delivered live is settled: its reconciliation
    has nothing to learn and fetches nothing. One whose transitions were withheld is fetched."""
    flow = mapping()
    await define(db_url, flow)
    sleep = GatedSleep(real=False)
    made: list[CountingTransport] = []

    def make(hooks: TransportHooks) -> CountingTransport:
        transport = CountingTransport(supabase, hooks, reconcile_after=(0.05,), sleep=sleep)
        transport.fetched = []
        made.append(transport)
        return transport

    async with PgflowClient(transport=make) as client, FlowWorker(flow, db_url, **FAST):
        (transport,) = made
        whole = await client.start_flow("e2e_map", [1, 2])
        recorder(whole)
        await whole.wait_for_status("completed", timeout=WAIT)
        standin.withhold_after_join(FRESH_FOR_MS)
        partial = await client.start_flow("e2e_map", [3])
        recorder(partial)
        await wait_for_broadcast(standin, partial.run_id, "run:completed")
        timers = [t for run in (whole, partial) for t in transport._subs[run.run_id].timers]
        await sleep.wait_for_calls(2)
        sleep.release()
        await asyncio.wait_for(asyncio.gather(*timers), WAIT)
        assert transport.fetched == [partial.run_id]
        assert partial.status is FlowRunStatus.COMPLETED


async def test_get_run_reconciles_like_start_flow(
    db_url: str, standin: SupabaseStandIn, supabase: AsyncClient
) -> None:
    entered, gate = asyncio.Event(), asyncio.Event()
    flow = gated(entered, gate)
    sleep = GatedSleep(real=True)
    async with (
        FlowWorker(flow, db_url, **FAST),
        await PgflowClient.connect(db_url) as starter,
        over(supabase, sleep, reconcile_after=(0.05,)) as observer,
    ):
        started = await starter.start_flow("gated", {})
        await asyncio.wait_for(entered.wait(), WAIT)
        standin.withhold_after_join(FRESH_FOR_MS)
        run = await observer.get_run(started.run_id)
        assert run is not None
        assert run.step("first").status == "started"
        seen = recorder(run)
        gate.set()
        await started.wait_for_status("completed", timeout=WAIT)
        await wait_for_broadcast(standin, run.run_id, "run:completed")
        assert run.status is FlowRunStatus.STARTED
        await sleep.wait_for_calls(1)
        assert sleep.delays == [0.05]
        sleep.release()
        await run.wait_for_status("completed", timeout=10)
    assert seen == ["one+two", {"second": "one+two"}]


# -- channels closed by the server ----------------------------------------------------------------


async def test_a_closed_channel_is_rejoined_with_backoff_and_the_run_resynced(
    db_url: str, standin: SupabaseStandIn, supabase: AsyncClient
) -> None:
    entered, gate = asyncio.Event(), asyncio.Event()
    flow = gated(entered, gate)
    sleep = GatedSleep(real=False)
    async with (
        FlowWorker(flow, db_url, **FAST),
        await PgflowClient.connect(db_url) as witness,
        over(supabase, sleep, rejoin_backoff=(0.1, 0.4)) as client,
    ):
        run = await client.start_flow("gated", {})
        topic = topic_of(run.run_id)
        seen = recorder(run)
        witnessed = await witness.get_run(run.run_id)
        assert witnessed is not None
        await asyncio.wait_for(entered.wait(), WAIT)
        await wait_for_broadcast(standin, run.run_id, "step:first:started")
        before = len(standin.broadcasts(topic))

        standin.refuse_joins(4)
        assert await standin.close_channel(topic) == 1
        await sleep.wait_for_calls(1)  # the first rejoin was refused; backing off
        assert standin.refused_joins == 1
        assert standin.joined_topics() == {}
        assert client.subscriptions() == {run.run_id}  # still the client's to keep

        gate.set()  # the rest of the run happens while no channel is joined
        await witnessed.wait_for_status("completed", timeout=WAIT)
        await wait_for_broadcast(standin, run.run_id, "run:completed")
        missed = standin.broadcasts(topic)[before:]
        assert [r.event for r in missed] == [
            "step:first:completed",
            "step:second:started",
            "step:second:completed",
            "run:completed",
        ]
        assert all(r.delivered == 0 for r in missed), missed
        assert run.status is FlowRunStatus.STARTED

        sleep.release()
        await run.wait_for_status("completed", timeout=WAIT)
        assert seen == ["one+two", {"second": "one+two"}]  # replayed to the callbacks
        assert sleep.delays == [0.1, 0.2, 0.4, 0.4]  # doubling, capped
        assert standin.refused_joins == 4
        assert standin.joined_topics() == {topic: 1}
    assert standin.joined_topics() == {}


async def test_a_refused_join_fails_start_flow_and_leaves_nothing(
    db_url: str, standin: SupabaseStandIn, supabase: AsyncClient
) -> None:
    await define(db_url, mapping())
    sleep = GatedSleep(real=False)
    sleep.release()
    async with over(supabase, sleep) as client:
        standin.refuse_joins(1, reason="join limit reached")
        run_id = uuid.uuid4()
        with pytest.raises(SubscriptionError, match="join limit reached"):
            await client.start_flow("e2e_map", [1], run_id=run_id)
        assert client.subscriptions() == frozenset()
        assert client.runs == {}
        assert standin.joined_topics() == {}
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            cur = await conn.execute("select count(*) from pgflow.runs")
            assert await cur.fetchone() == (0,)  # the run was never started
        # realtime-py does not retry a join the transport gave up on.
        assert standin.refused_joins == 1
        run = await client.start_flow("e2e_map", [1], run_id=run_id)
        assert standin.joined_topics() == {topic_of(run.run_id): 1}
    assert sleep.delays == []

"""Trace propagation from ``start_flow`` to the run's tasks: a real worker and database, both
transports, spans read from the SDK's in-memory exporter.

The worker gets a tracer provider of its own; the client uses the global one, which stays the
API's no-op here (setting it is for a whole process: see
``test_the_task_spans_are_children_of_the_start_flow_span``, which runs in one of its own). A
no-op tracer's ``start_flow`` span is the caller's span itself, so here a task span's parent is
the test's own span.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgflow_client import PgflowClient, SyncPgflowClient
from pgflow_worker import Flow, FlowWorker
from pgflow_worker._sql_client import RunTraceContext, TraceContextCache
from tests.e2e.conftest import ClientFactory

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk is absent")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

ROOT = Path(__file__).resolve().parents[2]
FAST = {"max_poll_seconds": 1, "poll_interval_ms": 20}
WAIT = 30.0


class Tracing:
    """A tracer provider whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = sdk_trace.TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def task_spans(self, run_id: str) -> list[ReadableSpan]:
        return [
            s
            for s in self.exporter.get_finished_spans()
            if s.name.startswith("pgflow.task ")
            and s.attributes is not None
            and s.attributes.get("pgflow.run_id") == run_id
        ]


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    t = Tracing()
    yield t
    t.provider.shutdown()


def traced_flow(seen: dict[str, Any]) -> Flow:
    """Three steps, sync and async handlers and a map, each recording the span current in it."""
    flow = Flow("traced_e2e", max_attempts=1)

    @flow.array
    def items(input: dict[str, Any]) -> list[int]:
        seen.setdefault("items", []).append(trace.get_current_span().get_span_context())
        return list(range(input["n"]))

    @flow.map(array=items)
    async def double(item: int) -> int:
        seen.setdefault("double", []).append(trace.get_current_span().get_span_context())
        return item * 2

    @flow.step(depends_on=[double])
    def total(input: dict[str, Any]) -> int:
        seen.setdefault("total", []).append(trace.get_current_span().get_span_context())
        return sum(input["double"])

    return flow


def stored_context(db_url: str, run_id: str) -> RunTraceContext | None:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "select traceparent, tracestate from pgflow.run_trace_contexts where run_id = %s",
            (run_id,),
        ).fetchone()
    return None if row is None else RunTraceContext(row[0], row[1])


def assert_handlers_saw_their_spans(spans: list[ReadableSpan], seen: dict[str, Any]) -> None:
    """Every handler, sync (in its thread) or async, ran with its task's span current."""
    by_step: dict[str, set[int]] = {}
    for span in spans:
        assert span.attributes is not None
        by_step.setdefault(str(span.attributes["pgflow.step_slug"]), set()).add(
            span.context.span_id
        )
    for step in ("items", "double", "total"):
        assert {c.span_id for c in seen[step]} == by_step[step], step
        assert all(c.is_valid for c in seen[step])


async def test_a_run_started_inside_a_span_has_its_tasks_in_that_trace(
    db_url: str, make_client: ClientFactory, tracing: Tracing
) -> None:
    seen: dict[str, Any] = {}
    client = await make_client()
    async with FlowWorker(traced_flow(seen), db_url, tracer_provider=tracing.provider, **FAST):
        with tracing.tracer.start_as_current_span("request") as request:
            run = await client.start_flow("traced_e2e", {"n": 3})
        await run.wait_for_status("completed", timeout=WAIT)
    assert run.output == {"total": 6}

    stored = stored_context(db_url, run.run_id)
    assert stored is not None
    _, trace_id, parent_id, _ = stored.traceparent.split("-")
    assert int(trace_id, 16) == request.get_span_context().trace_id
    assert int(parent_id, 16) == request.get_span_context().span_id
    spans = tracing.task_spans(run.run_id)
    assert len(spans) == 1 + 3 + 1
    for span in spans:
        assert span.context.trace_id == request.get_span_context().trace_id
        assert span.parent is not None
        assert span.parent.span_id == request.get_span_context().span_id
        assert span.parent.is_remote  # read back from the database
    assert_handlers_saw_their_spans(spans, seen)


async def test_a_run_started_outside_any_span_has_root_task_spans(
    db_url: str, make_client: ClientFactory, tracing: Tracing
) -> None:
    """Even with a span current where the worker started: it has nothing to do with the run."""
    seen: dict[str, Any] = {}
    client = await make_client()
    with tracing.tracer.start_as_current_span("worker lifetime"):
        worker = FlowWorker(traced_flow(seen), db_url, tracer_provider=tracing.provider, **FAST)
        await worker.__aenter__()
    try:
        run = await client.start_flow("traced_e2e", {"n": 2})
        await run.wait_for_status("completed", timeout=WAIT)
    finally:
        await worker.__aexit__(None, None, None)
    assert stored_context(db_url, run.run_id) is None
    spans = tracing.task_spans(run.run_id)
    assert len(spans) == 1 + 2 + 1
    assert all(span.parent is None for span in spans)
    assert len({span.context.trace_id for span in spans}) == len(spans)  # a trace each
    assert_handlers_saw_their_spans(spans, seen)


async def test_a_run_started_by_raw_sql_has_root_task_spans(db_url: str, tracing: Tracing) -> None:
    """As pgflow's own clients start runs: ``pgflow.start_flow``, no context stored, even
    when called inside a span."""
    seen: dict[str, Any] = {}
    async with (
        FlowWorker(traced_flow(seen), db_url, tracer_provider=tracing.provider, **FAST),
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn,
    ):
        with tracing.tracer.start_as_current_span("request"):
            cur = await conn.execute(
                "select run_id::text from pgflow.start_flow('traced_e2e', %s)", (Jsonb({"n": 1}),)
            )
            row = await cur.fetchone()
        assert row is not None
        run_id = row[0]
        async with await PgflowClient.connect(db_url) as client:
            run = await client.get_run(run_id)
            assert run is not None
            await run.wait_for_status("completed", timeout=WAIT)
    assert stored_context(db_url, run_id) is None
    spans = tracing.task_spans(run_id)
    assert len(spans) == 3
    assert all(span.parent is None for span in spans)


async def test_the_sync_client_carries_the_callers_trace(db_url: str, tracing: Tracing) -> None:
    """The sync twin runs its calls on a loop thread of its own: the caller's span goes
    with them."""
    seen: dict[str, Any] = {}

    def start_and_wait() -> tuple[str, int, int]:
        with (
            SyncPgflowClient.connect(db_url) as client,
            tracing.tracer.start_as_current_span("request") as request,
        ):
            run = client.start_flow("traced_e2e", {"n": 1})
            run.wait_for_status("completed", timeout=WAIT)
            context = request.get_span_context()
            return run.run_id, context.trace_id, context.span_id

    async with FlowWorker(traced_flow(seen), db_url, tracer_provider=tracing.provider, **FAST):
        run_id, trace_id, span_id = await asyncio.to_thread(start_and_wait)
    spans = tracing.task_spans(run_id)
    assert len(spans) == 3
    assert {(s.context.trace_id, s.parent.span_id if s.parent else None) for s in spans} == {
        (trace_id, span_id)
    }


async def test_a_role_without_the_traced_function_still_starts_runs(
    db_url: str, tracing: Tracing
) -> None:
    """A client role granted only what pgflow's clients need starts runs as before inside a
    span; they simply carry no trace context."""
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    role = f"untraced_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "create role {r} login password 'untraced';"
                "grant usage on schema pgflow, realtime to {r};"
                "grant execute on function pgflow.start_flow_with_states(text, jsonb, uuid),"
                " pgflow.get_run_with_states(uuid) to {r};"
                "grant select on realtime.messages to {r}"
            ).format(r=sql.Identifier(role))
        )
    try:
        seen: dict[str, Any] = {}
        async with (
            FlowWorker(traced_flow(seen), db_url, tracer_provider=tracing.provider, **FAST),
            await PgflowClient.connect(
                make_conninfo(db_url, user=role, password="untraced")
            ) as client,
        ):
            with tracing.tracer.start_as_current_span("request"):
                run = await client.start_flow("traced_e2e", {"n": 1})
            await run.wait_for_status("completed", timeout=WAIT)
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))
    assert stored_context(db_url, run.run_id) is None
    assert all(span.parent is None for span in tracing.task_spans(run.run_id))


@pytest.mark.parametrize("transport", ["postgres", "supabase"])
async def test_on_the_official_sql_runs_start_and_tasks_are_roots(
    official_db_url: str, transport: str, tracing: Tracing
) -> None:
    """pgflow's own SQL stores no trace context: the client starts runs as before (over
    Supabase, the traced RPC is answered PGRST202 and it falls back), the worker finds no
    table to read, and task spans are roots."""
    from tests.interop.test_official_sql import client_over

    seen: dict[str, Any] = {}
    async with (
        FlowWorker(traced_flow(seen), official_db_url, tracer_provider=tracing.provider, **FAST),
        client_over(transport, official_db_url) as client,
    ):
        with tracing.tracer.start_as_current_span("request"):
            first = await client.start_flow("traced_e2e", {"n": 1})
            second = await client.start_flow("traced_e2e", {"n": 2})
        for run in (first, second):
            await run.wait_for_status("completed", timeout=WAIT)
    with psycopg.connect(official_db_url) as conn:
        row = conn.execute("select to_regclass('pgflow.run_trace_contexts')").fetchone()
    assert row == (None,)
    for run in (first, second):
        spans = tracing.task_spans(run.run_id)
        assert spans
        assert all(span.parent is None for span in spans)
    both = tracing.task_spans(first.run_id) + tracing.task_spans(second.run_id)
    assert_handlers_saw_their_spans(both, seen)


def test_the_task_spans_are_children_of_the_start_flow_span(db_url: str) -> None:
    """With an SDK behind the global provider, as an application sets it up: request span →
    ``pgflow.start_flow`` span → every task span of the run, in one process."""
    script = ROOT / "tests" / "e2e" / "trace_chain.py"
    out = subprocess.run(
        [sys.executable, str(script), db_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "ok"


def test_the_cache_keeps_the_most_recent_runs() -> None:
    cache = TraceContextCache(max_runs=2)
    a, b, c = (uuid.uuid4() for _ in range(3))
    cache.put(a, RunTraceContext("00-" + "1" * 32 + "-" + "2" * 16 + "-01"))
    cache.put(b, None)  # known to have none
    assert cache.missing([a, b, c, c]) == [c]
    assert cache.get(a) is not None  # now the most recent
    cache.put(c, None)
    assert len(cache) == 2
    assert b not in cache
    assert cache.missing([a, b, c]) == [b]


async def test_the_worker_tells_whether_it_may_read_the_contexts(
    db_url: str, official_db_url: str
) -> None:
    """Absent on pgflow's SQL; present but unreadable for a role without SELECT on it (the
    worker then reads nothing, rather than failing its polls); readable once granted."""
    from psycopg import sql
    from psycopg.conninfo import make_conninfo
    from psycopg_pool import AsyncConnectionPool

    from pgflow_worker._sql_client import PgflowSqlClient

    async def detected(dsn: str) -> str:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool:
            client = PgflowSqlClient(pool)
            await client.detect_flavour()
            return client.trace_table

    assert await detected(official_db_url) == "absent"
    assert await detected(db_url) == "readable"
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "create role {r} login password 'reader'; grant usage on schema pgflow to {r}"
            ).format(r=sql.Identifier(role))
        )
    try:
        role_dsn = make_conninfo(db_url, user=role, password="reader")
        assert await detected(role_dsn) == "unreadable"
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("grant select on pgflow.run_trace_contexts to {}").format(
                    sql.Identifier(role)
                )
            )
        assert await detected(role_dsn) == "readable"
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))

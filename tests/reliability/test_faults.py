"""Faults, one per test: a worker killed outright, the database restarted, the realtime link
down while runs end, handlers that hang or hog the connection pool, stalled-task recovery.

Faults already covered elsewhere (hung sync/async handlers, lost leases, SIGTERM drain,
realtime drops mid-run) live in tests/worker and tests/e2e; docs/reliability.md lists them all.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from supabase import AsyncClientOptions, acreate_client

from pgflow_client import FlowRunStatus, PgflowClient, StatusUnreachable
from pgflow_worker import Flow, FlowWorker, LocalPostgres, StepContext
from tests.reliability.helpers import (
    WorkerProcess,
    audit_async,
    grant_postgres_client,
    notifications,
    rows,
    run_of,
    scalar,
    start_run,
    tasks_of,
    temporary_role,
    url_as,
    wait_for_workers,
    wait_terminal,
    worker_processes,
)
from tests.supabase_standin import SupabaseStandIn
from tests.supabase_standin.fixtures import close_client

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 20}


# -- a worker killed with SIGKILL ----------------------------------------------------------------


async def test_sigkill_mid_task_the_tasks_come_back_after_the_lease(
    db_url: str, log_dir: Path
) -> None:
    """Four tasks are running when their worker is killed: no drain, no report, no goodbye.

    Their messages stay hidden for the step's timeout + 2 s (the lease start_tasks set); then
    the next worker reads them, start_tasks fails the expired attempts (retry with backoff),
    and the second attempts complete. Every attempt is counted.
    """
    items = [{"x": i, "hang": True} for i in range(4)]
    with worker_processes() as workers:
        doomed = WorkerProcess(db_url, "vanish", log_dir, "--concurrency", "4")
        workers.append(doomed)
        await wait_for_workers(db_url, "rel_vanish", 1)
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener:
            await listener.execute("listen rel_started")
            run_id = await start_run(db_url, "rel_vanish", items)
            started = await notifications(listener, 4, within=30)
        assert sorted(started) == [f"{run_id}:{i}:1" for i in range(4)]
        assert doomed.kill() == -9

        before = await tasks_of(db_url, run_id)
        assert [(t["status"], t["attempts_count"]) for t in before] == [("started", 1)] * 4
        (vanished,) = {t["last_worker_id"] for t in before}

        rescuer = WorkerProcess(db_url, "vanish", log_dir, "--concurrency", "4")
        workers.append(rescuer)
        await wait_terminal(db_url, [run_id], within=60)
        assert await rescuer.terminate() == 0, rescuer.log()

    run = await run_of(db_url, run_id)
    assert run["status"] == "completed"
    outputs = run["output"]["work"]
    assert [o["x"] for o in outputs] == [0, 1, 2, 3]
    assert {(o["attempt"], o["pid"]) for o in outputs} == {(2, rescuer.pid)}
    after = await tasks_of(db_url, run_id)
    assert [(t["status"], t["attempts_count"]) for t in after] == [("completed", 2)] * 4
    assert all("lease expired" in t["error_message"] for t in after)
    # The killed worker never said goodbye; the rescuer did.
    stopped = await rows(db_url, "select worker_id, stopped_at from pgflow.workers")
    by_id = {str(r["worker_id"]): r["stopped_at"] for r in stopped}
    assert by_id.pop(vanished) is None
    assert all(at is not None for at in by_id.values())
    assert await audit_async(db_url, "rel_vanish") == []


# -- requeue_stalled_tasks -----------------------------------------------------------------------


async def test_requeue_stalled_tasks_recovers_a_vanished_workers_tasks(
    db_url: str, log_dir: Path
) -> None:
    """No worker polls while the tasks of a killed worker sit `started`; requeue_stalled_tasks
    (run by cron in production) puts them back in the queue, and the next worker runs them."""
    with worker_processes() as workers:
        doomed = WorkerProcess(db_url, "vanish", log_dir, "--concurrency", "3")
        workers.append(doomed)
        await wait_for_workers(db_url, "rel_vanish", 1)
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener:
            await listener.execute("listen rel_started")
            run_id = await start_run(
                db_url, "rel_vanish", [{"x": i, "hang": True} for i in range(3)]
            )
            await notifications(listener, 3, within=30)
        doomed.kill()

        # Nothing is stalled until the step's timeout + 30 s have passed.
        assert await scalar(db_url, "select pgflow.requeue_stalled_tasks()") == 0
        await backdate(db_url, run_id, seconds=3600)
        assert await scalar(db_url, "select pgflow.requeue_stalled_tasks()") == 3
        requeued = await tasks_of(db_url, run_id)
        assert [(t["status"], t["requeued_count"]) for t in requeued] == [("queued", 1)] * 3
        visible = await scalar(
            db_url, "select count(*) from pgmq.q_rel_vanish where vt <= clock_timestamp()"
        )
        assert visible == 3

        rescuer = WorkerProcess(db_url, "vanish", log_dir)
        workers.append(rescuer)
        await wait_terminal(db_url, [run_id], within=30)
        assert await rescuer.terminate() == 0, rescuer.log()

    run = await run_of(db_url, run_id)
    assert run["status"] == "completed"
    assert {o["attempt"] for o in run["output"]["work"]} == {2}
    after = await tasks_of(db_url, run_id)
    assert [(t["status"], t["attempts_count"], t["requeued_count"]) for t in after] == [
        ("completed", 2, 1)
    ] * 3
    assert await audit_async(db_url, "rel_vanish") == []


async def test_requeue_stalled_tasks_gives_up_after_three_requeues(
    db_url: str, log_dir: Path
) -> None:
    """A task whose workers keep vanishing is requeued three times; the fourth time it is
    marked permanently stalled and its message archived, so no worker picks it up again
    (the run then waits for an operator)."""
    with worker_processes() as workers:
        # The first worker only defines the flow; it is stopped before any run starts.
        definer = WorkerProcess(db_url, "vanish", log_dir)
        workers.append(definer)
        await wait_for_workers(db_url, "rel_vanish", 1)
        assert await definer.terminate() == 0

        run_id = await start_run(db_url, "rel_vanish", [{"x": 0}])
        ghost = uuid.uuid4()
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await conn.execute(
                "insert into pgflow.workers (worker_id, queue_name, function_name)"
                " values (%s, 'rel_vanish', 'ghost')",
                (ghost,),
            )
            for expected in [1, 1, 1, 0]:
                # A worker claims the task and vanishes; an hour later the cron runs.
                cur = await conn.execute(
                    "select count(*) from pgflow.start_tasks('rel_vanish',"
                    " array(select msg_id from pgmq.read('rel_vanish', 10, 10)), %s)",
                    (ghost,),
                )
                assert await cur.fetchone() == (1,)
                await backdate(db_url, run_id, seconds=3600)
                cur = await conn.execute("select pgflow.requeue_stalled_tasks()")
                assert await cur.fetchone() == (expected,)

        (task,) = await tasks_of(db_url, run_id)
        assert (task["status"], task["requeued_count"], task["attempts_count"]) == ("started", 3, 4)
        assert task["permanently_stalled_at"] is not None
        assert await scalar(db_url, "select count(*) from pgmq.q_rel_vanish") == 0
        archived = await scalar(
            db_url,
            "select count(*) from pgmq.a_rel_vanish where msg_id = %s",
            (task["message_id"],),
        )
        assert archived == 1
        assert await scalar(db_url, "select pgflow.requeue_stalled_tasks()") == 0

        # A live worker runs later work of the same queue, and never the stalled task.
        worker = WorkerProcess(db_url, "vanish", log_dir)
        workers.append(worker)
        later = await start_run(db_url, "rel_vanish", [{"x": 1}])
        await wait_terminal(db_url, [later], within=30)
        assert await worker.terminate() == 0

    assert (await run_of(db_url, later))["status"] == "completed"
    (unchanged,) = await tasks_of(db_url, run_id)
    assert unchanged == task
    assert (await run_of(db_url, run_id))["status"] == "started"


async def backdate(db_url: str, run_id: uuid.UUID, *, seconds: float) -> None:
    """Pretend the run's started tasks began ``seconds`` earlier (instead of waiting)."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(
            "update pgflow.step_tasks set started_at = started_at - make_interval(secs => %s),"
            " queued_at = queued_at - make_interval(secs => %s)"
            " where run_id = %s and status = 'started'",
            (seconds, seconds, run_id),
        )


# -- PostgreSQL restarted mid-run ----------------------------------------------------------------


def gated_flow(slug: str, entered: asyncio.Event, gate: asyncio.Event) -> Flow:
    flow = Flow(slug, max_attempts=3, base_delay=1)

    @flow.step
    async def first(input: Any) -> str:
        entered.set()
        await gate.wait()
        return "one"

    @flow.map
    def each(x: int) -> int:
        return x * 10

    @flow.step(depends_on=[first, each])
    def last(input: dict[str, Any]) -> dict[str, Any]:
        return {"first": input["first"], "sum": sum(input["each"])}

    return flow


async def test_postgres_restart_mid_run(own_server: LocalPostgres) -> None:
    """The server goes down while a handler runs and comes back on the same port. The worker
    and the client reconnect by themselves: the handler's result is reported, the run
    completes, a `wait_for_status` pending across the restart resolves, and new runs work."""
    dsn = own_server.dsn("postgres")
    port = own_server.port
    entered, gate = asyncio.Event(), asyncio.Event()
    flow = gated_flow("restart", entered, gate)
    async with (
        FlowWorker(flow, dsn, **FAST, heartbeat_interval=0.5),
        await PgflowClient.connect(dsn) as client,
    ):
        run = await client.start_flow("restart", [1, 2, 3])
        pending = asyncio.create_task(run.wait_for_status("completed", timeout=90))
        seen: list[str] = []
        run.on("*", lambda e: seen.append(e.event_type))
        await asyncio.wait_for(entered.wait(), 20)

        await asyncio.to_thread(own_server.stop)  # the worker and client run on meanwhile
        with pytest.raises(psycopg.OperationalError):
            await psycopg.AsyncConnection.connect(dsn, connect_timeout=2)
        await asyncio.to_thread(own_server.start)
        assert own_server.port == port
        gate.set()  # the handler finishes; its result must reach the restarted server

        await asyncio.wait_for(pending, 90)
        assert run.status is FlowRunStatus.COMPLETED
        assert run.output == {"last": {"first": "one", "sum": 60}}
        assert seen[-1] == "run:completed"

        # Both keep working after the restart: a new run, start to end.
        again = await client.start_flow("restart", [4])
        await again.wait_for_status("completed", timeout=60)
        assert again.output == {"last": {"first": "one", "sum": 40}}

    # The result came from the attempt that ran across the restart, reported once the server
    # was back: not from a second attempt after the lease ran out.
    (task,) = [t for t in await tasks_of(dsn, uuid.UUID(run.run_id)) if t["step_slug"] == "first"]
    assert (task["status"], task["attempts_count"], task["error_message"]) == ("completed", 1, None)
    assert task["output"] == "one"
    assert await audit_async(dsn, "restart") == []


# -- realtime down while runs end ----------------------------------------------------------------


def ending_flow(entered: asyncio.Event, gate: asyncio.Event) -> Flow:
    flow = Flow("ending", max_attempts=1)

    @flow.step
    async def wait(input: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        await gate.wait()
        if input["fail"]:
            raise RuntimeError("refused on purpose")
        return {"ok": True}

    @flow.step(depends_on=[wait])
    def after(input: dict[str, Any]) -> str:
        return "done"

    return flow


async def check_runs_ending_while_disconnected(
    client: PgflowClient, db_url: str, cut: Any, restore: Any
) -> None:
    """Two runs (one completes, one fails) end entirely while the client cannot receive
    events; once the link is back, the client catches up from the snapshot: both waits
    resolve with the right terminal state and the missed transitions reach the callbacks."""
    entered, gate = asyncio.Event(), asyncio.Event()
    flow = ending_flow(entered, gate)
    async with FlowWorker(flow, db_url, **FAST, max_concurrent=2):
        good = await client.start_flow("ending", {"fail": False})
        bad = await client.start_flow("ending", {"fail": True})
        waits = [
            asyncio.create_task(good.wait_for_status("completed", timeout=60)),
            asyncio.create_task(bad.wait_for_status("completed", timeout=60)),
        ]
        seen: dict[str, list[str]] = {good.run_id: [], bad.run_id: []}
        for run in (good, bad):
            run.on("*", lambda e: seen[e.run_id].append(e.event_type))
        await asyncio.wait_for(entered.wait(), 20)

        await cut()
        gate.set()
        await wait_terminal(db_url, [uuid.UUID(good.run_id), uuid.UUID(bad.run_id)], within=30)
        assert good.status is FlowRunStatus.STARTED  # nothing could reach the client
        assert bad.status is FlowRunStatus.STARTED
        await restore()

        await asyncio.wait_for(waits[0], 60)
        with pytest.raises(StatusUnreachable) as unreachable:
            await asyncio.wait_for(waits[1], 60)
    assert unreachable.value.status == "failed"
    assert unreachable.value.error_message == "RuntimeError: refused on purpose"
    assert good.output == {"after": "done"}
    assert good.step("after").status == "completed"
    assert bad.step("wait").status == "failed"
    assert seen[good.run_id][-1] == "run:completed"
    assert seen[bad.run_id][-1] == "run:failed"


async def test_postgres_transport_catches_up_after_an_outage(db_url: str) -> None:
    """The client's role is barred from logging in and its LISTEN session is ended, so it
    cannot reconnect until the outage is over."""
    with temporary_role(db_url, "rel_client") as role:
        grant_postgres_client(db_url, role)

        async def cut() -> None:
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
                await conn.execute(f'alter role "{role}" nologin'.encode())
                cur = await conn.execute(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity"
                    " where usename = %s and query ilike 'listen %%'",
                    (role,),
                )
                assert await cur.fetchone() == (1,)

        async def restore() -> None:
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
                await conn.execute(f'alter role "{role}" login'.encode())

        async with await PgflowClient.connect(url_as(db_url, role)) as client:
            await check_runs_ending_while_disconnected(client, db_url, cut, restore)


async def test_supabase_transport_catches_up_after_an_outage(db_url: str) -> None:
    """Realtime refuses connections while the runs end, then comes back."""
    async with SupabaseStandIn(db_url) as standin:

        async def cut() -> None:
            standin.pause_realtime()
            assert await standin.drop_realtime_connections() == 1

        async def restore() -> None:
            standin.resume_realtime()

        supabase = await acreate_client(
            standin.url, standin.key, AsyncClientOptions(realtime={"initial_backoff": 0.2})
        )
        try:
            # No background reconciliation: only the rejoin may bring the client up to date.
            async with PgflowClient(supabase, reconcile_after=()) as client:
                await check_runs_ending_while_disconnected(client, db_url, cut, restore)
        finally:
            await close_client(supabase)


async def test_supabase_transport_recovers_after_realtime_gives_up_reconnecting(
    db_url: str,
) -> None:
    """realtime-py stops reconnecting after ``max_retries`` failed attempts (about 15 s with
    its defaults). An outage longer than that must not leave the client deaf for good: once
    Realtime is back, the client reconnects, rejoins and catches up."""
    async with SupabaseStandIn(db_url) as standin:
        supabase = await acreate_client(
            standin.url,
            standin.key,
            AsyncClientOptions(realtime={"initial_backoff": 0.05, "max_retries": 2}),
        )
        try:
            async with PgflowClient(supabase, reconcile_after=()) as client:
                entered, gate = asyncio.Event(), asyncio.Event()
                async with FlowWorker(ending_flow(entered, gate), db_url, **FAST):
                    run = await client.start_flow("ending", {"fail": False})
                    await asyncio.wait_for(entered.wait(), 20)
                    standin.pause_realtime()
                    assert await standin.drop_realtime_connections() == 1
                    # Both of realtime-py's attempts are refused: it has given up.
                    await standin.wait_until(lambda: standin.refused_connections >= 2, within=10)
                    gate.set()
                    await wait_terminal(db_url, [uuid.UUID(run.run_id)], within=30)
                    standin.resume_realtime()
                    await run.wait_for_status("completed", timeout=30)
            assert run.output == {"after": "done"}
        finally:
            await close_client(supabase)


# -- handlers that hang or hog resources ---------------------------------------------------------


async def test_hung_sync_handlers_do_not_starve_later_tasks(db_url: str) -> None:
    """Sync handlers that never return are abandoned at their timeout (a thread cannot be
    killed). Later tasks must still get a thread: quick tasks after the hung ones complete."""
    release = threading.Event()
    flow = Flow("starve", timeout=3, max_attempts=1)

    @flow.map
    def each(x: int) -> int:
        if x < 0:
            release.wait(120)
        return x

    try:
        # Two at a time, so the two hung runs leave four threads behind: as many as a pool
        # sized max_concurrent + 2 would have.
        async with FlowWorker(flow, db_url, **FAST, max_concurrent=2):
            hung = [await start_run(db_url, "starve", [-1, -2]) for _ in range(2)]
            await wait_terminal(db_url, hung, within=60)
            quick = await start_run(db_url, "starve", [1, 2, 3])
            await wait_terminal(db_url, [quick], within=30)
    finally:
        release.set()
    assert [(await run_of(db_url, r))["status"] for r in hung] == ["failed", "failed"]
    done = await run_of(db_url, quick)
    assert (done["status"], done["output"]) == ("completed", {"each": [1, 2, 3]}), await tasks_of(
        db_url, quick
    )
    assert await audit_async(db_url, "starve") == []


async def test_sigterm_with_a_hung_sync_handler_exits_after_the_shutdown_timeout(
    db_url: str, log_dir: Path
) -> None:
    """A worker whose sync handler never returns still exits on SIGTERM once the shutdown
    timeout is over; the next worker retries the task after its lease."""
    with worker_processes() as workers:
        worker = WorkerProcess(db_url, "hang_sync", log_dir, "--shutdown-timeout", "0.5")
        workers.append(worker)
        await wait_for_workers(db_url, "rel_hang_sync", 1)
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener:
            await listener.execute("listen rel_started")
            run_id = await start_run(db_url, "rel_hang_sync", {})
            await notifications(listener, 1, within=30)
        try:
            assert await worker.terminate(within=15) == 0, worker.log()
        except TimeoutError:
            pytest.fail("the worker did not exit within 15 s of SIGTERM:\n" + worker.log())
        assert "will be retried" in worker.log()

        workers.append(WorkerProcess(db_url, "hang_sync", log_dir))
        await wait_terminal(db_url, [run_id], within=30)
    run = await run_of(db_url, run_id)
    assert (run["status"], run["output"]) == ("completed", {"stuck": "attempt 2"})


async def test_handlers_exhausting_the_connection_pool(db_url: str) -> None:
    """Four handlers each want two of the pool's two connections at once: the pool runs dry,
    and polling and reporting wait with them. The step timeout cancels the handlers, which
    gives the connections back; the attempts are reported failed, retried, and complete."""
    flow = Flow("hog", timeout=3, base_delay=1, max_attempts=2)

    @flow.map
    async def each(x: int, ctx: StepContext) -> int:
        if ctx.attempt == 1 and x < 5:
            async with ctx.connection() as one, ctx.connection() as two:
                await one.execute("select 1")
                await two.execute("select 1")
                await asyncio.Event().wait()
        async with ctx.connection() as conn:
            cur = await conn.execute("select %s::int * 2", (x,))
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async with FlowWorker(flow, db_url, **FAST, max_concurrent=4, max_pg_connections=2) as worker:
        run_id = await start_run(db_url, "hog", [1, 2, 3, 4])
        await wait_terminal(db_url, [run_id], within=60)
        later = await start_run(db_url, "hog", [5])  # the worker is still in business
        await wait_terminal(db_url, [later], within=30)
    run = await run_of(db_url, run_id)
    assert (run["status"], run["output"]) == ("completed", {"each": [2, 4, 6, 8]})
    tasks = await tasks_of(db_url, run_id)
    assert [(t["status"], t["attempts_count"]) for t in tasks] == [("completed", 2)] * 4
    assert all("timed out after 3 s" in t["error_message"] for t in tasks)
    assert (await run_of(db_url, later))["output"] == {"each": [10]}
    assert worker.failed == 4
    assert await audit_async(db_url, "hog") == []


# -- SystemExit and KeyboardInterrupt raised by handlers -----------------------------------------

BASE_EXCEPTIONS = [SystemExit, KeyboardInterrupt]


def exiting_flow(
    slug: str, exc_type: type[BaseException], kind: str, *, max_attempts: int, base_delay: int = 1
) -> Flow:
    """One step that raises ``exc_type`` on its first attempt (input ``{"exit": true}``) and
    returns its attempt number otherwise; sync handlers run on a thread of their own."""
    flow = Flow(slug, max_attempts=max_attempts, base_delay=base_delay)

    def body(input: dict[str, Any], ctx: StepContext) -> dict[str, int]:
        if input.get("exit") and ctx.attempt == 1:
            raise exc_type("attempt 1")
        return {"attempt": ctx.attempt}

    if kind == "sync":

        @flow.step(slug="only")
        def only_sync(input: dict[str, Any], ctx: StepContext) -> dict[str, int]:
            return body(input, ctx)

    else:

        @flow.step(slug="only")
        async def only_async(input: dict[str, Any], ctx: StepContext) -> dict[str, int]:
            return body(input, ctx)

    return flow


async def check_worker_still_serves(db_url: str, worker: FlowWorker, slug: str) -> None:
    """The worker is alive after the fault: registered, not stopped, and it runs a new run."""
    (row,) = await rows(
        db_url, "select stopped_at from pgflow.workers where worker_id = %s", (worker.worker_id,)
    )
    assert row["stopped_at"] is None
    later = await start_run(db_url, slug, {})
    await wait_terminal(db_url, [later], within=30)
    done = await run_of(db_url, later)
    assert (done["status"], done["output"]) == ("completed", {"only": {"attempt": 1}})
    (task,) = await tasks_of(db_url, later)
    assert task["last_worker_id"] == str(worker.worker_id)


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS, ids=lambda e: e.__name__)
async def test_base_exception_in_a_handler_is_retried_as_configured(
    db_url: str, caplog: pytest.LogCaptureFixture, exc_type: type[BaseException], kind: str
) -> None:
    """A handler raising SystemExit or KeyboardInterrupt fails only its attempt: with
    max_attempts=2 the task is retried after its base delay and the run completes. The worker
    counts one failure, records the exception by name, and keeps serving."""
    caplog.set_level(logging.WARNING, logger="pgflow.worker")
    flow = exiting_flow("exits", exc_type, kind, max_attempts=2)
    async with FlowWorker(flow, db_url, **FAST) as worker:
        run_id = await start_run(db_url, "exits", {"exit": True})
        await wait_terminal(db_url, [run_id], within=30)
        run = await run_of(db_url, run_id)
        assert (run["status"], run["output"]) == ("completed", {"only": {"attempt": 2}})
        (task,) = await tasks_of(db_url, run_id)
        assert (task["status"], task["attempts_count"]) == ("completed", 2)
        # fail_task keeps the failed attempt's error on the task; the completion leaves it.
        assert task["error_message"] == f"{exc_type.__name__}: attempt 1"
        assert worker.failed == 1
        await check_worker_still_serves(db_url, worker, "exits")
    assert (worker.failed, worker.completed) == (1, 2)
    failures = [r for r in caplog.records if "attempt 1 failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]
    assert failures[0].exc_info is not None
    assert failures[0].exc_info[0] is exc_type
    # The retry waited out its delay: base_delay * 2 ** attempts_count = 2 s after the failure.
    retried_at = datetime.fromisoformat(task["started_at"]).timestamp()
    assert retried_at - failures[0].created >= 1.9, (retried_at, failures[0].created)
    assert await audit_async(db_url, "exits") == []


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS, ids=lambda e: e.__name__)
async def test_base_exception_in_a_handler_fails_the_run_without_retries(
    db_url: str, exc_type: type[BaseException], kind: str
) -> None:
    """With max_attempts=1 the same handler fails its task, step and run for good; nothing is
    left in the queue, and the worker keeps serving."""
    flow = exiting_flow("exits", exc_type, kind, max_attempts=1)
    async with FlowWorker(flow, db_url, **FAST) as worker:
        run_id = await start_run(db_url, "exits", {"exit": True})
        await wait_terminal(db_url, [run_id], within=30)
        run = await run_of(db_url, run_id)
        assert run["status"] == "failed"
        (task,) = await tasks_of(db_url, run_id)
        error = f"{exc_type.__name__}: attempt 1"
        assert (task["status"], task["attempts_count"], task["error_message"]) == (
            "failed",
            1,
            error,
        )
        (step,) = await rows(
            db_url,
            "select status, error_message from pgflow.step_states where run_id = %s",
            (run_id,),
        )
        assert step == {"status": "failed", "error_message": error}
        assert await scalar(db_url, "select count(*) from pgmq.q_exits") == 0
        archived = await scalar(
            db_url, "select count(*) from pgmq.a_exits where msg_id = %s", (task["message_id"],)
        )
        assert archived == 1
        assert worker.failed == 1
        await check_worker_still_serves(db_url, worker, "exits")
    assert (worker.failed, worker.completed) == (1, 1)
    assert await audit_async(db_url, "exits") == []

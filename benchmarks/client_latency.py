"""Client benchmarks: event latency, ``start_flow`` latency, one client observing many runs.

Both transports are measured in the same invocation, on the same server and database:
``PgflowClient.connect(dsn)`` (LISTEN/NOTIFY) and ``PgflowClient(supabase_client)`` through the
Supabase stand-in of the test suite, which runs in a process of its own as a Realtime server
and PostgREST would. Every figure comes with a baseline measured in the same run:

* **event latency**: from the commit of the transaction that emits an event to the client's
  callback. The SQL is driven directly (``pgmq.read`` → ``start_tasks`` → ``complete_task``,
  one task at a time); the transaction's last act is ``clock_timestamp()``, evaluated after
  ``complete_task`` has returned and immediately before the implicit commit, so the figure
  includes the commit itself. The callback takes ``time.time()`` on the same host. Baseline:
  a bare ``pg_notify`` committed the same way and received by a bare ``LISTEN`` connection.
* **start_flow latency**: from the call to its return with a confirmed subscription, while a
  worker process runs the steps at once. Baseline: the TypeScript client's fixed 300 ms
  settle delay. Every event in ``realtime.messages`` for those runs must be seen by the
  client: a callback fired for it, or the state returned by ``start_flow`` already had it.
  Over Supabase the client runs with ``reconcile_after=()`` here, so a lost broadcast cannot
  be hidden by the background snapshot refresh.
* **1,000 concurrent runs on one client**: Python memory per run (tracemalloc) while all
  are subscribed, CPU time of the client's process per event while a worker runs
  them all. Baseline: a bare observer of the same runs (a LISTEN connection; plain realtime
  channels) under the same load.

Run: ``uv run python -m benchmarks.client_latency`` (``--help`` for sizes and repeats).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from benchmarks._common import (
    REPO,
    LoadLog,
    WorkerProcess,
    describe_machine,
    markdown_table,
    median,
    percentile,
    progress,
)
from benchmarks.worker_throughput import chain
from pgflow_client import FlowRun, PgflowClient
from pgflow_worker import ensure_flow
from tests._stack import Stack

SLUG = chain.slug
STEPS = ("a", "b", "c")
# The events each step's complete_task commits (the next step starts in the same transaction).
EMITS = {
    "a": ("step:a:completed", "step:b:started"),
    "b": ("step:b:completed", "step:c:started"),
    "c": ("step:c:completed", "run:completed"),
}
EVENTS_AFTER_START = sum(len(v) for v in EMITS.values())
TS_SETTLE_DELAY = 0.300
WAIT = 10.0
BENCH_WORKER = uuid.UUID("00000000-0000-0000-0000-0000000c11e7")
RANKS = {
    "run": {"started": 0, "completed": 1, "failed": 2},
    "step": {"created": 0, "started": 1, "completed": 2, "failed": 3, "skipped": 4},
}

STAMPED_COMPLETE = (
    "select extract(epoch from clock_timestamp())::float8"
    " from (select count(*) from pgflow.complete_task(%s::uuid, %s, %s, %s)) done"
)
STAMPED_NOTIFY = (
    "select extract(epoch from clock_timestamp())::float8"
    " from (select count(*) from (select pg_notify(%s, %s)) sent) done"
)
FLOOR_CHANNEL = "pgflow_bench_floor"


def event_key(event: Any) -> str:
    """``step:<slug>:<status>`` or ``run:<status>``, as the broadcast names the event."""
    step = getattr(event, "step_slug", None)
    status = event.status.value
    return f"step:{step}:{status}" if step else f"run:{status}"


# -- transports --------------------------------------------------------------------------------


class StandInProcess:
    """The Supabase stand-in (Realtime + PostgREST) serving ``dsn`` from a child process."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.key = ""

    def __enter__(self) -> StandInProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.client_latency", "--serve-standin", self.dsn],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the Supabase stand-in process did not start")
        info = json.loads(line)
        self.url, self.key = info["url"], info["key"]
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is None:
            return
        assert self._proc.stdin is not None
        self._proc.stdin.close()  # end of stdin stops it
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


async def serve_standin(dsn: str) -> None:
    """Serve the stand-in until stdin closes (the ``--serve-standin`` mode)."""
    from tests.supabase_standin import SupabaseStandIn

    async with SupabaseStandIn(dsn, pool_size=8) as standin:
        print(json.dumps({"url": standin.url, "key": standin.key}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def supabase_client(standin: StandInProcess) -> Any:
    from supabase import acreate_client

    return await acreate_client(standin.url, standin.key)


async def close_supabase(client: Any) -> None:
    try:
        await client.remove_all_channels()
    finally:
        await client.postgrest.aclose()


@contextlib.asynccontextmanager
async def pgflow_client(
    transport: str, dsn: str, standin: StandInProcess, **options: Any
) -> AsyncIterator[PgflowClient]:
    """A PgflowClient over ``transport`` (``postgres`` or ``supabase``), closed afterwards."""
    if transport == "postgres":
        async with await PgflowClient.connect(dsn) as client:
            yield client
        return
    supabase = await supabase_client(standin)
    try:
        async with PgflowClient(supabase, **options) as client:
            yield client
    finally:
        await close_supabase(supabase)


# -- event latency -----------------------------------------------------------------------------


@dataclass
class Latencies:
    """Latencies in seconds, and how many expected events never arrived within the bound."""

    values: list[float] = field(default_factory=list)
    missed: int = 0

    def p(self, q: float) -> float:
        return percentile(self.values, q)


class Arrivals:
    """First arrival time of each event key; wakes whoever waits for a set of keys."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._changed = asyncio.Event()

    def record(self, key: str) -> None:
        self.times.setdefault(key, time.time())
        self._changed.set()

    async def wait_for(self, keys: Sequence[str], timeout: float) -> bool:
        """True once every key has arrived; False when ``timeout`` passes first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not all(k in self.times for k in keys):
                    self._changed.clear()
                    if all(k in self.times for k in keys):
                        break
                    await self._changed.wait()
        return all(k in self.times for k in keys)


async def floor_latency(dsn: str, events: int) -> Latencies:
    """A bare NOTIFY → LISTEN round: the least any LISTEN-based delivery can take."""
    result = Latencies()
    arrivals = Arrivals()
    async with (
        await AsyncConnection.connect(dsn, autocommit=True) as listener,
        await AsyncConnection.connect(dsn, autocommit=True) as driver,
    ):
        await listener.execute(f"listen {FLOOR_CHANNEL}")

        async def consume() -> None:
            async for note in listener.notifies():
                arrivals.record(note.payload)

        consumer = asyncio.create_task(consume())
        try:
            for i in range(events):
                cur = await driver.execute(STAMPED_NOTIFY, (FLOOR_CHANNEL, str(i)))
                row = await cur.fetchone()
                assert row is not None
                if await arrivals.wait_for([str(i)], WAIT):
                    result.values.append(arrivals.times[str(i)] - row[0])
                else:
                    result.missed += 1
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
    return result


def watch(run: FlowRun, arrivals: Arrivals) -> None:
    """Record every accepted event of the run and its steps."""

    def record(event: Any) -> None:
        arrivals.record(event_key(event))

    run.on("*", record)
    for step in STEPS:
        run.step(step).on("*", record)


async def event_latency(client: PgflowClient, dsn: str, runs: int) -> Latencies:
    """Drive ``runs`` runs through SQL one task at a time, timing each event to its callback."""
    result = Latencies()
    async with await AsyncConnection.connect(dsn, autocommit=True) as driver:
        for r in range(runs):
            run = await client.start_flow(SLUG, {"run": r})
            arrivals = Arrivals()
            watch(run, arrivals)
            for step in STEPS:
                cur = await driver.execute("select msg_id from pgmq.read(%s, 30, 10)", (SLUG,))
                ids = [row[0] for row in await cur.fetchall()]
                await driver.execute(
                    "select 1 from pgflow.start_tasks(%s, %s::bigint[], %s)",
                    (SLUG, ids, BENCH_WORKER),
                )
                cur = await driver.execute(
                    STAMPED_COMPLETE, (run.run_id, step, 0, Jsonb({"step": step}))
                )
                row = await cur.fetchone()
                assert row is not None
                await arrivals.wait_for(EMITS[step], WAIT)
                for key in EMITS[step]:
                    if key in arrivals.times:
                        result.values.append(arrivals.times[key] - row[0])
                    else:
                        result.missed += 1
            client.dispose(run.run_id)
    return result


# -- start_flow latency ------------------------------------------------------------------------


@dataclass
class StartResult:
    """``start_flow`` durations (seconds), the events recorded for those runs, and the ones
    the client never saw (``"<run_id> <event>"``)."""

    durations: list[float]
    events: int
    missed: list[str]


def rank(kind: str, status: str) -> int:
    return RANKS[kind].get(status, -1)


async def worker_ready(worker: WorkerProcess, dsn: str, timeout: float = 120.0) -> None:
    """Wait until the worker process polls for tasks.

    Its start (imports, connections) takes seconds of CPU: ``start_flow`` timed meanwhile
    would compete with it for the cores, and its runs would wait for it. The row this
    benchmark registers for the steps it drives itself does not count.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        await asyncio.to_thread(worker.wait_registered, conn, SLUG, timeout, excluding=BENCH_WORKER)


async def start_latency(client: PgflowClient, dsn: str, runs: int, slug: str = SLUG) -> StartResult:
    """Time ``start_flow`` while a worker runs the steps at once; then check every event
    recorded in ``realtime.messages`` for those runs reached the client."""
    durations: list[float] = []
    started: list[tuple[FlowRun, dict[str, str], Arrivals]] = []
    for r in range(runs):
        began = time.perf_counter()
        run = await client.start_flow(slug, {"run": r})
        durations.append(time.perf_counter() - began)
        at_return = {"run": run.status.value} | {s: run.step(s).status.value for s in STEPS}
        arrivals = Arrivals()
        watch(run, arrivals)
        started.append((run, at_return, arrivals))
    await asyncio.gather(
        *(run.wait_for_status("completed", timeout=WAIT * 3) for run, _, _ in started),
        return_exceptions=True,
    )
    topics = [f"pgflow:run:{run.run_id}" for run, _, _ in started]
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select count(*) from pgflow.runs where run_id = any(%s::uuid[])"
            " and status <> 'completed'",
            ([run.run_id for run, _, _ in started],),
        )
        unfinished = await cur.fetchone()
        if unfinished and unfinished[0]:
            raise RuntimeError(f"{unfinished[0]} run(s) did not complete; is the worker running?")
        cur = await conn.execute(
            "select topic, event from realtime.messages where topic = any(%s)", (topics,)
        )
        rows = await cur.fetchall()
    by_topic = {f"pgflow:run:{run.run_id}": (run, at, arr) for run, at, arr in started}
    missed = []
    for topic, name in rows:
        run, at_return, arrivals = by_topic[topic]
        parts = name.split(":")
        kind, entity, status = (
            ("run", "run", parts[1]) if parts[0] == "run" else ("step", parts[1], parts[2])
        )
        known = at_return.get(entity, "created")
        if name not in arrivals.times and rank(kind, known) < rank(kind, status):
            missed.append(f"{run.run_id} {name}")
    for run, _, _ in started:
        client.dispose(run.run_id)
    return StartResult(durations, len(rows), missed)


# -- one client, many runs ---------------------------------------------------------------------


@dataclass
class ManyResult:
    """One observer (bare or pgflow) of many runs: traced memory per run, CPU per event."""

    runs: int
    memory_per_run: float
    cpu_per_event: float
    events: int
    missed: int


class Counter:
    """Counts events and wakes a waiter when a target is reached."""

    def __init__(self) -> None:
        self.count = 0
        self._target = 0
        self._reached = asyncio.Event()

    def hit(self, *_: Any) -> None:
        self.count += 1
        if self._target and self.count >= self._target:
            self._reached.set()

    async def until(self, target: int, timeout: float) -> bool:
        self._target = target
        self._reached.clear()
        if self.count >= target:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reached.wait(), timeout)
        return self.count >= target


class TracedMemory:
    """Python memory allocated (and still held) inside a ``with`` block, by tracemalloc.

    Tracing is on only inside the block: it slows allocation down and would distort CPU
    figures taken later.
    """

    def __init__(self) -> None:
        self.bytes = 0

    def __enter__(self) -> TracedMemory:
        gc.collect()
        tracemalloc.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.collect()
        self.bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()


async def start_runs_sql(dsn: str, run_ids: Sequence[str]) -> None:
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        for i, rid in enumerate(run_ids):
            await conn.execute(
                "select 1 from pgflow.start_flow(%s, %s, %s::uuid)", (SLUG, Jsonb({"run": i}), rid)
            )


async def run_worker_until(dsn: str, counter: Counter, target: int, timeout: float) -> float:
    """Run a worker process until ``counter`` reaches ``target`` (or ``timeout`` passes);
    returns the CPU seconds this process used meanwhile."""
    spec = "benchmarks.worker_throughput:chain"
    with WorkerProcess(spec, dsn, "--log-level", "WARNING") as worker:
        cpu = time.process_time()
        await counter.until(target, timeout)
        used = time.process_time() - cpu
        worker.check_alive()
    return used


async def many_bare(
    transport: str, dsn: str, standin: StandInProcess, runs: int, timeout: float
) -> ManyResult:
    """A bare observer: one LISTEN connection, or one plain realtime channel per run."""
    run_ids = [str(uuid.uuid4()) for _ in range(runs)]
    counter = Counter()
    if transport == "postgres":
        async with await AsyncConnection.connect(dsn, autocommit=True) as listener:
            await listener.execute("listen realtime_broadcast")
            with TracedMemory() as memory:
                topics = {f"pgflow:run:{rid}" for rid in run_ids}

            async def consume() -> None:
                async for note in listener.notifies():
                    if json.loads(note.payload)["topic"] in topics:
                        counter.hit()

            consumer = asyncio.create_task(consume())
            try:
                return await _drive_bare(dsn, run_ids, counter, memory.bytes, timeout)
            finally:
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
    supabase = await supabase_client(standin)
    try:
        with TracedMemory() as memory:
            for rid in run_ids:
                channel = supabase.channel(f"pgflow:run:{rid}")
                channel.on_broadcast("*", counter.hit)
                joined: asyncio.Future[None] = asyncio.get_running_loop().create_future()

                def on_state(state: Any, error: Any, joined: asyncio.Future[None] = joined) -> None:
                    if not joined.done():
                        joined.set_result(None)

                await channel.subscribe(on_state)
                await asyncio.wait_for(joined, WAIT)
        return await _drive_bare(dsn, run_ids, counter, memory.bytes, timeout)
    finally:
        await close_supabase(supabase)


async def _drive_bare(
    dsn: str, run_ids: Sequence[str], counter: Counter, memory: int, timeout: float
) -> ManyResult:
    runs = len(run_ids)
    await start_runs_sql(dsn, run_ids)
    start_events = 2 * runs  # run:started and the root step's step:started
    await counter.until(start_events, timeout)
    cpu = await run_worker_until(dsn, counter, start_events + EVENTS_AFTER_START * runs, timeout)
    events = counter.count - start_events
    return ManyResult(
        runs, memory / runs, cpu / max(events, 1), events, EVENTS_AFTER_START * runs - events
    )


async def many_pgflow(
    transport: str, dsn: str, standin: StandInProcess, runs: int, timeout: float
) -> ManyResult:
    """One PgflowClient observing ``runs`` runs it started, each with callbacks on the run
    and its steps."""
    counter = Counter()
    async with pgflow_client(transport, dsn, standin) as client:
        # A first round trip, so connections and lazily imported modules are in place.
        await client.get_run(uuid.uuid4())
        with TracedMemory() as memory:
            for r in range(runs):
                run = await client.start_flow(SLUG, {"run": r})
                run.on("*", counter.hit)
                for step in STEPS:
                    run.step(step).on("*", counter.hit)
        # The start events of the last runs may still be on their way; they are no part of
        # the CPU window below.
        await asyncio.sleep(0.5)
        cpu = await run_worker_until(dsn, counter, EVENTS_AFTER_START * runs, timeout)
        events = counter.count
        client.dispose_all()
    return ManyResult(
        runs, memory.bytes / runs, cpu / max(events, 1), events, EVENTS_AFTER_START * runs - events
    )


# -- the report --------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.client_latency",
        description="PgflowClient event latency, start_flow latency and many-runs cost.",
    )
    parser.add_argument(
        "--runs", type=int, default=100, help="runs per latency repeat; 6 events each (100)"
    )
    parser.add_argument(
        "--start-runs", type=int, default=100, help="start_flow calls per repeat (100)"
    )
    parser.add_argument(
        "--many-runs", type=int, default=1000, help="concurrent runs on one client (1000)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians (3)")
    parser.add_argument(
        "--transports",
        nargs="+",
        choices=("postgres", "supabase"),
        default=["postgres", "supabase"],
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        choices=("latency", "start", "many"),
        default=[],
        help="parts to leave out",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="longest wait for one phase (300 s)"
    )
    parser.add_argument("--serve-standin", metavar="DSN", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


LABELS = {"postgres": "Postgres (LISTEN/NOTIFY)", "supabase": "Supabase stand-in (Realtime)"}


async def run_benchmark(args: argparse.Namespace, stack: Stack, load: LoadLog) -> None:
    name = stack.clone("ours")
    dsn = stack.url(name)
    try:
        async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
            await ensure_flow(conn, chain)
            await conn.execute(
                "insert into pgflow.workers (worker_id, queue_name, function_name)"
                " values (%s, %s, 'benchmark')",
                (BENCH_WORKER, SLUG),
            )
        machine = describe_machine(dsn)
        with StandInProcess(dsn) as standin:
            sections = []
            if "latency" not in args.skip:
                sections.append(await latency_section(args, dsn, standin, load))
            if "start" not in args.skip:
                sections.append(await start_section(args, dsn, standin, load))
            if "many" not in args.skip:
                sections.append(await many_section(args, dsn, standin, load))
        load.note()
        print(f"Machine: {machine}; {load.summary()}.")
        for section in sections:
            print()
            print(section)
    finally:
        stack.drop(name)


async def latency_section(
    args: argparse.Namespace, dsn: str, standin: StandInProcess, load: LoadLog
) -> str:
    floors: list[Latencies] = []
    measured: dict[str, list[Latencies]] = {t: [] for t in args.transports}
    for repeat in range(args.repeats):
        floor = await floor_latency(dsn, args.runs * EVENTS_AFTER_START)
        floors.append(floor)
        progress(
            f"#{repeat + 1} floor     NOTIFY→LISTEN p50 {ms(floor.p(50))} p99 {ms(floor.p(99))}"
            f"  (load {load.note():.2f})"
        )
        for transport in args.transports:
            async with pgflow_client(transport, dsn, standin) as client:
                result = await event_latency(client, dsn, args.runs)
            measured[transport].append(result)
            progress(
                f"#{repeat + 1} {transport:<9} event latency p50 {ms(result.p(50))}"
                f" p99 {ms(result.p(99))}, {len(result.values)} events, {result.missed} missed"
                f"  (load {load.note():.2f})"
            )
    floor50 = median([f.p(50) for f in floors])
    floor99 = median([f.p(99) for f in floors])
    rows = [
        [
            "bare NOTIFY → LISTEN (baseline)",
            ms(floor50),
            ms(floor99),
            "1",
            "1",
            str(sum(len(f.values) for f in floors)),
            str(sum(f.missed for f in floors)),
        ]
    ]
    for transport, results in measured.items():
        p50 = median([r.p(50) for r in results])
        p99 = median([r.p(99) for r in results])
        rows.append(
            [
                f"PgflowClient, {LABELS[transport]}",
                ms(p50),
                ms(p99),
                f"{p50 / floor50:.1f}",
                f"{p99 / floor99:.1f}",
                str(sum(len(r.values) for r in results)),
                str(sum(r.missed for r in results)),
            ]
        )
    table = markdown_table(
        ["path", "p50", "p99", "p50 / baseline", "p99 / baseline", "events", "missed"], rows
    )
    return (
        f"Event latency, commit → callback ({args.repeats} repeats of"
        f" {args.runs * EVENTS_AFTER_START} events each; medians of the per-repeat percentiles):"
        f"\n\n{table}"
    )


async def start_section(
    args: argparse.Namespace, dsn: str, standin: StandInProcess, load: LoadLog
) -> str:
    measured: dict[str, list[StartResult]] = {t: [] for t in args.transports}
    spec = "benchmarks.worker_throughput:chain"
    with WorkerProcess(spec, dsn, "--log-level", "WARNING", "--poll-interval-ms", "10") as worker:
        await worker_ready(worker, dsn)
        for repeat in range(args.repeats):
            for transport in args.transports:
                options = {"reconcile_after": ()} if transport == "supabase" else {}
                async with pgflow_client(transport, dsn, standin, **options) as client:
                    result = await start_latency(client, dsn, args.start_runs)
                worker.check_alive()
                measured[transport].append(result)
                progress(
                    f"#{repeat + 1} {transport:<9} start_flow"
                    f" p50 {ms(percentile(result.durations, 50))}"
                    f" p99 {ms(percentile(result.durations, 99))};"
                    f" {result.events} events, {len(result.missed)} missed"
                    f"  (load {load.note():.2f})"
                )
                for line in result.missed[:5]:
                    progress(f"    missed: {line}")
    rows = [["TypeScript client's settle delay alone (baseline)", "300 ms", "300 ms", "1", "—"]]
    for transport, results in measured.items():
        p50 = median([percentile(r.durations, 50) for r in results])
        p99 = median([percentile(r.durations, 99) for r in results])
        events = sum(r.events for r in results)
        missed = sum(len(r.missed) for r in results)
        rows.append(
            [
                f"PgflowClient.start_flow, {LABELS[transport]}",
                ms(p50),
                ms(p99),
                f"{p50 / TS_SETTLE_DELAY:.3f}",
                f"{missed} of {events}",
            ]
        )
    table = markdown_table(["", "p50", "p99", "p50 / 300 ms", "events missed"], rows)
    return (
        f"`start_flow` latency, call → return with a confirmed subscription ({args.repeats}"
        f" repeats of {args.start_runs} runs, a worker process running the steps at once):"
        f"\n\n{table}"
    )


async def many_section(
    args: argparse.Namespace, dsn: str, standin: StandInProcess, load: LoadLog
) -> str:
    rows = []
    for transport in args.transports:
        bare = await many_bare(transport, dsn, standin, args.many_runs, args.timeout)
        progress(
            f"   {transport:<9} bare observer: {bare.memory_per_run:,.0f} B/run,"
            f" {bare.cpu_per_event * 1e6:.0f} µs CPU/event over {bare.events} events,"
            f" {bare.missed} missed  (load {load.note():.2f})"
        )
        client = await many_pgflow(transport, dsn, standin, args.many_runs, args.timeout)
        progress(
            f"   {transport:<9} PgflowClient:  {client.memory_per_run:,.0f} B/run,"
            f" {client.cpu_per_event * 1e6:.0f} µs CPU/event over {client.events} events,"
            f" {client.missed} missed  (load {load.note():.2f})"
        )
        rows.append(
            [
                LABELS[transport],
                f"{bare.memory_per_run / 1024:,.2f} KiB",
                f"{client.memory_per_run / 1024:,.2f} KiB",
                f"{client.memory_per_run / bare.memory_per_run:.1f}",
                f"{bare.cpu_per_event * 1e6:,.0f} µs",
                f"{client.cpu_per_event * 1e6:,.0f} µs",
                f"{client.cpu_per_event / bare.cpu_per_event:.1f}",
                f"{bare.missed + client.missed}",
            ]
        )
    table = markdown_table(
        [
            "transport",
            "bare: memory/run",
            "PgflowClient: memory/run",
            "memory ratio",
            "bare: CPU/event",
            "PgflowClient: CPU/event",
            "CPU ratio",
            "missed",
        ],
        rows,
    )
    return (
        f"One client observing {args.many_runs:,} concurrent runs (3-step chain,"
        f" {EVENTS_AFTER_START} events per run after the start, run by a worker process;"
        " memory traced by tracemalloc while the runs are subscribed, CPU time of the"
        f" observing process per event):\n\n{table}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_standin:
        asyncio.run(serve_standin(args.serve_standin))
        return 0
    load = LoadLog()
    load.note()
    began = time.perf_counter()
    stack = Stack()
    try:
        stack.template("ours")
        asyncio.run(run_benchmark(args, stack, load))
    finally:
        stack.close()
    print(f"\n(benchmark time {time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

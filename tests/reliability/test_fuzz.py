"""Bad input: fuzzed flow slugs and flow inputs, and malformed broadcasts sent to the client.

Whatever comes in, the client answers with one of its own errors (a ``PgflowClientError``,
ideally the specific one), never crashes, and leaves nothing behind: no run, step state, task,
queue message or event row, no subscription. A malformed broadcast is dropped and changes
nothing; the run keeps following its real events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb
from supabase import acreate_client

from pgflow_client import (
    FlowNotFound,
    FlowRun,
    FlowRunStatus,
    FlowStepStatus,
    InvalidFlowInput,
    PgflowClient,
    PgflowClientError,
    RpcError,
)
from tests.supabase_standin import SupabaseStandIn
from tests.supabase_standin.fixtures import close_client

fuzz_settings = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

FLOW = "fuzz"

Conn = psycopg.Connection[Any]


def define(db_url: str) -> None:
    """A root map (its input must be an array) and a one-step flow."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('fuzz_map')")
        conn.execute("select pgflow.add_step('fuzz_map', 'each', step_type => 'map')")
        conn.execute("select pgflow.create_flow(%s, max_attempts => 1)", (FLOW,))
        conn.execute("select pgflow.add_step(%s, 'a')", (FLOW,))


def counts(db_url: str) -> dict[str, int]:
    queries = {
        "runs": "select count(*) from pgflow.runs",
        "step_states": "select count(*) from pgflow.step_states",
        "step_tasks": "select count(*) from pgflow.step_tasks",
        "events": "select count(*) from realtime.messages",
        "messages": "select (select count(*) from pgmq.q_fuzz)"
        " + (select count(*) from pgmq.q_fuzz_map)",
    }
    with psycopg.connect(db_url, autocommit=True) as conn:
        found = {}
        for name, query in queries.items():
            row = conn.execute(query.encode()).fetchone()
            found[name] = int(row[0]) if row else -1
        return found


Factory = Callable[[], Awaitable[PgflowClient]]


@pytest.fixture(params=["postgres", "supabase"])
async def clients(request: pytest.FixtureRequest, db_url: str) -> AsyncIterator[PgflowClient]:
    """One client per transport; the test runs once per transport."""
    define(db_url)
    if request.param == "postgres":
        async with await PgflowClient.connect(db_url) as client:
            yield client
        return
    async with SupabaseStandIn(db_url) as standin:
        supabase = await acreate_client(standin.url, standin.key)
        try:
            async with PgflowClient(supabase) as client:
                yield client
            assert standin.joined_topics() == {}
        finally:
            await close_client(supabase)


async def refused(client: PgflowClient, db_url: str, slug: Any, value: Any) -> PgflowClientError:
    """Start a flow that must be refused; check the error kind and that nothing is left."""
    before = counts(db_url)
    with pytest.raises(PgflowClientError) as info:
        await client.start_flow(slug, value)
    assert counts(db_url) == before
    assert client.runs == {}
    assert client.subscriptions() == frozenset()
    return info.value


# -- slugs ---------------------------------------------------------------------------------------

NASTY_SLUGS = [
    "",
    " ",
    "run",
    "x" * 5000,
    "fuzz'; drop table pgflow.runs; --",
    'fuzz"; select pg_sleep(10); --',
    "fuzz\x00",
    "FUZZ",
    "fuzz ",
    "../fuzz",
    "%s",
    "{fuzz}",
    "ünïcødé",
    "\U0001f600",
]


async def test_nasty_slugs_are_refused_cleanly(clients: PgflowClient, db_url: str) -> None:
    for slug in NASTY_SLUGS:
        error = await refused(clients, db_url, slug, {})
        assert isinstance(error, FlowNotFound | RpcError), (slug, error)
        if "\x00" not in slug:
            assert isinstance(error, FlowNotFound), (slug, error)
            assert error.flow_slug == slug
    assert (await clients.get_run(uuid.uuid4())) is None


safe_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))


@fuzz_settings
@given(slug=safe_text.filter(lambda s: s not in (FLOW, "fuzz_map")))
async def test_fuzzed_slugs_are_unknown_flows(db_url: str, slug: str) -> None:
    """Any other text names no flow: FlowNotFound naming it, nothing created."""
    if not _defined(db_url):
        define(db_url)
    async with await PgflowClient.connect(db_url) as client:
        error = await refused(client, db_url, slug, {})
    assert isinstance(error, FlowNotFound)
    assert error.flow_slug == slug


def _defined(db_url: str) -> bool:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("select count(*) from pgflow.flows").fetchone()
    return bool(row and row[0])


# -- flow inputs ---------------------------------------------------------------------------------


def nested(depth: int, kind: str) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


async def test_non_json_inputs_are_refused_before_anything_is_sent(
    clients: PgflowClient, db_url: str
) -> None:
    for value in [
        float("nan"),
        {"x": float("inf")},
        [1, -math.inf],
        {"bytes": b"\xff\xfe"},
        {1, 2},
        {"when": object()},
        {("tuple", "key"): 1},
    ]:
        error = await refused(clients, db_url, FLOW, value)
        assert isinstance(error, InvalidFlowInput), (value, error)
        assert error.flow_slug == FLOW
        assert "not JSON-serializable" in str(error)


async def test_root_map_needs_an_array(clients: PgflowClient, db_url: str) -> None:
    for value in [{}, "text", 1, None, True]:
        error = await refused(clients, db_url, "fuzz_map", value)
        assert isinstance(error, InvalidFlowInput), (value, error)
        assert "fuzz_map" in str(error)


UNSTORABLE = {
    "list nested 100,000 deep": nested(100_000, "list"),
    "object nested 100,000 deep": nested(100_000, "dict"),
    "lone surrogate": {"text": "\ud800"},
    "lone surrogate in a key": {"\udcff": 1},
    "NUL character": {"text": "a\x00b"},
    "NUL in a key": {"a\x00": 1},
    "NUL element": ["\x00"],
}


async def test_inputs_postgres_cannot_take_are_refused_as_invalid(
    clients: PgflowClient, db_url: str
) -> None:
    """JSON the database cannot take is the caller's input error, named as such, with the
    flow: nesting deeper than encoders and PostgreSQL accept, strings that are not valid UTF-8
    once encoded (lone surrogates, as undecodable bytes become) and NUL characters, which
    jsonb cannot hold."""
    wrong: dict[str, str] = {}
    for what, value in UNSTORABLE.items():
        before = counts(db_url)
        try:
            await clients.start_flow(FLOW, value)
        except InvalidFlowInput as exc:
            if exc.flow_slug != FLOW:
                wrong[what] = f"InvalidFlowInput for {exc.flow_slug!r}"
        except BaseException as exc:
            wrong[what] = f"{type(exc).__name__}: {exc}"
        else:
            wrong[what] = "accepted"
        assert counts(db_url) == before, what
        assert clients.runs == {}
        assert clients.subscriptions() == frozenset()
    assert wrong == {}


SQL_SHAPED = [
    "'); drop table pgflow.runs; --",
    "$$; select pg_sleep(10); $$",
    "\\x00",
    "\\u0000",
    "%s %(x)s {0}",
    "E'\\\\'",
    "' or '1'='1",
    "pgflow:run:00000000-0000-0000-0000-000000000000",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(min_value=-1e15, max_value=1e15, allow_nan=False).filter(
        lambda f: f == 0 or abs(f) >= 1e-15
    )
    | safe_text
    | st.sampled_from(SQL_SHAPED),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(safe_text | st.sampled_from(SQL_SHAPED), children, max_size=4)
    ),
    max_leaves=20,
)


@fuzz_settings
@given(value=json_values)
async def test_json_inputs_round_trip_unchanged(db_url: str, value: Any) -> None:
    """Any JSON value (SQL-shaped strings, unicode, big integers) is stored and returned as
    given, by the database and by the client's snapshot."""
    if not _defined(db_url):
        define(db_url)
    async with await PgflowClient.connect(db_url) as client:
        run = await client.start_flow(FLOW, value)
        assert run.input == value
        with psycopg.connect(db_url, autocommit=True) as conn:
            row = conn.execute(
                "select input from pgflow.runs where run_id = %s", (run.run_id,)
            ).fetchone()
        assert row is not None
        assert row[0] == value


async def test_huge_inputs_are_stored_or_refused_cleanly(
    clients: PgflowClient, db_url: str
) -> None:
    """A 2 MB string and a 50,000-element array: stored whole (over Supabase the REST layer
    may refuse the size instead, which must be a clean error)."""
    for value in [{"text": "x" * 2_000_000}, list(range(50_000))]:
        before = counts(db_url)
        refused_with: RpcError | None = None
        try:
            run = await clients.start_flow(FLOW, value)
        except RpcError as exc:
            refused_with = exc
        if refused_with is not None:
            assert counts(db_url) == before, refused_with
            assert clients.runs == {}
            continue
        assert run.input == value
        clients.dispose(run.run_id)


# -- malformed broadcasts ------------------------------------------------------------------------

STEP_TEMPLATES: dict[str, dict[str, Any]] = {
    "started": {"started_at": "2026-01-01T00:00:00+00:00", "remaining_tasks": 1},
    "completed": {"output": {"fake": True}, "completed_at": "2026-01-01T00:00:00+00:00"},
    "failed": {"error_message": "fake", "failed_at": "2026-01-01T00:00:00+00:00"},
    "skipped": {"skip_reason": "condition_unmet", "skipped_at": "2026-01-01T00:00:00+00:00"},
}
RUN_TEMPLATES: dict[str, dict[str, Any]] = {
    "completed": {"output": {"fake": True}, "completed_at": "2026-01-01T00:00:00+00:00"},
    "failed": {"error_message": "fake", "failed_at": "2026-01-01T00:00:00+00:00"},
}
NOT_TIMES = ["yesterday", "", [], {}, "2026-13-45T99:99:99"]
NOT_RUN_IDS = ["not-a-uuid", "", 42, [], {}, None]
NOT_SLUGS = ["", 42, None, [], {}]
BAD_EVENT_NAMES = [
    "",
    "run",
    "run:",
    "run:done",
    "RUN:completed",
    "run:completed:extra",
    "step",
    "step:",
    "step::completed",
    "step:a",
    "step:a:finished",
    "step:a:created",
    "steps:a:completed",
    "broadcast",
    "phx_reply",
]


@st.composite
def malformed_broadcasts(draw: st.DrawFn, run_id: str, flow_slug: str) -> tuple[str, Any]:
    """A broadcast that looks like a transition of this run but is broken in one way."""
    if draw(st.booleans()):
        status = draw(st.sampled_from(sorted(RUN_TEMPLATES)))
        event = f"run:{status}"
        payload: dict[str, Any] = {
            "run_id": run_id,
            "flow_slug": flow_slug,
            "status": status,
            **RUN_TEMPLATES[status],
        }
        time_key = next(k for k in payload if k.endswith("_at"))
        breakers = ["event", "payload", "status", "run_id", "time", "flow_slug"]
    else:
        status = draw(st.sampled_from(sorted(STEP_TEMPLATES)))
        event = f"step:a:{status}"
        payload = {"run_id": run_id, "step_slug": "a", "status": status, **STEP_TEMPLATES[status]}
        time_key = next(k for k in payload if k.endswith("_at"))
        breakers = ["event", "payload", "status", "run_id", "time", "step_slug"]
        if status == "skipped":
            breakers.append("skip_reason")
    how = draw(st.sampled_from(breakers))
    # A step event without step_slug takes it from the event name: still valid, so never drop it.
    drop = how != "step_slug" and draw(st.booleans())
    if how == "event":
        return draw(st.sampled_from(BAD_EVENT_NAMES)), payload
    if how == "payload":
        return event, draw(
            st.sampled_from([None, [], [payload], "text", json.dumps(payload), 0, True])
        )
    key = {"time": time_key}.get(how, how)
    if drop:
        payload.pop(key)
    elif how == "status":
        payload["status"] = draw(st.sampled_from(["started", "created", "done", "", None, 1]))
        if payload["status"] == status.split(":")[-1]:  # never the matching status
            payload["status"] = "done"
    else:
        bad = {"run_id": NOT_RUN_IDS, "time": NOT_TIMES, "flow_slug": NOT_SLUGS}.get(how, NOT_SLUGS)
        payload[key] = draw(st.sampled_from(bad))
        if how == "skip_reason":
            payload[key] = draw(st.sampled_from(["because", "", None, 3]))
    if how == "status" and payload.get("status") == status:
        payload["status"] = "done"
    return event, payload


class ClientLog(logging.Handler):
    """What the client's loggers say while a test runs (``pgflow.client``, and ``realtime``,
    realtime-py's), with a bounded wait for the lines it expects: the proof that junk sent to
    a client was read and dropped, not merely still on its way."""

    LOGGERS = ("pgflow.client", "realtime")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._loop = asyncio.get_running_loop()
        self._grew = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._grew.set)

    @property
    def messages(self) -> list[str]:
        """What ``pgflow.client`` logged, in order."""
        return [r.getMessage() for r in self.records if r.name.startswith("pgflow.client")]

    def realtime_errors(self) -> list[str]:
        return [
            r.getMessage()
            for r in self.records
            if r.name.startswith("realtime") and r.levelno >= logging.ERROR
        ]

    async def wait_for(
        self, check: Callable[[list[str]], bool], *, within: float, what: Callable[[], str]
    ) -> None:
        try:
            async with asyncio.timeout(within):
                while not check(self.messages):
                    self._grew.clear()
                    await self._grew.wait()
        except TimeoutError:
            raise AssertionError(
                f"pgflow.client did not log {what()} within {within:g} s; "
                f"it logged: {self.messages}"
            ) from None

    def drops(self) -> list[str]:
        return [m for m in self.messages if m.startswith("Dropping broadcast ")]

    def unmatched(self, events: list[Any]) -> list[Any]:
        """The events among ``events`` not (yet) logged as dropped, one log line each."""
        lines = self.drops()
        missing = []
        for event in events:
            prefix = f"Dropping broadcast {event!r}: "
            found = next((line for line in lines if line.startswith(prefix)), None)
            if found is None:
                missing.append(event)
            else:
                lines.remove(found)
        return missing

    async def wait_for_drops(self, events: list[Any], *, within: float = 15) -> None:
        """Wait until every one of ``events`` is logged as dropped; then no other may be."""
        await self.wait_for(
            lambda _: not self.unmatched(events),
            within=within,
            what=lambda: f"drops of {events} (missing: {self.unmatched(events)})",
        )
        assert len(self.drops()) == len(events), self.drops()


@contextlib.contextmanager
def client_log() -> Iterator[ClientLog]:
    handler = ClientLog()
    loggers = [logging.getLogger(name) for name in ClientLog.LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


Sender = Callable[[str, list[tuple[str, Any]], ClientLog], Awaitable[None]]
"""Sends a run's junk, and waits (bounded) until the client's log shows it was all handled."""


async def check_malformed_broadcasts_change_nothing(
    client: PgflowClient, db_url: str, send: Sender, data: st.DataObject
) -> None:
    run = await client.start_flow(FLOW, {"n": 1})
    seen: list[str] = []
    run.on("*", lambda e: seen.append(e.event_type))
    run.step("a").on("*", lambda e: seen.append(e.event_type))
    junk = data.draw(st.lists(malformed_broadcasts(run.run_id, FLOW), min_size=1, max_size=8))
    with client_log() as log:
        await send(run.run_id, junk, log)
    # Every piece of junk has reached the client and been dropped: nothing moved.
    assert run.status is FlowRunStatus.STARTED
    assert run.step("a").status is FlowStepStatus.STARTED
    assert seen == []
    finish_task(db_url, run)  # the real transition, committed after the junk
    await run.wait_for_status("completed", timeout=30)
    assert seen == ["step:completed", "run:completed"]
    assert run.output == {"a": {"real": True}}
    assert run.step("a").output == {"real": True}
    assert run.step("a").error_message is None


def finish_task(db_url: str, run: FlowRun) -> None:
    """Play the worker: claim the run's task and complete it."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        complete_tasks(conn, run)


def claim_all(conn: Conn) -> list[tuple[Any, ...]]:
    """Claim every queued task of the flow on ``conn`` for a new worker: (run_id, step_slug,
    task_index) of each."""
    worker = uuid.uuid4()
    conn.execute(
        "insert into pgflow.workers (worker_id, queue_name, function_name) values (%s, %s, 'fuzz')",
        (worker, FLOW),
    )
    return conn.execute(
        "select run_id, step_slug, task_index from pgflow.start_tasks(%s,"
        " array(select msg_id from pgmq.read(%s, 30, 100)), %s)",
        (FLOW, FLOW, worker),
    ).fetchall()


def complete_tasks(conn: Conn, run: FlowRun) -> None:
    """Claim every queued task of the flow on ``conn`` and complete it; ``run`` must have one."""
    tasks = claim_all(conn)
    mine = [t for t in tasks if str(t[0]) == run.run_id]
    assert len(mine) == 1, tasks
    for task in tasks:
        conn.execute(
            "select pgflow.complete_task(%s, %s, %s, %s)",
            (*task, Jsonb({"real": True} if task in mine else {"other": True})),
        )


async def test_a_bad_notification_does_not_hold_up_the_events_batched_with_it(
    db_url: str,
) -> None:
    """Any role may NOTIFY the client's channel. Ids that are not UUIDs, committed in the same
    transaction as a real transition (so they reach the client in one batch), are dropped on
    their own: the real events are read and delivered, with no fallback to a resync."""
    if not _defined(db_url):
        define(db_url)
    async with await PgflowClient.connect(db_url) as client:
        run = await client.start_flow(FLOW, {"n": 1})
        topic = f"pgflow:run:{run.run_id}"
        seen: list[str] = []
        run.on("*", lambda e: seen.append(e.event_type))
        with client_log() as log, psycopg.connect(db_url) as conn:
            for bad in ["not-a-uuid", 5, None, [run.run_id], ""]:
                note = json.dumps({"id": bad, "topic": topic})
                conn.execute("select pg_notify('realtime_broadcast', %s)", (note,))
            complete_tasks(conn, run)
            conn.commit()
            await run.wait_for_status("completed", timeout=15)
        assert seen == ["run:completed"]
        malformed = [m for m in log.messages if m.startswith("ignored a malformed")]
        assert len(malformed) == 5, log.messages
        assert not [m for m in log.messages if "could not read" in m or "resync" in m]


broadcast_settings = settings(fuzz_settings, max_examples=25)


@broadcast_settings
@given(data=st.data())
async def test_malformed_broadcasts_over_postgres(db_url: str, data: st.DataObject) -> None:
    """Junk rows in realtime.messages (sent with realtime.send, or inserted raw) and junk
    notifications on the channel the client listens to."""
    if not _defined(db_url):
        define(db_url)

    async def send(run_id: str, junk: list[tuple[str, Any]], log: ClientLog) -> None:
        topic = f"pgflow:run:{run_id}"
        with psycopg.connect(db_url, autocommit=True) as conn:
            for event, payload in junk:
                conn.execute(
                    "select realtime.send(%s, %s, %s, false)", (Jsonb(payload), event, topic)
                )
            conn.execute(
                "insert into realtime.messages (topic, extension, payload, event) values"
                " (%s, 'broadcast', null, null), (%s, 'broadcast', '[1, 2]', 'run:completed')",
                (topic, topic),
            )
        # Rows are read back and parsed: each one is logged as dropped.
        await log.wait_for_drops([event for event, _ in junk] + [None, "run:completed"])

        # Then garbage notifications: all but the well-formed one naming no message are logged
        # as malformed; that one is dropped silently, before others that are logged (the
        # client handles notifications in order).
        before = len(log.messages)
        with psycopg.connect(db_url, autocommit=True) as conn:
            for note in [
                json.dumps({"id": None, "topic": None}),
                json.dumps({"id": str(uuid.uuid4()), "topic": topic}),
                "not json",
                "{}",
                json.dumps([topic]),
                json.dumps({"id": "not-a-uuid", "topic": topic}),
            ]:
                conn.execute("select pg_notify('realtime_broadcast', %s)", (note,))

        def handled(messages: list[str]) -> bool:
            new = messages[before:]
            malformed = [m for m in new if m.startswith("ignored a malformed")]
            return len(malformed) == 5

        await log.wait_for(handled, within=15, what=lambda: "5 malformed notifications")
        assert not [m for m in log.messages if m.startswith("could not read")], log.messages

    async with await PgflowClient.connect(db_url) as client:
        await check_malformed_broadcasts_change_nothing(client, db_url, send, data)


@broadcast_settings
@given(data=st.data())
async def test_malformed_broadcasts_over_supabase(db_url: str, data: st.DataObject) -> None:
    """Anyone may broadcast on a public channel: junk pushed through Realtime's broadcast API
    (JSON of every shape, NaN included) must be dropped, by realtime-py when the payload is not
    an object, by the client otherwise."""
    if not _defined(db_url):
        define(db_url)
    async with SupabaseStandIn(db_url) as standin, httpx.AsyncClient() as http:

        async def send(run_id: str, junk: list[tuple[str, Any]], log: ClientLog) -> None:
            topic = quote(f"pgflow:run:{run_id}", safe="")
            # An empty event name has no URL. The last one is dropped by the client, whatever
            # the junk: once it is, everything sent before it has been handled (in order).
            sent = [(event, payload) for event, payload in junk if event]
            sent.append(("run:completed", float("nan")))
            sentinel = ("run:completed", {"run_id": run_id, "sentinel": True})
            for event, payload in [*sent, sentinel]:
                body = json.dumps(payload)  # NaN goes out as the bare token NaN
                path = f"/realtime/v1/api/broadcast/{topic}/events/{quote(event, safe='')}"
                response = await http.post(
                    standin.url + path,
                    content=body,
                    headers={"apikey": standin.key, "Content-Type": "application/json"},
                )
                assert response.status_code == 202, response.text
            # realtime-py itself refuses broadcasts whose payload is not an object (logging an
            # error); pgflow's client drops, and logs, every other one.
            objects = [event for event, payload in sent if isinstance(payload, dict)]
            await log.wait_for_drops([*objects, sentinel[0]])
            assert len(log.realtime_errors()) == len(sent) - len(objects), log.realtime_errors()

        supabase = await acreate_client(standin.url, standin.key)
        try:
            async with PgflowClient(supabase, reconcile_after=()) as client:
                await check_malformed_broadcasts_change_nothing(client, db_url, send, data)
        finally:
            await close_client(supabase)


async def test_event_on_one_runs_topic_naming_another_run_is_ignored(
    clients: PgflowClient, db_url: str
) -> None:
    """A broadcast delivered on run A's topic but carrying run B's id is malformed: it must not
    move run B (whose own topic never carried it). The client logs the drop."""
    a = await clients.start_flow(FLOW, {})
    b = await clients.start_flow(FLOW, {})
    forged = {
        "run_id": b.run_id,
        "flow_slug": FLOW,
        "status": "completed",
        "output": {"forged": True},
        "completed_at": "2026-01-01T00:00:00+00:00",
    }
    with client_log() as log:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "select realtime.send(%s, 'run:completed', %s, false)",
                (Jsonb(forged), f"pgflow:run:{a.run_id}"),
            )
        expected = f"dropped run:completed for run {b.run_id} that arrived on the topic of run"
        await log.wait_for(
            lambda messages: any(m.startswith(expected) for m in messages),
            within=15,
            what=lambda: repr(expected),
        )
    assert (a.status, b.status) == (FlowRunStatus.STARTED, FlowRunStatus.STARTED)
    finish_task_of_both(db_url)
    await a.wait_for_status("completed", timeout=30)
    await b.wait_for_status("completed", timeout=30)
    assert b.output == {"a": {"real": True}}


def finish_task_of_both(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        tasks = claim_all(conn)
        assert len(tasks) == 2
        for task in tasks:
            conn.execute(
                "select pgflow.complete_task(%s, %s, %s, %s)", (*task, Jsonb({"real": True}))
            )

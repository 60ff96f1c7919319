"""The worker's side of the SQL protocol: read messages, start tasks, report results.

It speaks to pgflow-py's SQL core and to the official pgflow SQL alike. The official 0.8.1
SQL hands non-map tasks ``{"run": <flow input>, <dep>: <output>}`` and has no ``flow_input``
column; :class:`StepTask` hides that difference from the rest of the worker.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal

import orjson
from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from .errors import WorkerError

__all__ = [
    "Message",
    "PgflowSqlClient",
    "Report",
    "RunTraceContext",
    "SqlCallStats",
    "StepTask",
    "TraceContextCache",
    "configure_connection",
]


def _worker_version() -> str:
    try:
        return f"pgflow-py/{metadata.version('pgflow-py')}"
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "pgflow-py"


#: What a worker writes in ``pgflow.workers.pgflow_version``.
WORKER_VERSION = _worker_version()

# Enough digits that orjson may round the number (it reads integers past 64 bits as floats).
_LONG_NUMBER = re.compile(rb"[0-9]{16}")


def dumps_json(obj: Any) -> str:
    """JSON text of ``obj``: orjson's, or the standard library's for what orjson refuses
    (integers past 64 bits), so that every Python int is stored exactly."""
    try:
        return orjson.dumps(obj).decode()
    except orjson.JSONEncodeError:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def loads_json(data: bytes | bytearray | memoryview | str) -> Any:
    """``data`` decoded: by orjson, or by the standard library where orjson would round a long
    number or refuse one beyond a float's range (``jsonb`` holds both).

    Raises ValueError (or RecursionError, for nesting deeper than Python allows) for text
    neither can decode.
    """
    raw = data.encode() if isinstance(data, str) else data
    if _LONG_NUMBER.search(raw) is None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(bytes(raw))  # the standard library takes no memoryview


async def configure_connection(conn: AsyncConnection[Any]) -> None:
    """Fast, exact JSON for every pooled connection."""
    set_json_dumps(dumps_json, conn)
    set_json_loads(loads_json, conn)


@dataclass(slots=True)
class SqlCallStats:
    """Running counts of the SQL calls a worker made: how often it polled, for how many
    messages, and how often it went back to the database for a run's input.

    Plain integers, cheap enough to keep on in production; handy for metrics and for checking
    that the worker batches its polls and caches flow inputs as it should.
    """

    #: ``pgmq.read_with_poll`` calls (idle polls included).
    polls: int = 0
    #: Free slots offered across those polls (the ``qty`` argument, summed).
    slots_offered: int = 0
    #: Messages the polls returned.
    messages_read: int = 0
    #: ``pgflow.start_tasks`` calls.
    start_tasks_calls: int = 0
    #: Tasks those calls claimed.
    tasks_started: int = 0
    #: ``select input from pgflow.runs`` queries made to fill ``ctx.flow_input``.
    flow_input_loads: int = 0
    #: ``pgflow.complete_task`` calls.
    completions: int = 0
    #: ``pgflow.fail_task`` calls.
    failures: int = 0
    #: Transactions that carried results: one per batch, however many results it held.
    report_transactions: int = 0


@dataclass(frozen=True, slots=True)
class Message:
    """A pgmq message as read from the flow's queue."""

    msg_id: int
    read_ct: int
    enqueued_at: Any
    vt: Any
    message: dict[str, Any]
    headers: Any = None
    #: Why the message's JSON could not be decoded (it is then ``{}``), or None.
    decode_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "msg_id": self.msg_id,
            "read_ct": self.read_ct,
            "enqueued_at": self.enqueued_at,
            "vt": self.vt,
            "message": self.message,
            "headers": self.headers,
        }


@dataclass(frozen=True, slots=True)
class StepTask:
    """One claimed task, as ``start_tasks`` returned it, with the input already normalised.

    ``input`` is what pgflow 0.12+ hands a handler: the element for map steps, the
    ``{dep: output}`` object for dependent steps, ``{}`` for root single steps (which get
    ``flow_input`` instead). ``flow_input`` is None when the SQL did not supply it.
    """

    flow_slug: str
    run_id: uuid.UUID
    step_slug: str
    task_index: int
    msg_id: int
    input: Any
    flow_input: Any
    has_flow_input: bool
    attempt: int
    #: Why the task's record could not be decoded (its input is then None), or None.
    decode_error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.run_id}/{self.step_slug}[{self.task_index}]"


@dataclass(frozen=True, slots=True)
class RunTraceContext:
    """The W3C trace context stored with a run (``pgflow.run_trace_contexts``): that of the
    ``start_flow`` call that started it."""

    traceparent: str
    tracestate: str | None = None


class TraceContextCache:
    """The trace contexts of the runs a worker has seen, by run id, the most recent
    ``max_runs`` of them; a run known to have none is remembered as None.

    A run's context is written in the transaction that starts it, before any of its tasks
    can be read, so what was found (or not) for a run's first task holds for all of them.
    """

    def __init__(self, max_runs: int = 4096) -> None:
        self._max_runs = max_runs
        self._entries: OrderedDict[uuid.UUID, RunTraceContext | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._entries

    def get(self, run_id: uuid.UUID) -> RunTraceContext | None:
        """The run's context; None when it has none or is not known."""
        context = self._entries.get(run_id)
        if run_id in self._entries:
            self._entries.move_to_end(run_id)
        return context

    def missing(self, run_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
        """The runs among ``run_ids`` not known yet, each once."""
        return [r for r in dict.fromkeys(run_ids) if r not in self._entries]

    def put(self, run_id: uuid.UUID, context: RunTraceContext | None) -> None:
        self._entries[run_id] = context
        self._entries.move_to_end(run_id)
        while len(self._entries) > self._max_runs:
            self._entries.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Report:
    """One task's result: its output (``complete``) or its error message (``fail``)."""

    kind: Literal["complete", "fail"]
    task: StepTask
    value: Any


_COMPLETE = "select 1 from pgflow.complete_task(%s, %s, %s, %s)"
_FAIL = "select 1 from pgflow.fail_task(%s, %s, %s, %s)"


# The attempt of each claimed message's task, by queue (or, on SQL without per-step queues, by
# flow): one index probe per id whatever the statistics say. A join, or `message_id = any()`,
# let a planner that had not yet seen the queue's name walk all its tasks for every id.
_ATTEMPTS_BY_QUEUE = (
    "select m.id, (select t.attempts_count from pgflow.step_tasks as t"
    " where t.queue_name = %s and t.message_id = m.id)"
    " from unnest(%s::bigint[]) as m (id)"
)
# (That SQL's index is on the message id alone: it is the one probed, the flow checked after.)
_ATTEMPTS_BY_FLOW = (
    "select m.id, (select max(t.attempts_count) filter (where t.flow_slug = %s)"
    " from pgflow.step_tasks as t where t.message_id = m.id)"
    " from unnest(%s::bigint[]) as m (id)"
)

# Every result of a batch in one statement, in the batch's order: a call of a volatile function
# sees what the calls before it did. Each row calls complete_task or fail_task, never both.
_REPORT_MANY = (
    "select case when r.failed"
    " then (select count(*) from pgflow.fail_task(r.run_id, r.step_slug, r.task_index, r.error))"
    " else (select count(*) from pgflow.complete_task(r.run_id, r.step_slug, r.task_index,"
    " r.output)) end"
    " from unnest(%s::bool[], %s::uuid[], %s::text[], %s::int[], %s::jsonb[], %s::text[])"
    " as r (failed, run_id, step_slug, task_index, output, error)"
)


def _call_many(reports: Sequence[Report]) -> tuple[str, tuple[Any, ...]]:
    failed = [report.kind == "fail" for report in reports]
    return _REPORT_MANY, (
        failed,
        [report.task.run_id for report in reports],
        [report.task.step_slug for report in reports],
        [report.task.task_index for report in reports],
        [None if f else Jsonb(report.value) for f, report in zip(failed, reports, strict=True)],
        [report.value if f else None for f, report in zip(failed, reports, strict=True)],
    )


def _call(report: Report) -> tuple[str, tuple[Any, ...]]:
    task = report.task
    if report.kind == "complete":
        return _COMPLETE, (task.run_id, task.step_slug, task.task_index, Jsonb(report.value))
    return _FAIL, (task.run_id, task.step_slug, task.task_index, report.value)


def _decode_error(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "JSON nested deeper than Python's recursion limit"
    return f"{type(exc).__name__}: {exc}"


def _message(
    msg_id: int, read_ct: int, enqueued_at: Any, vt: Any, body: str, headers: str | None
) -> Message:
    try:
        message = loads_json(body)
        header_data = None if headers is None else loads_json(headers)
    except (ValueError, RecursionError) as exc:
        return Message(msg_id, read_ct, enqueued_at, vt, {}, None, _decode_error(exc))
    return Message(msg_id, read_ct, enqueued_at, vt, message, header_data)


class PgflowSqlClient:
    """Typed calls to the pgflow functions a worker needs, over a connection pool."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        stats: SqlCallStats | None = None,
    ) -> None:
        self._pool = pool
        self.stats = stats if stats is not None else SqlCallStats()
        self._legacy_input: bool | None = None
        self._has_stopped_at = True
        self._has_queue_identity = False
        self._has_cancelled_at = False
        self._has_pgflow_version = False
        self._has_track_worker_function = False
        self._trace_table: Literal["absent", "unreadable", "readable"] = "absent"
        #: The trace contexts of the runs whose tasks this worker started.
        self.trace_contexts = TraceContextCache()

    @property
    def pool(self) -> AsyncConnectionPool[AsyncConnection[Any]]:
        return self._pool

    async def detect_flavour(self) -> bool:
        """True when the SQL is the older one that wraps inputs in ``{"run": ...}``."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "select exists ("
                " select 1 from pg_attribute a"
                " join pg_type t on t.typrelid = a.attrelid"
                " where t.oid = to_regtype('pgflow.step_task_record')"
                " and a.attname = 'flow_input' and not a.attisdropped)"
            )
            row = await cur.fetchone()
            cur = await conn.execute(
                "select exists (select 1 from pg_attribute"
                " where attrelid = to_regclass('pgflow.workers')"
                " and attname = 'stopped_at' and not attisdropped)"
            )
            stopped = await cur.fetchone()
            cur = await conn.execute(
                "select exists (select 1 from pg_attribute"
                " where attrelid = to_regclass('pgflow.workers')"
                " and attname = 'pgflow_version' and not attisdropped),"
                " to_regprocedure('pgflow.track_worker_function(text,text)') is not null"
            )
            tracking = await cur.fetchone()
            # pgflow 0.17's start_tasks takes the queue (and the step): tasks know their queue.
            cur = await conn.execute(
                "select to_regprocedure("
                "'pgflow.start_tasks(text,bigint[],uuid,text,text)') is not null"
            )
            queues = await cur.fetchone()
            cur = await conn.execute(
                "select exists (select 1 from pg_attribute"
                " where attrelid = to_regclass('pgflow.runs')"
                " and attname = 'cancelled_at' and not attisdropped)"
            )
            cancelling = await cur.fetchone()
            # pgflow-py 0006's trace contexts; pgflow's own SQL has no such table.
            cur = await conn.execute(
                "select to_regclass('pgflow.run_trace_contexts') is not null,"
                " has_table_privilege(to_regclass('pgflow.run_trace_contexts'), 'select')"
            )
            tracing = await cur.fetchone()
        if tracing and tracing[0]:
            self._trace_table = "readable" if tracing[1] else "unreadable"
        else:
            self._trace_table = "absent"
        self._legacy_input = not (row and row[0])
        self._has_cancelled_at = bool(cancelling and cancelling[0])
        self._has_stopped_at = bool(stopped and stopped[0])
        self._has_pgflow_version = bool(tracking and tracking[0])
        self._has_track_worker_function = bool(tracking and tracking[1])
        self._has_queue_identity = bool(queues and queues[0])
        return self._legacy_input

    @property
    def trace_table(self) -> Literal["absent", "unreadable", "readable"]:
        """Whether the SQL stores runs' trace contexts (``pgflow.run_trace_contexts``, from
        pgflow-py's migration 0006) and this worker's role may read them; known after
        :meth:`detect_flavour`."""
        return self._trace_table

    @property
    def has_queue_identity(self) -> bool:
        """Whether the SQL has pgflow 0.17's queue identity (the five-argument
        ``start_tasks``, per-step queues); known after :meth:`detect_flavour`."""
        return self._has_queue_identity

    async def track_worker_function(self, function_name: str) -> bool:
        """Register the kind of worker as one that starts itself (``start_mode`` 'process'),
        as pgflow's workers do since 0.15; False on older SQL, which has nowhere to."""
        if not self._has_track_worker_function:
            return False
        async with self._pool.connection() as conn:
            await conn.execute(
                "select pgflow.track_worker_function(%s, 'process')", (function_name,)
            )
        return True

    async def register_worker(self, worker_id: uuid.UUID, queue: str, function_name: str) -> None:
        """Insert the worker's row, with its ``pgflow_version`` where the SQL has the column."""
        row: dict[str, Any] = {
            "worker_id": worker_id,
            "queue_name": queue,
            "function_name": function_name,
        }
        if self._has_pgflow_version:
            row["pgflow_version"] = WORKER_VERSION
        query = sql.SQL(
            "insert into pgflow.workers ({}) values ({})"
            " on conflict (worker_id) do update set last_heartbeat_at = now()"
        ).format(
            sql.SQL(", ").join(map(sql.Identifier, row)),
            sql.SQL(", ").join(sql.Placeholder() * len(row)),
        )
        async with self._pool.connection() as conn:
            await conn.execute(query, tuple(row.values()))

    async def heartbeat(self, worker_id: uuid.UUID) -> bool:
        """Record that the worker is alive; True when an operator has deprecated it."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "update pgflow.workers set last_heartbeat_at = clock_timestamp()"
                " where worker_id = %s returning deprecated_at is not null",
                (worker_id,),
            )
            row = await cur.fetchone()
        return bool(row and row[0])

    @property
    def can_cancel_runs(self) -> bool:
        """Whether runs can be cancelled in this database (pgflow-py's ``cancel_run``); the
        official SQL has no cancellation to watch for."""
        return self._has_cancelled_at

    async def cancelled_runs(self, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, str | None]:
        """Which of these runs were cancelled, with the reason given (one index probe each)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "select run_id, cancel_reason from pgflow.runs"
                " where run_id = any(%s) and cancelled_at is not null",
                (run_ids,),
            )
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def mark_stopped(self, worker_id: uuid.UUID) -> None:
        """Record a clean stop (older SQL without ``workers.stopped_at`` has nowhere to)."""
        if not self._has_stopped_at:
            return
        async with self._pool.connection() as conn:
            await conn.execute(
                "update pgflow.workers set stopped_at = clock_timestamp() where worker_id = %s",
                (worker_id,),
            )

    async def read_messages(
        self, queue: str, visibility_timeout: int, qty: int, max_poll_seconds: int, poll_ms: int
    ) -> list[Message]:
        """Phase one: reserve up to ``qty`` messages, polling server-side for a while."""
        self.stats.polls += 1
        self.stats.slots_offered += qty
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                # As text, decoded one by one: a message that cannot be decoded fails alone.
                "select msg_id, read_ct, enqueued_at, vt, message::text, headers::text"
                " from pgmq.read_with_poll(%s, %s, %s, %s, %s)",
                (queue, visibility_timeout, qty, max_poll_seconds, poll_ms),
            )
            rows = await cur.fetchall()
        self.stats.messages_read += len(rows)
        return [_message(*row) for row in rows]

    async def start_tasks(
        self,
        flow_slug: str,
        msg_ids: Sequence[int],
        worker_id: uuid.UUID,
        queue_name: str | None = None,
        step_slug: str | None = None,
        trace_runs: Sequence[uuid.UUID] = (),
    ) -> list[StepTask]:
        """Phase two: claim the tasks behind the messages of ``queue_name`` (the flow's queue
        by default; a step's queue with ``step_slug``); messages without one are skipped.

        With ``trace_runs``, the trace contexts of those runs are read in the same round trip
        into :attr:`trace_contexts` (runs without one are remembered as None), where the SQL
        has them.

        SQL with pgflow 0.17's queue identity gets the five-argument call; older SQL (pgflow up
        to 0.16, ``@pgflow/core`` 0.8.1) the three-argument one, which has no step queues.
        """
        if self._legacy_input is None:
            await self.detect_flavour()
        self.stats.start_tasks_calls += 1
        queue = queue_name if queue_name is not None else flow_slug.lower()
        if not self._has_queue_identity and step_slug is not None:
            raise WorkerError(
                f"step {step_slug!r} of flow {flow_slug!r} has its own queue, but this "
                "database's pgflow SQL has no per-step queues (pgflow 0.17 added them)"
            )
        traced = list(trace_runs) if self._trace_table == "readable" else []
        async with self._pool.connection() as conn, conn.pipeline():
            # First: should it fail, no task is claimed, rather than claimed and dropped.
            contexts = (
                await conn.execute(
                    "select run_id, traceparent, tracestate from pgflow.run_trace_contexts"
                    " where run_id = any(%s::uuid[])",
                    (traced,),
                )
                if traced
                else None
            )
            if self._has_queue_identity:
                started = await conn.execute(
                    "select t.flow_slug, t.run_id, t.step_slug, t.task_index, t.msg_id,"
                    " to_jsonb(t)::text"
                    " from pgflow.start_tasks(%s, %s::bigint[], %s, %s, %s) t",
                    (flow_slug, list(msg_ids), worker_id, queue, step_slug),
                )
                attempts = await conn.execute(_ATTEMPTS_BY_QUEUE, (queue, list(msg_ids)))
            else:
                started = await conn.execute(
                    "select t.flow_slug, t.run_id, t.step_slug, t.task_index, t.msg_id,"
                    " to_jsonb(t)::text from pgflow.start_tasks(%s, %s::bigint[], %s) t",
                    (flow_slug, list(msg_ids), worker_id),
                )
                attempts = await conn.execute(_ATTEMPTS_BY_FLOW, (flow_slug, list(msg_ids)))
            rows = await started.fetchall()
            attempt_by_msg = {
                row[0]: row[1] for row in await attempts.fetchall() if row[1] is not None
            }
            found = {} if contexts is None else {r[0]: r for r in await contexts.fetchall()}
        for run_id in traced:
            row = found.get(run_id)
            self.trace_contexts.put(
                run_id, None if row is None else RunTraceContext(row[1], row[2])
            )
        self.stats.tasks_started += len(rows)
        tasks: list[StepTask] = []
        for flow, run_id, step_slug, task_index, msg_id, text in rows:
            attempt = attempt_by_msg.get(msg_id, 1)
            try:
                record = loads_json(text)
            except (ValueError, RecursionError) as exc:
                tasks.append(
                    StepTask(
                        flow_slug=flow,
                        run_id=run_id,
                        step_slug=step_slug,
                        task_index=task_index,
                        msg_id=msg_id,
                        input=None,
                        flow_input=None,
                        has_flow_input=False,
                        attempt=attempt,
                        decode_error=_decode_error(exc),
                    )
                )
            else:
                tasks.append(self._to_task(record, attempt))
        return tasks

    def _to_task(self, record: dict[str, Any], attempt: int) -> StepTask:
        raw_input = record["input"]
        flow_input = record.get("flow_input")
        has_flow_input = "flow_input" in record and flow_input is not None
        if self._legacy_input and isinstance(raw_input, dict) and "run" in raw_input:
            flow_input = raw_input["run"]
            has_flow_input = True
            raw_input = {k: v for k, v in raw_input.items() if k != "run"}
        return StepTask(
            flow_slug=record["flow_slug"],
            run_id=uuid.UUID(str(record["run_id"])),
            step_slug=record["step_slug"],
            task_index=int(record["task_index"]),
            msg_id=int(record["msg_id"]),
            input=raw_input,
            flow_input=flow_input,
            has_flow_input=has_flow_input,
            attempt=attempt,
        )

    async def report_batch(self, reports: Sequence[Report]) -> list[Exception | None]:
        """Send several results in one statement, so one transaction; what each one's call
        raised, or None.

        One statement, rather than one per result, spares the server a parse, a plan and a
        command per result. When it fails (the database refused a result, or one could not be
        encoded), each result is sent again alone, so the outcomes are those of separate calls.
        A broken connection raises for the whole batch.
        """
        if len(reports) == 1:
            await self._send_one(reports[0])
            return [None]
        self._count(reports)
        async with self._pool.connection() as conn:
            self.stats.report_transactions += 1
            try:
                await conn.execute(*_call_many(reports))
            except Exception:
                if conn.closed:
                    raise
            else:
                return [None] * len(reports)
            outcomes: list[Exception | None] = []
            for report in reports:
                self.stats.report_transactions += 1
                try:
                    await conn.execute(*_call(report))
                except Exception as exc:  # a refused result, or one that cannot be encoded
                    outcomes.append(exc)
                else:
                    outcomes.append(None)
            return outcomes

    async def _send_one(self, report: Report) -> None:
        self._count((report,))
        async with self._pool.connection() as conn:
            self.stats.report_transactions += 1
            await conn.execute(*_call(report))

    def _count(self, reports: Sequence[Report]) -> None:
        for report in reports:
            if report.kind == "complete":
                self.stats.completions += 1
            else:
                self.stats.failures += 1

    async def load_flow_input(self, run_id: uuid.UUID) -> Any:
        self.stats.flow_input_loads += 1
        async with self._pool.connection() as conn:
            cur = await conn.execute("select input from pgflow.runs where run_id = %s", (run_id,))
            row = await cur.fetchone()
        if row is None:
            raise LookupError(f"run {run_id} does not exist")
        return row[0]

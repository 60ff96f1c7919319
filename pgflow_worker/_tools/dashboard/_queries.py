"""What the dashboard reads from the database, and the three things it changes.

Reads go to pgflow's tables directly (the pages need columns no RPC returns: inputs, map tasks,
attempts); the run list goes through ``pgflow.list_runs``, whose keyset paging uses the runs'
indexes, and cancel and retry through ``pgflow.cancel_run`` and ``pgflow.retry_run``. Large
JSON values are cut in the database, so a 2 MB output never crosses the wire in full.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

__all__ = [
    "MAX_JSON_CHARS",
    "MAX_TASKS_PER_STEP",
    "Database",
    "FlowSummary",
    "Json",
    "RunDetail",
    "StepDetail",
    "StepShape",
]

#: Characters of a JSON value (pretty-printed) shown in a page; the rest is cut with a note.
MAX_JSON_CHARS = 20_000
#: Map tasks listed per step on a run's page.
MAX_TASKS_PER_STEP = 200


@dataclass(frozen=True, slots=True)
class Json:
    """A JSON value as the page shows it: pretty text, possibly cut, and its full length."""

    text: str
    length: int

    @property
    def truncated(self) -> bool:
        """Whether ``text`` is only the beginning of the value."""
        return self.length > len(self.text)


def _json(text: str | None, length: int | None) -> Json | None:
    return None if text is None else Json(text, length or len(text))


def _json_columns(expr: str, name: str) -> str:
    return (
        f"left(jsonb_pretty({expr}), {MAX_JSON_CHARS}) as {name}, "
        f"length(jsonb_pretty({expr})) as {name}_length"
    )


@dataclass(frozen=True, slots=True)
class StepShape:
    """A step of a flow's definition: what the DAG draws."""

    slug: str
    step_type: str
    index: int
    depends_on: tuple[str, ...]
    if_: str | None = None
    if_not: str | None = None
    when_unmet: str = "skip"

    @property
    def conditional(self) -> bool:
        """Whether the step runs only when its input matches a pattern."""
        return self.if_ is not None or self.if_not is not None


@dataclass(frozen=True, slots=True)
class FlowSummary:
    """A flow with its steps and its runs counted by status: every started run, and the
    runs of the last 24 hours that ended."""

    slug: str
    steps: tuple[StepShape, ...]
    counts: dict[str, int]
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Task:
    """One task of a step: the only one of a single step, one element of a map step."""

    task_index: int
    status: str
    attempts_count: int
    error_message: str | None
    output: Json | None
    queued_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None


@dataclass(slots=True)
class StepDetail:
    """A step of one run: its definition, state, output and tasks."""

    shape: StepShape
    status: str
    output: Json | None
    error_message: str | None
    skip_reason: str | None
    initial_tasks: int | None
    remaining_tasks: int | None
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    skipped_at: datetime | None
    max_attempts: int | None
    tasks: list[Task] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        """The most attempts any of its tasks took."""
        return max((t.attempts_count for t in self.tasks), default=0)

    @property
    def ended_at(self) -> datetime | None:
        """When it completed, failed or was skipped."""
        return self.completed_at or self.failed_at or self.skipped_at


@dataclass(slots=True)
class RunDetail:
    """One run with its steps, as its page shows it."""

    run_id: str
    flow_slug: str
    status: str
    input: Json | None
    output: Json | None
    remaining_steps: int
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    cancelled_at: datetime | None
    cancel_reason: str | None
    restart_of_run_id: str | None
    error_message: str | None
    retries: list[str]
    steps: list[StepDetail]

    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled (it is then ``failed``)."""
        return self.cancelled_at is not None

    @property
    def shown_status(self) -> str:
        """The status a person reads: ``cancelled`` for a cancelled run."""
        return "cancelled" if self.cancelled else self.status

    @property
    def ended_at(self) -> datetime | None:
        """When it completed or failed."""
        return self.completed_at or self.failed_at


def _pattern(value: Any) -> str | None:
    import json

    return None if value is None else json.dumps(value, sort_keys=True)


class Database:
    """The dashboard's connection pool and its queries."""

    def __init__(self, dsn: str, *, max_size: int = 4) -> None:
        self.dsn = dsn
        self._max_size = max(2, max_size)
        self._pool: AsyncConnectionPool[AsyncConnection[dict[str, Any]]] | None = None

    async def open(self, timeout: float = 30.0) -> None:
        """Open a new pool; fails when the server cannot be reached within ``timeout``."""
        self._pool = AsyncConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self._max_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            check=AsyncConnectionPool.check_connection,
            open=False,
            name="pgflow-dashboard",
        )
        await self._pool.open(wait=True, timeout=timeout)

    async def close(self) -> None:
        """Close every connection."""
        if self._pool is not None:
            await self._pool.close()

    async def _rows(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        if self._pool is None:
            raise RuntimeError("the dashboard's database pool is not open")
        async with self._pool.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    # -- flows --------------------------------------------------------------------------------

    async def shapes(self, flow_slug: str | None = None) -> dict[str, list[StepShape]]:
        """Each flow's steps in order, with their dependencies and conditions."""
        rows = await self._rows(
            """
            select s.flow_slug, s.step_slug, s.step_type, s.step_index,
                   s.required_input_pattern, s.forbidden_input_pattern, s.when_unmet,
                   coalesce(array_agg(d.dep_slug order by d.dep_slug)
                            filter (where d.dep_slug is not null), '{}') as deps
              from pgflow.steps as s
              left join pgflow.deps as d
                on d.flow_slug = s.flow_slug and d.step_slug = s.step_slug
             where %(flow)s::text is null or s.flow_slug = %(flow)s
             group by s.flow_slug, s.step_slug
             order by s.flow_slug, s.step_index
            """,
            {"flow": flow_slug},
        )
        shapes: dict[str, list[StepShape]] = {}
        for r in rows:
            shapes.setdefault(r["flow_slug"], []).append(
                StepShape(
                    slug=r["step_slug"],
                    step_type=r["step_type"],
                    index=r["step_index"],
                    depends_on=tuple(r["deps"]),
                    if_=_pattern(r["required_input_pattern"]),
                    if_not=_pattern(r["forbidden_input_pattern"]),
                    when_unmet=r["when_unmet"],
                )
            )
        return shapes

    async def flow_slugs(self) -> list[str]:
        """Every flow's slug, in order."""
        rows = await self._rows("select flow_slug from pgflow.flows order by flow_slug")
        return [r["flow_slug"] for r in rows]

    async def flows(self) -> list[FlowSummary]:
        """Every flow with its steps and its runs counted by status (see FlowSummary)."""
        flows = await self._rows(
            "select flow_slug, created_at from pgflow.flows order by flow_slug"
        )
        # Bounded work on any table size: the started runs through the status index (they
        # are the runs in flight, few), the others of the last day through the start index.
        counts = await self._rows(
            """
            select flow_slug, 'started' as status, count(*) as n
              from pgflow.runs
             where status = 'started'
             group by flow_slug
            union all
            select flow_slug,
                   case when cancelled_at is not null then 'cancelled' else status end,
                   count(*)
              from pgflow.runs
             where started_at >= now() - interval '24 hours' and status <> 'started'
             group by 1, 2
            """
        )
        shapes = await self.shapes()
        by_flow: dict[str, dict[str, int]] = {}
        for r in counts:
            by_flow.setdefault(r["flow_slug"], {})[r["status"]] = r["n"]
        return [
            FlowSummary(
                slug=f["flow_slug"],
                steps=tuple(shapes.get(f["flow_slug"], [])),
                counts=by_flow.get(f["flow_slug"], {}),
                created_at=f["created_at"],
            )
            for f in flows
        ]

    # -- runs ---------------------------------------------------------------------------------

    async def list_runs(
        self,
        *,
        flow_slug: str | None,
        status: str | None,
        limit: int,
        before: str | None,
    ) -> list[dict[str, Any]]:
        """One page of runs, newest first, through ``pgflow.list_runs``."""
        return await self._rows(
            """
            select * from pgflow.list_runs(
              flow_slug => %s, status => %s, max_runs => %s, before_run_id => %s::uuid)
            """,
            (flow_slug, status, limit, before),
        )

    async def run_exists(self, run_id: str) -> bool:
        """Whether the run exists."""
        rows = await self._rows("select 1 from pgflow.runs where run_id = %s::uuid", (run_id,))
        return bool(rows)

    async def run(self, run_id: str) -> RunDetail | None:
        """The run with its steps and their tasks, or None when there is no such run."""
        runs = await self._rows(
            f"""
            select r.run_id::text, r.flow_slug, r.status, r.remaining_steps, r.started_at,
                   r.completed_at, r.failed_at, r.cancelled_at, r.cancel_reason,
                   r.restart_of_run_id::text,
                   {_json_columns("r.input", "input")},
                   {_json_columns("r.output", "output")},
                   (select array_agg(n.run_id::text order by n.started_at)
                      from pgflow.runs as n where n.restart_of_run_id = r.run_id) as retries
              from pgflow.runs as r
             where r.run_id = %s::uuid
            """,
            (run_id,),
        )
        if not runs:
            return None
        r = runs[0]
        shapes = (await self.shapes(r["flow_slug"])).get(r["flow_slug"], [])
        states = await self._rows(
            f"""
            select ss.step_slug, ss.status, ss.error_message, ss.skip_reason, ss.initial_tasks,
                   ss.remaining_tasks, ss.started_at, ss.completed_at, ss.failed_at,
                   ss.skipped_at, coalesce(s.opt_max_attempts, f.opt_max_attempts) as max_attempts,
                   {_json_columns("ss.output", "output")}
              from pgflow.step_states as ss
              join pgflow.steps as s on s.flow_slug = ss.flow_slug and s.step_slug = ss.step_slug
              join pgflow.flows as f on f.flow_slug = ss.flow_slug
             where ss.run_id = %s::uuid
            """,
            (run_id,),
        )
        tasks = await self._rows(
            f"""
            select * from (
              select t.step_slug, t.task_index, t.status, t.attempts_count, t.error_message,
                     t.queued_at, t.started_at, t.completed_at, t.failed_at,
                     {_json_columns("t.output", "output")},
                     row_number() over (partition by t.step_slug order by t.task_index) as n
                from pgflow.step_tasks as t
               where t.run_id = %s::uuid
            ) as numbered
             where n <= {MAX_TASKS_PER_STEP}
             order by step_slug, task_index
            """,
            (run_id,),
        )
        by_slug = {s["step_slug"]: s for s in states}
        steps: list[StepDetail] = []
        for shape in shapes:
            s = by_slug.get(shape.slug, {})
            steps.append(
                StepDetail(
                    shape=shape,
                    status=s.get("status", "created"),
                    output=_json(s.get("output"), s.get("output_length")),
                    error_message=s.get("error_message"),
                    skip_reason=s.get("skip_reason"),
                    initial_tasks=s.get("initial_tasks"),
                    remaining_tasks=s.get("remaining_tasks"),
                    started_at=s.get("started_at"),
                    completed_at=s.get("completed_at"),
                    failed_at=s.get("failed_at"),
                    skipped_at=s.get("skipped_at"),
                    max_attempts=s.get("max_attempts"),
                )
            )
        step_of = {s.shape.slug: s for s in steps}
        for t in tasks:
            step = step_of.get(t["step_slug"])
            if step is not None:
                step.tasks.append(
                    Task(
                        task_index=t["task_index"],
                        status=t["status"],
                        attempts_count=t["attempts_count"],
                        error_message=t["error_message"],
                        output=_json(t["output"], t["output_length"]),
                        queued_at=t["queued_at"],
                        started_at=t["started_at"],
                        completed_at=t["completed_at"],
                        failed_at=t["failed_at"],
                    )
                )
        failed = next((s for s in steps if s.status == "failed"), None)
        error = None
        if r["cancelled_at"] is not None:
            error = "Run cancelled" + (f": {r['cancel_reason']}" if r["cancel_reason"] else "")
        elif failed is not None:
            error = failed.error_message
        return RunDetail(
            run_id=r["run_id"],
            flow_slug=r["flow_slug"],
            status=r["status"],
            input=_json(r["input"], r["input_length"]),
            output=_json(r["output"], r["output_length"]),
            remaining_steps=r["remaining_steps"],
            started_at=r["started_at"],
            completed_at=r["completed_at"],
            failed_at=r["failed_at"],
            cancelled_at=r["cancelled_at"],
            cancel_reason=r["cancel_reason"],
            restart_of_run_id=r["restart_of_run_id"],
            error_message=error,
            retries=list(r["retries"] or []),
            steps=steps,
        )

    async def cancel_run(self, run_id: str, reason: str | None) -> None:
        """``pgflow.cancel_run``; raises psycopg's error when the run cannot be cancelled."""
        await self._rows("select run_id from pgflow.cancel_run(%s::uuid, %s)", (run_id, reason))

    async def retry_run(self, run_id: str) -> str:
        """``pgflow.retry_run``; returns the new run's id."""
        rows = await self._rows("select run_id::text from pgflow.retry_run(%s::uuid)", (run_id,))
        return str(rows[0]["run_id"])


def canonical(run_id: str) -> str | None:
    """The run id in its canonical form, or None when it is not a UUID."""
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        return None

"""Flow shapes: compare a flow's definition with the one stored in the database, and compile it.

A shape is the structure that decides how runs execute: the steps in order, their types and
dependencies, and their conditions (``whenUnmet``, ``whenExhausted``, both input patterns). It
is the same JSON pgflow's ``extractFlowShape`` and ``_get_flow_shape`` produce. Options
(attempts, delays, timeouts) ride along, to be stored when the flow is created, but are not
part of the comparison: once stored they are the database's, tunable in SQL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

from psycopg import AsyncConnection, AsyncCursor, sql
from psycopg.rows import tuple_row
from pydantic import JsonValue

from ._compiler import compile_flow
from ._flow import Flow
from .errors import FlowShapeMismatch, WorkerError

_Cursor = AsyncCursor[tuple[Any, ...]]

__all__ = [
    "EnsureResult",
    "FlowShape",
    "StepShape",
    "compare_flow_shapes",
    "ensure_flow",
    "flow_shape",
    "read_flow_shape",
]

_FLOW_OPTIONS = (
    ("maxAttempts", "max_attempts"),
    ("baseDelay", "base_delay"),
    ("timeout", "timeout"),
)
_STEP_OPTIONS = (*_FLOW_OPTIONS, ("startDelay", "start_delay"))


class PatternShape(TypedDict):
    """A step condition: ``{"defined": false}``, or ``{"defined": true, "value": pattern}``."""

    defined: bool
    value: NotRequired[JsonValue]


class FlowOptionsShape(TypedDict, total=False):
    """The flow options that are set, by their pgflow (camelCase) names."""

    maxAttempts: int
    baseDelay: int
    timeout: int


class StepOptionsShape(FlowOptionsShape, total=False):
    """The step options that are set, by their pgflow (camelCase) names."""

    startDelay: int


class StepShape(TypedDict):
    """One step's structure; dependencies are sorted."""

    slug: str
    stepType: str
    dependencies: list[str]
    whenUnmet: str
    whenExhausted: str
    requiredInputPattern: PatternShape
    forbiddenInputPattern: PatternShape
    options: NotRequired[StepOptionsShape]


class FlowShape(TypedDict):
    """A flow's structure: its steps in order (and the options that are set)."""

    steps: list[StepShape]
    options: NotRequired[FlowOptionsShape]


FLOW_DEFAULTS: dict[str, int] = {"maxAttempts": 3, "baseDelay": 5, "timeout": 60}
"""What ``pgflow.create_flow`` stores for an option passed as NULL."""


@dataclass(frozen=True, slots=True)
class EnsureResult:
    """What :func:`ensure_flow` found and did, in the words of pgflow's ``ensure_flow_compiled``."""

    flow_slug: str
    status: Literal["compiled", "verified", "recompiled"]
    """``compiled``: the flow was missing and was created; ``verified``: it has this shape and
    was left as stored; ``recompiled``: its shape differed and it was replaced, runs deleted."""
    differences: tuple[str, ...] = ()
    """For ``recompiled``: how the stored shape differed from the definition."""
    kept_options: tuple[str, ...] = ()
    """For ``verified``: each option stored in the database that differs from the definition
    and was kept (tuned in SQL, or changed in code since the flow was compiled), e.g.
    ``"step 'fetch' timeout: 30 in the database, 60 in the definition"``."""


def flow_shape(flow: Flow) -> FlowShape:
    """The shape of a flow definition, as pgflow's ``extractFlowShape`` builds it."""
    steps: list[StepShape] = []
    for step in flow.steps:
        options = step.options
        shape: StepShape = {
            "slug": step.slug,
            "stepType": step.step_type,
            "dependencies": sorted(step.dependencies),
            "whenUnmet": options.when_unmet or "skip",
            "whenExhausted": options.when_exhausted or "fail",
            "requiredInputPattern": _pattern(options.if_),
            "forbiddenInputPattern": _pattern(options.if_not),
        }
        step_options: StepOptionsShape = {}
        for key, attr in _STEP_OPTIONS:
            value = getattr(step.options, attr)
            if value is not None:
                step_options[key] = value  # type: ignore[literal-required]
        if step_options:
            shape["options"] = step_options
        steps.append(shape)
    result: FlowShape = {"steps": steps}
    flow_options: FlowOptionsShape = {}
    for key, attr in _FLOW_OPTIONS:
        value = getattr(flow.options, attr)
        if value is not None:
            flow_options[key] = value  # type: ignore[literal-required]
    if flow_options:
        result["options"] = flow_options
    return result


async def read_flow_shape(conn: AsyncConnection[Any], flow_slug: str) -> FlowShape | None:
    """The shape of the flow stored in ``pgflow.flows/steps/deps``, or ``None`` if there is none.

    Works on any pgflow schema: columns a version lacks (conditions before pgflow 0.14) read as
    their defaults. Options are included as stored: all three for the flow, and the ones set
    for each step.
    """
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "select opt_max_attempts, opt_base_delay, opt_timeout from pgflow.flows"
            " where flow_slug = %s",
            (flow_slug,),
        )
        flow_row = await cur.fetchone()
        if flow_row is None:
            return None

        await cur.execute(
            "select column_name from information_schema.columns"
            " where table_schema = 'pgflow' and table_name = 'steps'"
        )
        present = {name for (name,) in await cur.fetchall()}
        optional = {
            "opt_start_delay": sql.SQL("null::int"),
            "when_unmet": sql.Literal("skip"),
            "when_exhausted": sql.Literal("fail"),
            "required_input_pattern": sql.SQL("null::jsonb"),
            "forbidden_input_pattern": sql.SQL("null::jsonb"),
        }
        columns = [
            sql.Identifier(name) if name in present else default
            for name, default in optional.items()
        ]
        await cur.execute(
            sql.SQL(
                "select step_slug, step_type, opt_max_attempts, opt_base_delay, opt_timeout, {}"
                " from pgflow.steps where flow_slug = %s order by step_index"
            ).format(sql.SQL(", ").join(columns)),
            (flow_slug,),
        )
        step_rows = await cur.fetchall()
        await cur.execute(
            "select step_slug, dep_slug from pgflow.deps where flow_slug = %s order by dep_slug",
            (flow_slug,),
        )
        deps: dict[str, list[str]] = {}
        for step_slug, dep_slug in await cur.fetchall():
            deps.setdefault(step_slug, []).append(dep_slug)

    steps: list[StepShape] = []
    for row in step_rows:
        slug, step_type, max_attempts, base_delay, timeout, start_delay = row[:6]
        when_unmet, when_exhausted, required, forbidden = row[6:]
        shape: StepShape = {
            "slug": slug,
            "stepType": step_type,
            "dependencies": deps.get(slug, []),
            "whenUnmet": when_unmet,
            "whenExhausted": when_exhausted,
            "requiredInputPattern": _pattern(required),
            "forbiddenInputPattern": _pattern(forbidden),
        }
        step_options: StepOptionsShape = {}
        for key, value in zip(
            ("maxAttempts", "baseDelay", "timeout", "startDelay"),
            (max_attempts, base_delay, timeout, start_delay),
            strict=True,
        ):
            if value is not None:
                step_options[key] = value  # type: ignore[literal-required]
        if step_options:
            shape["options"] = step_options
        steps.append(shape)
    max_attempts, base_delay, timeout = flow_row
    return {
        "steps": steps,
        "options": {"maxAttempts": max_attempts, "baseDelay": base_delay, "timeout": timeout},
    }


def compare_flow_shapes(local: FlowShape, stored: FlowShape) -> list[str]:
    """How two shapes differ, one sentence per difference, as pgflow's ``_compare_flow_shapes``.

    Empty when they match. Options are ignored.
    """
    differences: list[str] = []
    local_steps, stored_steps = local["steps"], stored["steps"]
    if len(local_steps) != len(stored_steps):
        differences.append(f"Step count differs: {len(local_steps)} vs {len(stored_steps)}")
    for i in range(max(len(local_steps), len(stored_steps))):
        if i >= len(local_steps):
            differences.append(
                f"Step at index {i}: missing in first shape "
                f"(second has '{stored_steps[i]['slug']}')"
            )
        elif i >= len(stored_steps):
            differences.append(
                f"Step at index {i}: missing in second shape (first has '{local_steps[i]['slug']}')"
            )
        else:
            differences.extend(_compare_steps(i, local_steps[i], stored_steps[i]))
    return differences


def _compare_steps(i: int, a: StepShape, b: StepShape) -> list[str]:
    out: list[str] = []
    where = f"Step at index {i}"
    if a["slug"] != b["slug"]:
        out.append(f"{where}: slug differs '{a['slug']}' vs '{b['slug']}'")
    if a["stepType"] != b["stepType"]:
        out.append(f"{where}: type differs '{a['stepType']}' vs '{b['stepType']}'")
    a_deps, b_deps = sorted(a["dependencies"]), sorted(b["dependencies"])
    if a_deps != b_deps:
        out.append(f"{where}: dependencies differ [{', '.join(a_deps)}] vs [{', '.join(b_deps)}]")
    for key in ("whenUnmet", "whenExhausted"):
        if a.get(key) != b.get(key):
            out.append(f"{where}: {key} differs '{a.get(key)}' vs '{b.get(key)}'")
    for key in ("requiredInputPattern", "forbiddenInputPattern"):
        if not _same_json(a.get(key), b.get(key)):
            out.append(f"{where}: {key} differs '{_json(a.get(key))}' vs '{_json(b.get(key))}'")
    return out


def _same_json(a: object, b: object) -> bool:
    """Equality as jsonb sees it: numbers by value (1 == 1.0), but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


async def ensure_flow(
    conn: AsyncConnection[Any], flow: Flow, *, recompile: bool = False
) -> EnsureResult:
    """Make the database hold ``flow``: create it, verify it, or (when told to) replace it.

    One call of ``pgflow.ensure_flow_compiled`` does it, in one transaction under pgflow's
    advisory lock on the flow, so workers starting together compile it once. A stored flow of
    the same shape is left exactly as stored: options tuned in SQL survive restarts (the ones
    differing from the definition are listed in the result). A stored flow of another shape
    raises :class:`FlowShapeMismatch`, unless the database is a local Supabase stack
    (``pgflow.is_local()``) or ``recompile`` is true: then the flow, its queue and all its runs
    are deleted and it is created afresh. SQL without ``ensure_flow_compiled`` (the official
    0.8.1, whose releases predate it) gets the same behaviour from Python, under the same lock.
    """
    slug = flow.slug
    shape = flow_shape(flow)
    async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "select exists (select 1 from pg_proc where proname = 'ensure_flow_compiled'"
            " and pronamespace = to_regnamespace('pgflow'))"
        )
        row = await cur.fetchone()
        in_sql = bool(row is not None and row[0])
        if in_sql:
            result = await _ensure_in_sql(cur, flow, shape)
        elif flow.step_queues:
            raise WorkerError(
                f"flow {slug!r} has a queue per step, but this database's pgflow SQL has no "
                "per-step queues (pgflow 0.17 added them): migrate it, or drop step_queues"
            )
        else:
            result = await _ensure_in_python(cur, conn, flow, shape)
        status, differences, kind = result
        if status == "mismatch":
            if not recompile:
                raise FlowShapeMismatch(slug, differences, mismatch_kind=kind)
            await _delete_flow_and_data(cur, slug)
            if in_sql:
                await _ensure_in_sql(cur, flow, shape)
            else:
                await _create(cur, flow)
            return EnsureResult(slug, "recompiled", differences=tuple(differences))
        if status == "verified":
            kept = await _option_differences(conn, flow)
            return EnsureResult(slug, "verified", kept_options=tuple(kept))
        if status == "compiled":
            return EnsureResult(slug, "compiled")
        if status == "recompiled":  # by ensure_flow_compiled itself, on a local stack
            return EnsureResult(slug, "recompiled", differences=tuple(differences))
        raise WorkerError(f"ensure_flow_compiled returned an unknown status {status!r}")


async def _ensure_in_sql(cur: _Cursor, flow: Flow, shape: FlowShape) -> tuple[str, list[str], str]:
    if flow.step_queues:
        await cur.execute(
            "select pgflow.ensure_flow_compiled(%s, %s::jsonb, 'step', %s::jsonb)",
            (flow.slug, json.dumps(shape), json.dumps(flow.route_map())),
        )
    else:
        # Two arguments: every version takes them (0.17 defaults the rest).
        await cur.execute(
            "select pgflow.ensure_flow_compiled(%s, %s::jsonb)", (flow.slug, json.dumps(shape))
        )
    row = await cur.fetchone()
    answer = row[0] if row is not None else None
    if isinstance(answer, str):
        answer = json.loads(answer)
    if not isinstance(answer, dict):
        raise WorkerError(f"ensure_flow_compiled returned {answer!r}, not an object")
    differences = [str(d) for d in answer.get("differences") or []]
    return str(answer.get("status")), differences, str(answer.get("mismatchKind") or "shape")


async def _ensure_in_python(
    cur: _Cursor, conn: AsyncConnection[Any], flow: Flow, shape: FlowShape
) -> tuple[str, list[str], str]:
    """``ensure_flow_compiled`` for SQL that lacks it (never recompiles: that is the caller's)."""
    await cur.execute(_LOCK, (flow.slug,))
    stored = await read_flow_shape(conn, flow.slug)
    if stored is None:
        await _create(cur, flow)
        return "compiled", [], "shape"
    differences = compare_flow_shapes(shape, stored)
    return ("mismatch" if differences else "verified"), differences, "shape"


#: pgflow's advisory lock on a flow's definition (``ensure_flow_compiled`` and ``create_flow``
#: take it too), held until the transaction ends.
_LOCK = "select pg_advisory_xact_lock(1, hashtext(lower(%s::text)))"


async def _create(cur: _Cursor, flow: Flow) -> None:
    for statement in compile_flow(flow):
        await cur.execute(statement)


async def _delete_flow_and_data(cur: _Cursor, slug: str) -> None:
    """``pgflow.delete_flow_and_data`` where the SQL has it, else the same deletes here."""
    await cur.execute("select to_regprocedure('pgflow.delete_flow_and_data(text)') is not null")
    row = await cur.fetchone()
    if row is not None and row[0]:
        await cur.execute("select pgflow.delete_flow_and_data(%s)", (slug,))
        return
    for table in ("step_tasks", "step_states", "runs", "deps", "steps", "flows"):
        await cur.execute(
            sql.SQL("delete from pgflow.{} where flow_slug = %s").format(sql.Identifier(table)),
            (slug,),
        )
    await cur.execute(
        "select pgmq.drop_queue(queue_name) from pgmq.meta where queue_name = %s", (slug,)
    )


async def _option_differences(conn: AsyncConnection[Any], flow: Flow) -> list[str]:
    """Each stored option that differs from the definition (an unset flow option means
    pgflow's default), described for the log."""
    stored = await read_flow_shape(conn, flow.slug)
    if stored is None:
        return []
    out: list[str] = []
    stored_flow = _ints(stored.get("options", {}))
    for key, attr in _FLOW_OPTIONS:
        wanted = getattr(flow.options, attr)
        if wanted is None:
            wanted = FLOW_DEFAULTS[key]
        current = stored_flow.get(key)
        if current != wanted:
            out.append(f"flow {attr}: {current} in the database, {wanted} in the definition")
    stored_steps = {s["slug"]: _ints(s.get("options", {})) for s in stored["steps"]}
    for step in flow.steps:
        current_options = stored_steps.get(step.slug, {})
        for key, attr in _STEP_OPTIONS:
            wanted_step = getattr(step.options, attr)
            current = current_options.get(key)
            if current != wanted_step:
                out.append(
                    f"step {step.slug!r} {attr}: {_option(current)} in the database, "
                    f"{_option(wanted_step)} in the definition"
                )
    return out


def _ints(options: Mapping[str, object]) -> dict[str, int]:
    return {key: value for key, value in options.items() if isinstance(value, int)}


def _option(value: int | None) -> str:
    return "unset" if value is None else str(value)


def _pattern(value: JsonValue) -> PatternShape:
    return {"defined": False} if value is None else {"defined": True, "value": value}


def _json(value: object) -> str:
    return json.dumps(value)

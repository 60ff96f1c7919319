"""Flow shapes: compare a flow's definition with the one stored in the database, and reconcile.

A shape is the structure that decides how runs execute: the steps in order, their types and
dependencies, and their conditions (``whenUnmet``, ``whenExhausted``, both input patterns). It
is the same JSON pgflow's ``extractFlowShape`` and ``_get_flow_shape`` produce. Options
(attempts, delays, timeouts) ride along but are not part of the comparison: they can change
without touching existing runs.
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
from .errors import FlowShapeMismatch

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
    """What :func:`ensure_flow` found and did."""

    flow_slug: str
    status: Literal["created", "verified", "updated", "recompiled"]
    """``created``: the flow was missing; ``verified``: it matched; ``updated``: it matched but
    some options were changed in place; ``recompiled``: its shape differed and it was replaced."""
    differences: tuple[str, ...] = ()
    """For ``recompiled``: how the stored shape differed from the definition."""
    updated_options: tuple[str, ...] = ()
    """For ``updated``: each option changed, e.g. ``"step 'fetch' timeout: 30 -> 60"``."""


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
    """Make the database hold ``flow`` as defined, creating, checking or replacing it.

    Runs in one transaction under an advisory lock on the flow, so workers starting together
    do not race. A missing flow is created. A stored flow of the same shape is kept, with its
    options brought in line with the definition (an option left unset means pgflow's default).
    A stored flow of another shape raises :class:`FlowShapeMismatch`, unless ``recompile`` is
    true: then the flow, its queue and all its runs are deleted and it is created afresh.
    """
    slug = flow.slug
    async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "select pg_advisory_xact_lock(hashtext('pgflow:flow:' || %s::text))", (slug,)
        )
        stored = await read_flow_shape(conn, slug)
        if stored is None:
            await _create(cur, flow)
            return EnsureResult(slug, "created")
        differences = compare_flow_shapes(flow_shape(flow), stored)
        if differences:
            if not recompile:
                raise FlowShapeMismatch(slug, differences)
            await _delete_flow_and_data(cur, slug)
            await _create(cur, flow)
            return EnsureResult(slug, "recompiled", differences=tuple(differences))
        changes = await _sync_options(cur, flow, stored)
        if changes:
            return EnsureResult(slug, "updated", updated_options=tuple(changes))
        return EnsureResult(slug, "verified")


async def _create(cur: _Cursor, flow: Flow) -> None:
    for statement in compile_flow(flow):
        await cur.execute(statement)


async def _delete_flow_and_data(cur: _Cursor, slug: str) -> None:
    """Everything pgflow holds for the flow, in foreign-key order, and its pgmq queue."""
    for table in ("step_tasks", "step_states", "runs", "deps", "steps", "flows"):
        await cur.execute(
            sql.SQL("delete from pgflow.{} where flow_slug = %s").format(sql.Identifier(table)),
            (slug,),
        )
    await cur.execute(
        "select pgmq.drop_queue(queue_name) from pgmq.meta where queue_name = %s", (slug,)
    )


async def _sync_options(cur: _Cursor, flow: Flow, stored: FlowShape) -> list[str]:
    """Update the stored options that differ from the definition; describe each change."""
    changes: list[str] = []
    stored_flow = _ints(stored.get("options", {}))
    assignments: list[tuple[str, int]] = []
    for key, attr in _FLOW_OPTIONS:
        wanted = getattr(flow.options, attr)
        if wanted is None:
            wanted = FLOW_DEFAULTS[key]
        current = stored_flow.get(key)
        if current != wanted:
            assignments.append((attr, wanted))
            changes.append(f"flow {attr}: {current} -> {wanted}")
    if assignments:
        await cur.execute(
            sql.SQL("update pgflow.flows set {} where flow_slug = %s").format(
                sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.Identifier(f"opt_{attr}"), sql.Literal(value))
                    for attr, value in assignments
                )
            ),
            (flow.slug,),
        )

    stored_steps = {s["slug"]: _ints(s.get("options", {})) for s in stored["steps"]}
    for step in flow.steps:
        current_options = stored_steps[step.slug]
        step_assignments: list[tuple[str, int | None]] = []
        for key, attr in _STEP_OPTIONS:
            wanted_step = getattr(step.options, attr)
            current = current_options.get(key)
            if current != wanted_step:
                step_assignments.append((attr, wanted_step))
                changes.append(
                    f"step {step.slug!r} {attr}: {_option(current)} -> {_option(wanted_step)}"
                )
        if step_assignments:
            await cur.execute(
                sql.SQL(
                    "update pgflow.steps set {} where flow_slug = %s and step_slug = %s"
                ).format(
                    sql.SQL(", ").join(
                        sql.SQL("{} = {}").format(
                            sql.Identifier(f"opt_{attr}"),
                            sql.SQL("null") if value is None else sql.Literal(value),
                        )
                        for attr, value in step_assignments
                    )
                ),
                (flow.slug, step.slug),
            )
    return changes


def _ints(options: Mapping[str, object]) -> dict[str, int]:
    return {key: value for key, value in options.items() if isinstance(value, int)}


def _option(value: int | None) -> str:
    return "unset" if value is None else str(value)


def _pattern(value: JsonValue) -> PatternShape:
    return {"defined": False} if value is None else {"defined": True, "value": value}


def _json(value: object) -> str:
    return json.dumps(value)

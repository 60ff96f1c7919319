"""Flow shapes: extraction, comparison, reading them back, and ensure_flow on real Postgres."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from pgflow_worker._compiler import compile_flow
from pgflow_worker._flow import Flow
from pgflow_worker._shape import (
    EnsureResult,
    FlowShape,
    compare_flow_shapes,
    ensure_flow,
    flow_shape,
    read_flow_shape,
)
from pgflow_worker.errors import FlowShapeMismatch


def _identity(input: Any) -> Any:
    return input


def website_flow(**flow_options: Any) -> Flow:
    flow = Flow("analyze_website", **flow_options)
    flow.step(_identity, slug="website")
    flow.step(_identity, slug="sentiment", depends_on=["website"], max_attempts=5, timeout=30)
    flow.step(_identity, slug="summary", depends_on=["website"])
    flow.step(_identity, slug="save_to_db", depends_on=["summary", "sentiment"])
    return flow


def map_flow(slug: str = "fan_out") -> Flow:
    flow = Flow(slug)
    flow.map(_identity, slug="each_input")
    flow.array(_identity, slug="items", depends_on=["each_input"])
    flow.map(_identity, slug="each_item", array="items", start_delay=0)
    return flow


NO_CONDITIONS = {
    "whenUnmet": "skip",
    "whenExhausted": "fail",
    "requiredInputPattern": {"defined": False},
    "forbiddenInputPattern": {"defined": False},
}


@pytest.fixture
def core_url(any_db_url: str) -> str:
    """A fresh database with pgflow's definition functions: ours, then the official SQL."""
    with psycopg.connect(any_db_url) as conn:
        row = conn.execute(
            "select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'pgflow' and p.proname in ('create_flow', 'add_step')"
        ).fetchone()
    if row is None or row[0] < 2:
        pytest.skip("this database has no pgflow.create_flow/add_step (SQL core not migrated)")
    return any_db_url


@pytest.fixture
async def core(core_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(core_url, autocommit=True) as conn:
        yield conn


# -- flow_shape ---------------------------------------------------------------------------------


def test_flow_shape_matches_pgflow_extract_flow_shape() -> None:
    shape = flow_shape(website_flow(max_attempts=3, base_delay=5, timeout=10))
    assert shape == {
        "steps": [
            {"slug": "website", "stepType": "single", "dependencies": [], **NO_CONDITIONS},
            {
                "slug": "sentiment",
                "stepType": "single",
                "dependencies": ["website"],
                **NO_CONDITIONS,
                "options": {"maxAttempts": 5, "timeout": 30},
            },
            {"slug": "summary", "stepType": "single", "dependencies": ["website"], **NO_CONDITIONS},
            {
                "slug": "save_to_db",
                "stepType": "single",
                "dependencies": ["sentiment", "summary"],
                **NO_CONDITIONS,
            },
        ],
        "options": {"maxAttempts": 3, "baseDelay": 5, "timeout": 10},
    }
    assert list(shape["steps"][1]) == [
        "slug",
        "stepType",
        "dependencies",
        "whenUnmet",
        "whenExhausted",
        "requiredInputPattern",
        "forbiddenInputPattern",
        "options",
    ]


def test_flow_shape_omits_unset_options_and_types_maps() -> None:
    shape = flow_shape(map_flow())
    assert "options" not in shape
    assert [(s["slug"], s["stepType"], s["dependencies"]) for s in shape["steps"]] == [
        ("each_input", "map", []),
        ("items", "single", ["each_input"]),
        ("each_item", "map", ["items"]),
    ]
    assert "options" not in shape["steps"][0]
    assert shape["steps"][2]["options"] == {"startDelay": 0}


def test_flow_shape_is_json() -> None:
    shape = flow_shape(website_flow(timeout=5))
    assert json.loads(json.dumps(shape)) == shape


# -- compare_flow_shapes ------------------------------------------------------------------------


def _shape(*steps: tuple[str, str, list[str]]) -> FlowShape:
    return {
        "steps": [
            {"slug": slug, "stepType": kind, "dependencies": deps, **NO_CONDITIONS}  # type: ignore[typeddict-item]
            for slug, kind, deps in steps
        ]
    }


def test_equal_shapes_have_no_differences() -> None:
    a = flow_shape(website_flow())
    b = flow_shape(website_flow(max_attempts=9))
    b["steps"][0]["options"] = {"timeout": 99}
    assert compare_flow_shapes(a, b) == []


def test_differences_are_described_like_pgflow() -> None:
    local = _shape(("a", "single", []), ("b", "single", ["a"]), ("c", "map", ["b"]))
    stored = _shape(("a", "single", []), ("x", "map", ["a", "z"]))
    assert compare_flow_shapes(local, stored) == [
        "Step count differs: 3 vs 2",
        "Step at index 1: slug differs 'b' vs 'x'",
        "Step at index 1: type differs 'single' vs 'map'",
        "Step at index 1: dependencies differ [a] vs [a, z]",
        "Step at index 2: missing in second shape (first has 'c')",
    ]
    assert compare_flow_shapes(stored, local)[-1] == (
        "Step at index 2: missing in first shape (second has 'c')"
    )


def test_dependency_order_does_not_matter() -> None:
    local = _shape(("a", "single", []), ("b", "single", []), ("c", "single", ["b", "a"]))
    stored = _shape(("a", "single", []), ("b", "single", []), ("c", "single", ["a", "b"]))
    assert compare_flow_shapes(local, stored) == []


def test_condition_differences_are_reported() -> None:
    local = _shape(("a", "single", []))
    stored = _shape(("a", "single", []))
    stored["steps"][0]["whenUnmet"] = "fail"
    stored["steps"][0]["requiredInputPattern"] = {"defined": True, "value": {"k": 1}}
    assert compare_flow_shapes(local, stored) == [
        "Step at index 0: whenUnmet differs 'skip' vs 'fail'",
        "Step at index 0: requiredInputPattern differs "
        '\'{"defined": false}\' vs \'{"defined": true, "value": {"k": 1}}\'',
    ]


# -- read_flow_shape ----------------------------------------------------------------------------


async def _compile(conn: psycopg.AsyncConnection[Any], flow: Flow) -> None:
    for statement in compile_flow(flow):
        await conn.execute(statement.encode())


async def test_read_flow_shape_of_a_missing_flow(core: psycopg.AsyncConnection[Any]) -> None:
    assert await read_flow_shape(core, "nope") is None


async def test_read_flow_shape_round_trips(core: psycopg.AsyncConnection[Any]) -> None:
    for flow in (website_flow(timeout=10), map_flow(), Flow("no_steps")):
        await _compile(core, flow)
        stored = await read_flow_shape(core, flow.slug)
        assert stored is not None
        local = flow_shape(flow)
        assert compare_flow_shapes(local, stored) == []
        assert stored["steps"] == local["steps"], "steps, conditions and step options"
        assert stored["options"] == {
            "maxAttempts": flow.options.max_attempts or 3,
            "baseDelay": flow.options.base_delay or 5,
            "timeout": flow.options.timeout or 60,
        }


async def test_read_flow_shape_works_on_a_dict_row_connection(core_url: str) -> None:
    from psycopg.rows import dict_row

    async with await psycopg.AsyncConnection.connect(
        core_url, autocommit=True, row_factory=dict_row
    ) as conn:
        await _compile(conn, map_flow())
        stored = await read_flow_shape(conn, "fan_out")
    assert stored is not None
    assert [s["slug"] for s in stored["steps"]] == ["each_input", "items", "each_item"]


async def test_read_flow_shape_reads_condition_columns_when_present(
    core: psycopg.AsyncConnection[Any],
) -> None:
    await _compile(core, map_flow())
    for ddl in (
        "alter table pgflow.steps add column if not exists when_unmet text not null default 'skip'",
        "alter table pgflow.steps add column if not exists when_exhausted text not null"
        " default 'fail'",
        "alter table pgflow.steps add column if not exists required_input_pattern jsonb",
        "alter table pgflow.steps add column if not exists forbidden_input_pattern jsonb",
    ):
        await core.execute(ddl.encode())
    await core.execute(
        "update pgflow.steps set when_exhausted = 'skip',"
        """ forbidden_input_pattern = '{"kind": "spam"}' where step_slug = 'items'"""
    )
    stored = await read_flow_shape(core, "fan_out")
    assert stored is not None
    items = stored["steps"][1]
    assert items["whenUnmet"] == "skip"
    assert items["whenExhausted"] == "skip"
    assert items["requiredInputPattern"] == {"defined": False}
    assert items["forbiddenInputPattern"] == {"defined": True, "value": {"kind": "spam"}}
    assert compare_flow_shapes(flow_shape(map_flow()), stored) == [
        "Step at index 1: whenExhausted differs 'fail' vs 'skip'",
        "Step at index 1: forbiddenInputPattern differs "
        '\'{"defined": false}\' vs \'{"defined": true, "value": {"kind": "spam"}}\'',
    ]


# -- ensure_flow --------------------------------------------------------------------------------


async def _flow_row(conn: psycopg.AsyncConnection[Any], slug: str) -> Any:
    cur = await conn.execute(
        "select opt_max_attempts, opt_base_delay, opt_timeout from pgflow.flows"
        " where flow_slug = %s",
        (slug,),
    )
    return await cur.fetchone()


async def _step_options(conn: psycopg.AsyncConnection[Any], slug: str) -> list[Any]:
    cur = await conn.execute(
        "select step_slug, opt_max_attempts, opt_base_delay, opt_timeout, opt_start_delay"
        " from pgflow.steps where flow_slug = %s order by step_index",
        (slug,),
    )
    return await cur.fetchall()


async def test_ensure_creates_then_verifies(core: psycopg.AsyncConnection[Any]) -> None:
    flow = website_flow()
    assert await ensure_flow(core, flow) == EnsureResult("analyze_website", "compiled")
    stored = await read_flow_shape(core, flow.slug)
    assert stored is not None
    assert compare_flow_shapes(flow_shape(flow), stored) == []
    assert await _flow_row(core, flow.slug) == (3, 5, 60)
    assert await ensure_flow(core, flow) == EnsureResult("analyze_website", "verified")


async def test_ensure_keeps_the_stored_options(core: psycopg.AsyncConnection[Any]) -> None:
    """Options are used when the flow is compiled and never after: tuned in SQL, or changed in
    code, the stored ones stay, and the result says which differ from the definition."""
    await ensure_flow(core, website_flow())
    await core.execute("select pgflow.start_flow('analyze_website', '{}'::jsonb)")
    await core.execute(
        "update pgflow.flows set opt_max_attempts = 8 where flow_slug = 'analyze_website'"
    )
    await core.execute(
        "update pgflow.steps set opt_timeout = 90"
        " where flow_slug = 'analyze_website' and step_slug = 'sentiment'"
    )
    tuned_in_sql = [
        "flow max_attempts: 8 in the database, 3 in the definition",
        "step 'sentiment' timeout: 90 in the database, 30 in the definition",
    ]
    result = await ensure_flow(core, website_flow())
    assert result == EnsureResult("analyze_website", "verified", kept_options=tuple(tuned_in_sql))

    changed_in_code = Flow("analyze_website", timeout=20)
    changed_in_code.step(_identity, slug="website", start_delay=4)
    changed_in_code.step(_identity, slug="sentiment", depends_on=["website"], max_attempts=5)
    changed_in_code.step(_identity, slug="summary", depends_on=["website"])
    changed_in_code.step(_identity, slug="save_to_db", depends_on=["summary", "sentiment"])
    result = await ensure_flow(core, changed_in_code)
    assert result.status == "verified"
    assert result.kept_options == (
        "flow max_attempts: 8 in the database, 3 in the definition",
        "flow timeout: 60 in the database, 20 in the definition",
        "step 'website' start_delay: unset in the database, 4 in the definition",
        "step 'sentiment' timeout: 90 in the database, unset in the definition",
    )
    assert await _flow_row(core, "analyze_website") == (8, 5, 60)
    assert await _step_options(core, "analyze_website") == [
        ("website", None, None, None, None),
        ("sentiment", 5, None, 90, None),
        ("summary", None, None, None, None),
        ("save_to_db", None, None, None, None),
    ]
    cur = await core.execute("select count(*) from pgflow.runs")
    assert await cur.fetchone() == (1,)


async def test_ensure_refuses_a_different_shape(core: psycopg.AsyncConnection[Any]) -> None:
    await ensure_flow(core, website_flow())
    changed = Flow("analyze_website", max_attempts=9)
    changed.step(_identity, slug="website")
    changed.map(_identity, slug="sentiment", array="website")

    with pytest.raises(FlowShapeMismatch) as info:
        await ensure_flow(core, changed)
    assert info.value.flow_slug == "analyze_website"
    # SQL with pgflow 0.17's queue identity also lists the step routes that changed with it.
    shape_differences = [
        d for d in info.value.differences if not d.startswith("Step routes differ:")
    ]
    assert shape_differences == [
        "Step count differs: 2 vs 4",
        "Step at index 1: type differs 'map' vs 'single'",
        "Step at index 2: missing in first shape (second has 'summary')",
        "Step at index 3: missing in first shape (second has 'save_to_db')",
    ]
    assert info.value.mismatch_kind == "shape"
    assert "recompile" in str(info.value)
    assert "Nothing was changed" in str(info.value)
    assert await _flow_row(core, "analyze_website") == (3, 5, 60), "nothing changed"
    stored = await read_flow_shape(core, "analyze_website")
    assert stored is not None
    assert len(stored["steps"]) == 4


async def test_ensure_recompiles_and_drops_runs_and_queue(
    core: psycopg.AsyncConnection[Any],
) -> None:
    await ensure_flow(core, map_flow("recompiled_flow"))
    await core.execute("select pgflow.start_flow('recompiled_flow', '[1, 2, 3]'::jsonb)")
    counts = await core.execute(
        "select (select count(*) from pgflow.runs), (select count(*) from pgflow.step_tasks),"
        " (select count(*) from pgmq.q_recompiled_flow)"
    )
    assert await counts.fetchone() == (1, 3, 3)

    replacement = Flow("recompiled_flow", timeout=15)
    replacement.step(_identity, slug="only")
    result = await ensure_flow(core, replacement, recompile=True)

    assert result.status == "recompiled"
    assert result.differences[0] == "Step count differs: 1 vs 3"
    stored = await read_flow_shape(core, "recompiled_flow")
    assert stored is not None
    assert compare_flow_shapes(flow_shape(replacement), stored) == []
    assert await _flow_row(core, "recompiled_flow") == (3, 5, 15)
    counts = await core.execute(
        "select (select count(*) from pgflow.runs), (select count(*) from pgflow.step_states),"
        " (select count(*) from pgflow.step_tasks), (select count(*) from pgflow.deps"
        "  where flow_slug = 'recompiled_flow'), (select count(*) from pgmq.q_recompiled_flow),"
        " (select count(*) from pgmq.a_recompiled_flow)"
    )
    assert await counts.fetchone() == (0, 0, 0, 0, 0, 0)

    cur = await core.execute("select pgflow.start_flow('recompiled_flow', '{}'::jsonb)")
    assert await cur.fetchone() is not None
    cur = await core.execute("select count(*) from pgmq.q_recompiled_flow")
    assert await cur.fetchone() == (1,), "the new queue receives the new run's task"


async def test_ensure_recompile_leaves_other_flows_alone(
    core: psycopg.AsyncConnection[Any],
) -> None:
    await ensure_flow(core, map_flow("keep_me"))
    await ensure_flow(core, map_flow("replace_me"))
    await core.execute("select pgflow.start_flow('keep_me', '[1]'::jsonb)")
    replacement = Flow("replace_me")
    replacement.step(_identity, slug="single")
    assert (await ensure_flow(core, replacement, recompile=True)).status == "recompiled"
    cur = await core.execute(
        "select (select count(*) from pgflow.runs where flow_slug = 'keep_me'),"
        " (select count(*) from pgflow.steps where flow_slug = 'keep_me'),"
        " (select count(*) from pgmq.q_keep_me)"
    )
    assert await cur.fetchone() == (1, 3, 1)


async def test_ensure_with_recompile_on_a_matching_flow_only_verifies(
    core: psycopg.AsyncConnection[Any],
) -> None:
    await ensure_flow(core, map_flow())
    await core.execute("select pgflow.start_flow('fan_out', '[1]'::jsonb)")
    assert (await ensure_flow(core, map_flow(), recompile=True)).status == "verified"
    cur = await core.execute("select count(*) from pgflow.runs")
    assert await cur.fetchone() == (1,)


async def test_ensure_inside_a_caller_transaction(core_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(core_url) as conn:
        await conn.execute("select 1")  # the caller's transaction is open
        result = await ensure_flow(conn, map_flow())
        assert result.status == "compiled"
        await conn.rollback()
        assert await read_flow_shape(conn, "fan_out") is None, "the caller's rollback wins"


async def test_workers_starting_together_do_not_race(core_url: str) -> None:
    """Both wait on pgflow's lock on the flow; the first compiles it, the second verifies."""
    flow = website_flow()
    connect = psycopg.AsyncConnection.connect
    async with (
        await connect(core_url, autocommit=True) as holder,
        await connect(core_url, autocommit=True) as first,
        await connect(core_url, autocommit=True) as second,
    ):
        async with holder.transaction():
            await holder.execute(
                "select pg_advisory_xact_lock(1, hashtext(lower(%s::text)))", (flow.slug,)
            )
            tasks = [asyncio.create_task(ensure_flow(c, flow)) for c in (first, second)]
            await _wait_for_lock_waiters(holder, 2)
            assert not any(t.done() for t in tasks)
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    assert sorted(r.status for r in results) == ["compiled", "verified"]


async def _wait_for_lock_waiters(conn: psycopg.AsyncConnection[Any], count: int) -> None:
    """Wait, up to 10 s, until ``count`` sessions queue on an advisory lock."""
    async with asyncio.timeout(10):
        while True:
            cur = await conn.execute(
                "select count(*) from pg_locks where locktype = 'advisory' and not granted"
            )
            row = await cur.fetchone()
            if row is not None and row[0] >= count:
                return
            await asyncio.sleep(0.01)


# -- conditions -----------------------------------------------------------------------------------


def conditional_flow(**changes: Any) -> Flow:
    """gate (if_, fail when unmet) -> items (skip when exhausted) -> each (map, if_not)."""
    options: dict[str, dict[str, Any]] = {
        "gate": {"if_": {"plan": "pro", "n": 1}, "when_unmet": "fail"},
        "items": {"when_exhausted": "skip", "timeout": 10},
        "each": {"if_not": {"items": []}, "when_unmet": "skip-cascade"},
    }
    for slug, update in changes.items():
        options[slug] = {**options[slug], **update}
    flow = Flow("conditional")
    flow.step(_identity, slug="gate", **options["gate"])
    flow.array(_identity, slug="items", depends_on=["gate"], **options["items"])
    flow.map(_identity, slug="each", array="items", **options["each"])
    return flow


def test_flow_shape_carries_conditions() -> None:
    steps = flow_shape(conditional_flow())["steps"]
    assert steps[0] == {
        "slug": "gate",
        "stepType": "single",
        "dependencies": [],
        "whenUnmet": "fail",
        "whenExhausted": "fail",
        "requiredInputPattern": {"defined": True, "value": {"plan": "pro", "n": 1}},
        "forbiddenInputPattern": {"defined": False},
    }
    assert steps[1] == {
        "slug": "items",
        "stepType": "single",
        "dependencies": ["gate"],
        "whenUnmet": "skip",
        "whenExhausted": "skip",
        "requiredInputPattern": {"defined": False},
        "forbiddenInputPattern": {"defined": False},
        "options": {"timeout": 10},
    }
    assert steps[2]["whenUnmet"] == "skip-cascade"
    assert steps[2]["forbiddenInputPattern"] == {"defined": True, "value": {"items": []}}
    assert json.loads(json.dumps(steps)) == steps


def test_patterns_compare_like_jsonb() -> None:
    """Numbers compare by value (jsonb stores 1.0 and 1 as equal), but true is not 1."""
    local = flow_shape(conditional_flow(gate={"if_": {"plan": "pro", "n": 1.0}}))
    assert compare_flow_shapes(local, flow_shape(conditional_flow())) == []
    as_bool = flow_shape(conditional_flow(gate={"if_": {"plan": "pro", "n": True}}))
    assert compare_flow_shapes(as_bool, flow_shape(conditional_flow())) == [
        "Step at index 0: requiredInputPattern differs "
        '\'{"defined": true, "value": {"plan": "pro", "n": true}}\' vs '
        '\'{"defined": true, "value": {"plan": "pro", "n": 1}}\''
    ]
    reordered = flow_shape(conditional_flow(gate={"if_": {"n": 1, "plan": "pro"}}))
    assert compare_flow_shapes(reordered, flow_shape(conditional_flow())) == []
    listed = flow_shape(conditional_flow(each={"if_not": {"items": [1, 2]}}))
    swapped = flow_shape(conditional_flow(each={"if_not": {"items": [2, 1]}}))
    assert compare_flow_shapes(listed, swapped) == [
        "Step at index 2: forbiddenInputPattern differs "
        '\'{"defined": true, "value": {"items": [1, 2]}}\' vs '
        '\'{"defined": true, "value": {"items": [2, 1]}}\''
    ]


async def test_conditions_round_trip_through_the_database(
    aconn: psycopg.AsyncConnection[Any],
) -> None:
    flow = conditional_flow()
    assert (await ensure_flow(aconn, flow)).status == "compiled"
    stored = await read_flow_shape(aconn, "conditional")
    assert stored is not None
    assert stored["steps"] == flow_shape(flow)["steps"]
    assert (await ensure_flow(aconn, flow)).status == "verified"
    tuned = conditional_flow(items={"timeout": 20})
    assert (await ensure_flow(aconn, tuned)).kept_options == (
        "step 'items' timeout: 10 in the database, 20 in the definition",
    )


@pytest.mark.parametrize(
    ("changes", "difference"),
    [
        (
            {"gate": {"when_unmet": "skip"}},
            "Step at index 0: whenUnmet differs 'skip' vs 'fail'",
        ),
        (
            {"items": {"when_exhausted": None}},
            "Step at index 1: whenExhausted differs 'fail' vs 'skip'",
        ),
        (
            {"gate": {"if_": {"plan": "free", "n": 1}}},
            # compared in SQL, as jsonb, whose key order is its own
            "Step at index 0: requiredInputPattern differs "
            '\'{"value": {"n": 1, "plan": "free"}, "defined": true}\' vs '
            '\'{"value": {"n": 1, "plan": "pro"}, "defined": true}\'',
        ),
        (
            {"each": {"if_not": None}},
            "Step at index 2: forbiddenInputPattern differs "
            '\'{"defined": false}\' vs \'{"value": {"items": []}, "defined": true}\'',
        ),
    ],
    ids=["when_unmet", "when_exhausted", "if", "if_not"],
)
async def test_changed_conditions_are_a_shape_mismatch(
    aconn: psycopg.AsyncConnection[Any], changes: dict[str, Any], difference: str
) -> None:
    await ensure_flow(aconn, conditional_flow())
    changed = conditional_flow(**changes)
    with pytest.raises(FlowShapeMismatch) as info:
        await ensure_flow(aconn, changed)
    assert info.value.differences == [difference]

    result = await ensure_flow(aconn, changed, recompile=True)
    assert (result.status, result.differences) == ("recompiled", (difference,))
    stored = await read_flow_shape(aconn, "conditional")
    assert stored is not None
    assert compare_flow_shapes(flow_shape(changed), stored) == []

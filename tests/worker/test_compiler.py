"""compile_flow writes the SQL pgflow's compileFlow writes, and that SQL builds the flow."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgflow_worker._compiler import (
    _text,
    compile_flow,
    migration_filename,
    render_migration,
    stringify,
)
from pgflow_worker._flow import Flow
from tests._stack import TemplateUnavailable, _npm_package

DSL_VERSION = "0.8.1"
HERE = Path(__file__).parent / "compiler_js"
SPEC_PATH = HERE / "flows.json"
SPECS: list[dict[str, Any]] = json.loads(SPEC_PATH.read_text())
OPTION_NAMES = {
    "maxAttempts": "max_attempts",
    "baseDelay": "base_delay",
    "timeout": "timeout",
    "startDelay": "start_delay",
}


def _identity(input: Any) -> Any:
    return input


def _options(spec: dict[str, Any]) -> dict[str, int]:
    return {OPTION_NAMES[key]: value for key, value in spec.get("options", {}).items()}


def build(spec: dict[str, Any]) -> Flow:
    """The Python twin of what compile_flows.mjs builds from the same spec."""
    flow = Flow(spec["slug"], **_options(spec))
    for step in spec["steps"]:
        if step["kind"] == "map":
            flow.map(_identity, slug=step["slug"], array=step.get("array"), **_options(step))
        else:
            declare = flow.array if step["kind"] == "array" else flow.step
            declare(
                _identity, slug=step["slug"], depends_on=step.get("dependsOn", ()), **_options(step)
            )
    return flow


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


@pytest.fixture(scope="module")
def pgflow_compiled() -> dict[str, list[str]]:
    """compileFlow's output for every spec, from the real @pgflow/dsl package run by node."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed, so @pgflow/dsl's compileFlow cannot be run")
    try:
        package = _npm_package("@pgflow/dsl", DSL_VERSION)
    except TemplateUnavailable as exc:
        pytest.skip(str(exc))
    result = subprocess.run(
        [node, str(HERE / "compile_flows.mjs"), str(package), str(SPEC_PATH)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    compiled: dict[str, list[str]] = json.loads(result.stdout)
    return compiled


# -- parity with pgflow -----------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=[s["slug"] for s in SPECS])
def test_matches_pgflow_compile_flow(
    spec: dict[str, Any], pgflow_compiled: dict[str, list[str]]
) -> None:
    assert compile_flow(build(spec)) == pgflow_compiled[spec["slug"]]


def test_parity_specs_cover_every_feature() -> None:
    flow_options = {key for s in SPECS for key in s["options"]}
    steps = [step for s in SPECS for step in s["steps"]]
    step_options = {key for step in steps for key in step.get("options", {})}
    assert flow_options == {"maxAttempts", "baseDelay", "timeout"}
    assert step_options == set(OPTION_NAMES)
    assert {step["kind"] for step in steps} == {"step", "array", "map"}
    assert any(step["kind"] == "map" and "array" not in step for step in steps), "root map"
    assert any(step["kind"] == "map" and "array" in step for step in steps), "dependent map"
    assert any(len(step.get("dependsOn", [])) > 2 for step in steps), "several dependencies"
    assert any(step.get("options", {}).get("startDelay") == 0 for step in steps)
    assert any(not s["steps"] for s in SPECS), "a flow without steps"


# -- the statements, spelled out ----------------------------------------------------------------


def test_compiles_flow_options_deps_and_map_steps() -> None:
    flow = Flow("orders", max_attempts=4, timeout=20)

    @flow.array
    def fetch(input: Any) -> Any: ...

    @flow.map(array=fetch, base_delay=2)
    def each(item: Any) -> Any: ...

    @flow.step(depends_on=[each, "fetch"], start_delay=0)
    def total(deps: Any) -> Any: ...

    @flow.map("roots", max_attempts=1, timeout=5, start_delay=9)
    def per_order(item: Any) -> Any: ...

    assert compile_flow(flow) == [
        "SELECT pgflow.create_flow('orders', max_attempts => 4, timeout => 20);",
        "SELECT pgflow.add_step('orders', 'fetch');",
        "SELECT pgflow.add_step('orders', 'each', ARRAY['fetch'], base_delay => 2, "
        "step_type => 'map');",
        "SELECT pgflow.add_step('orders', 'total', ARRAY['each', 'fetch'], start_delay => 0);",
        "SELECT pgflow.add_step('orders', 'roots', max_attempts => 1, timeout => 5, "
        "start_delay => 9, step_type => 'map');",
    ]


def test_decorator_forms_compile_like_the_explicit_form() -> None:
    flow = Flow("arrays_and_maps", timeout=10)

    @flow.array
    def list_items(input: Any) -> Any: ...

    @flow.map(array=list_items)
    def each_item(item: Any) -> Any: ...

    @flow.map("each_again", array="each_item", max_attempts=4)
    def again(item: Any) -> Any: ...

    @flow.array(depends_on=list_items, timeout=5)
    def derived(deps: Any) -> Any: ...

    @flow.step(slug="summary", depends_on=[again, derived])
    def summarize(deps: Any) -> Any: ...

    spec = next(s for s in SPECS if s["slug"] == "arrays_and_maps")
    assert compile_flow(flow) == compile_flow(build(spec))


def test_string_literals_double_single_quotes() -> None:
    assert _text("it's") == "'it''s'"
    assert _text("''") == "''''''"
    assert _text("back\\slash") == "'back\\slash'"


# -- migrations ---------------------------------------------------------------------------------


def test_migration_filename_uses_utc_timestamp_and_slug() -> None:
    flow = Flow("greet_user")
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert migration_filename(flow, at) == "20250102030405_create_greet_user_flow.sql"
    in_paris = datetime(2025, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    assert migration_filename(flow, in_paris) == "20250102030405_create_greet_user_flow.sql"
    naive = datetime(2025, 12, 31, 23, 59, 59)
    assert migration_filename(flow, naive) == "20251231235959_create_greet_user_flow.sql"


def test_migration_filename_defaults_to_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    name = migration_filename(Flow("f"))
    after = datetime.now(UTC)
    stamp = datetime.strptime(name.split("_", 1)[0], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert before <= stamp <= after
    assert name.endswith("_create_f_flow.sql")


def test_render_migration_is_one_statement_per_line() -> None:
    flow = build(next(s for s in SPECS if s["slug"] == "diamond"))
    text = render_migration(flow)
    assert text.endswith(";\n")
    assert text.splitlines() == compile_flow(flow)


# -- the SQL runs -------------------------------------------------------------------------------


def test_compiled_sql_builds_the_flow_in_postgres(core_url: str) -> None:
    with psycopg.connect(core_url, autocommit=True) as conn:
        for spec in SPECS:
            flow = build(spec)
            with conn.transaction():
                for statement in compile_flow(flow):
                    conn.execute(statement.encode())
            _assert_stored(conn, flow)


def test_compiled_sql_is_idempotent(core_url: str) -> None:
    flow = build(next(s for s in SPECS if s["slug"] == "step_options"))
    with psycopg.connect(core_url, autocommit=True) as conn:
        for _ in range(2):
            for statement in compile_flow(flow):
                conn.execute(statement.encode())
        _assert_stored(conn, flow)


def _assert_stored(conn: psycopg.Connection[Any], flow: Flow) -> None:
    options = flow.options
    assert conn.execute(
        "select opt_max_attempts, opt_base_delay, opt_timeout from pgflow.flows"
        " where flow_slug = %s",
        (flow.slug,),
    ).fetchone() == (
        options.max_attempts if options.max_attempts is not None else 3,
        options.base_delay if options.base_delay is not None else 5,
        options.timeout if options.timeout is not None else 60,
    )
    steps = conn.execute(
        "select step_slug, step_type, step_index, deps_count, opt_max_attempts, opt_base_delay,"
        " opt_timeout, opt_start_delay from pgflow.steps where flow_slug = %s"
        " order by step_index",
        (flow.slug,),
    ).fetchall()
    assert steps == [
        (
            step.slug,
            step.step_type,
            index,
            len(step.dependencies),
            step.options.max_attempts,
            step.options.base_delay,
            step.options.timeout,
            step.options.start_delay,
        )
        for index, step in enumerate(flow.steps)
    ]
    deps = conn.execute(
        "select dep_slug, step_slug from pgflow.deps where flow_slug = %s", (flow.slug,)
    ).fetchall()
    assert sorted(deps) == sorted(
        (dep, step.slug) for step in flow.steps for dep in step.dependencies
    )
    # Named as the flow by pgflow up to 0.16, lower(flow_slug) since 0.17.
    queue = conn.execute(
        "select 1 from pgmq.meta where lower(queue_name) = lower(%s)", (flow.slug,)
    ).fetchone()
    assert queue == (1,), f"create_flow should create the pgmq queue of {flow.slug!r}"


# -- conditions (pgflow 0.14; the npm @pgflow/dsl 0.8.1 predates them) --------------------------
#
# The expected strings follow pgflow's compileFlow source: the four condition arguments come
# after start_delay and before step_type, only when set, patterns as JSON.stringify writes
# them, every literal with its single quotes doubled.


def test_compiles_conditions_in_pgflow_order() -> None:
    flow = Flow("conditional", max_attempts=2)

    @flow.step(if_={"plan": "pro", "n": 1.0}, when_unmet="fail")
    def gate(input: Any) -> Any: ...

    @flow.array(depends_on=[gate], if_not={"gate": {"note": "it's"}}, when_exhausted="skip")
    def items(deps: Any) -> Any: ...

    @flow.map(
        array=items,
        max_attempts=3,
        base_delay=1,
        timeout=9,
        start_delay=2,
        if_={"items": [1]},
        if_not={"items": []},
        when_unmet="skip-cascade",
        when_exhausted="skip-cascade",
    )
    def each(item: Any) -> Any: ...

    @flow.step(depends_on=[each], when_unmet="skip", when_exhausted="fail")
    def defaults_spelled_out(deps: Any) -> Any: ...

    assert compile_flow(flow) == [
        "SELECT pgflow.create_flow('conditional', max_attempts => 2);",
        "SELECT pgflow.add_step('conditional', 'gate', "
        """required_input_pattern => '{"plan":"pro","n":1}', when_unmet => 'fail');""",
        "SELECT pgflow.add_step('conditional', 'items', ARRAY['gate'], "
        """forbidden_input_pattern => '{"gate":{"note":"it''s"}}', when_exhausted => 'skip');""",
        "SELECT pgflow.add_step('conditional', 'each', ARRAY['items'], max_attempts => 3, "
        "base_delay => 1, timeout => 9, start_delay => 2, "
        """required_input_pattern => '{"items":[1]}', forbidden_input_pattern => '{"items":[]}', """
        "when_unmet => 'skip-cascade', when_exhausted => 'skip-cascade', step_type => 'map');",
        "SELECT pgflow.add_step('conditional', 'defaults_spelled_out', ARRAY['each'], "
        "when_unmet => 'skip', when_exhausted => 'fail');",
    ]


def test_pattern_json_is_written_like_json_stringify() -> None:
    assert stringify({"b": 1, "a": {"x": [True, None, 2.5]}}) == '{"b":1,"a":{"x":[true,null,2.5]}}'
    assert stringify({"z": 0, "10": 1, "2": 2}) == '{"2":2,"10":1,"z":0}', "index keys first"
    assert stringify({"s": 'é\n"\\\u0001'}) == '{"s":"é\\n\\"\\\\\\u0001"}'
    assert stringify(1e21) == "1e+21"
    assert stringify(1e-7) == "1e-7"
    assert stringify(100.0) == "100"
    assert stringify(-0.0) == "0"
    assert stringify(2**70) == str(2**70), "integers are written in full"


STRINGIFY_CASES: list[Any] = [
    {"b": 1, "2": 2, "1": 3, "01": 4, "-1": 5, "4294967294": 6, "4294967295": 7, "a": {"10": 1}},
    [1.0, 0.1, 1e21, 1e20, 1.2345678901234568e20, 1e-6, 1e-7, 1.5e-7, -0.0, -2.5, 1e16, 5e-324],
    [1.7976931348623157e308, 12345.678, 0.000123, 123e-20, -1e-300],
    "quotes ' \" backslash \\ controls \b\f\n\r\t\u0001\u001f\u007f unicode é 😀 \u2028\u2029",
    [True, False, None, 0, -5, [], {}],
]


def test_pattern_json_matches_node() -> None:
    """stringify agrees with the real JSON.stringify (node) on numbers, keys and escapes."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed, so JSON.stringify cannot be run")
    result = subprocess.run(
        [
            node,
            "-e",
            "const vs = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
            "process.stdout.write(JSON.stringify(vs.map((v) => JSON.stringify(v))));",
        ],
        input=json.dumps(STRINGIFY_CASES),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert [stringify(v) for v in STRINGIFY_CASES] == json.loads(result.stdout)


def test_compiled_conditions_build_the_flow_in_postgres(db_url: str) -> None:
    flow = Flow("conditional_sql")
    flow.step(_identity, slug="gate", if_={"plan": "pro", "note": "it's"}, when_unmet="fail")
    flow.array(_identity, slug="items", depends_on=["gate"], when_exhausted="skip-cascade")
    flow.map(_identity, slug="each", array="items", if_not={"items": []}, when_unmet="skip")
    with psycopg.connect(db_url, autocommit=True) as conn:
        for statement in compile_flow(flow):
            conn.execute(statement.encode())
        rows = conn.execute(
            "select step_slug, required_input_pattern, forbidden_input_pattern, when_unmet,"
            " when_exhausted from pgflow.steps where flow_slug = 'conditional_sql'"
            " order by step_index"
        ).fetchall()
        _assert_stored(conn, flow)
    assert rows == [
        ("gate", {"plan": "pro", "note": "it's"}, None, "fail", "fail"),
        ("items", None, None, "skip", "skip-cascade"),
        ("each", None, {"items": []}, "skip", "fail"),
    ]

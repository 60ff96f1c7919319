"""The schema files and the migrations build the same pgflow schema, and drift is noticed.

One database is built from ``sql/schema``; another by applying every migration in order, with
runs in flight created after each one. Their catalogs must match object for object.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgflow_worker._database import list_migrations, list_schema_files, migrate, sql_root, sqlfiles
from pgflow_worker._database.derive import (
    BASELINE_NAME,
    main,
    render_baseline,
    write_baseline,
    write_next,
)
from pgflow_worker.errors import MigrationError
from tests._stack import Stack
from tests.sql.catalog import Catalog, build_from_schema, catalog_diff, read_catalog
from tests.sql.helpers import Conn, complete, define_flow, read_and_start, start_flow

#: Migrations that were released: they never change again (a change goes in a new migration).
RELEASED = {
    BASELINE_NAME: "334e49b394396c1267ce085cb40ea6ae0884cacffe69b0c203ffb3e24f5f2642",
}


def runs_in_flight(conn: Conn, tag: str) -> None:
    """A flow with a map, and runs of it at several stages: queued, half done, failed over."""
    flow = f"drift_{tag}"
    define_flow(conn, flow, [("a", []), ("m", ["a"], "map"), ("b", ["m"])], base_delay=0)
    start_flow(conn, flow, {"n": 0})
    half = start_flow(conn, flow, {"n": 1})
    for task in read_and_start(conn, flow):
        if task.run_id == half:
            complete(conn, task, [1, 2])
    tasks = read_and_start(conn, flow)
    assert tasks, "the map of the half-done run has tasks to claim"
    complete(conn, tasks[0], 10)


def migrate_step_by_step(url: str) -> None:
    """Apply the migrations one at a time, with runs in flight made between them."""
    for migration in list_migrations():
        migrate(url, target=migration.version)
        with psycopg.connect(url, autocommit=True) as conn:
            runs_in_flight(conn, migration.version)


@pytest.fixture(scope="module")
def built(stack: Stack) -> Iterator[tuple[Catalog, str]]:
    """The catalog of a database built from the schema files, and a migrated database's name."""
    from_schema = stack.empty("pgflow_schema")
    migrated = stack.empty("pgflow_migrated")
    try:
        build_from_schema(stack.url(from_schema))
        with psycopg.connect(stack.url(from_schema), autocommit=True) as conn:
            expected = read_catalog(conn)
        migrate_step_by_step(stack.url(migrated))
        yield expected, migrated
    finally:
        stack.drop(from_schema)
        stack.drop(migrated)


def test_the_migrations_build_exactly_the_schema(built: tuple[Catalog, str], stack: Stack) -> None:
    expected, migrated = built
    with psycopg.connect(stack.url(migrated), autocommit=True) as conn:
        actual = read_catalog(conn)
    assert len(expected["functions"]) > 20
    assert "step_states.skipped_at (column 15)" in expected["columns"]
    assert catalog_diff(expected, actual) == ""


@pytest.fixture
def role(stack: Stack) -> Iterator[str]:
    name = f"pgflow_drift_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create role {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(stack.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def _change_function_body(conn: Conn, role: str) -> None:
    row = conn.execute("select pg_get_functiondef('pgflow.is_valid_slug(text)'::regprocedure)")
    definition = (row.fetchone() or ("",))[0]
    assert "between 1 and 128" in definition
    conn.execute(definition.replace("between 1 and 128", "between 1 and 129").encode())


def _change_column_default(conn: Conn, role: str) -> None:
    conn.execute("alter table pgflow.steps alter column when_unmet set default 'fail'")


def _grant(conn: Conn, role: str) -> None:
    conn.execute(
        sql.SQL("grant execute on function pgflow.start_flow(text, jsonb, uuid) to {}").format(
            sql.Identifier(role)
        )
    )


def _comment(conn: Conn, role: str) -> None:
    conn.execute("comment on table pgflow.runs is 'one row per run'")


def _drop_index(conn: Conn, role: str) -> None:
    conn.execute("drop index pgflow.idx_runs_status")


def _replace_constraint(conn: Conn, role: str) -> None:
    conn.execute(
        "alter table pgflow.runs drop constraint runs_remaining_steps_check,"
        " add constraint runs_remaining_steps_check check (remaining_steps > -1)"
    )


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        (_change_function_body, "functions: pgflow.is_valid_slug(text) differs"),
        (_change_column_default, "columns: steps.when_unmet (column 13) differs"),
        (_grant, "functions: pgflow.start_flow(text,jsonb,uuid) differs"),
        (_comment, "relations: runs differs"),
        (_drop_index, "indexes: runs idx_runs_status is missing"),
        (_replace_constraint, "constraints: runs runs_remaining_steps_check differs"),
    ],
    ids=["function body", "column default", "grant", "comment", "index", "constraint"],
)
def test_the_comparison_notices_drift(
    built: tuple[Catalog, str], stack: Stack, role: str, change: object, reported: str
) -> None:
    """One change in a scratch copy of the migrated database makes the comparison fail."""
    expected, migrated = built
    scratch = f"pgflow_drift_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(stack.admin_url, autocommit=True) as admin:
        admin.execute(f'create database "{scratch}" template "{migrated}"'.encode())
    try:
        with psycopg.connect(stack.url(scratch), autocommit=True) as conn:
            assert catalog_diff(expected, read_catalog(conn)) == ""
            assert callable(change)
            change(conn, role)
            diff = catalog_diff(expected, read_catalog(conn))
    finally:
        stack.drop(scratch)
    headers = [
        line
        for line in diff.splitlines()
        if re.match(r"^[a-z ]+: .* (differs|is missing|is extra)$", line)
    ]
    assert headers == [reported], diff


def test_a_schema_change_without_a_migration_fails(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Editing a schema file and forgetting the migration is exactly what the comparison sees."""
    root = tmp_path / "sql"
    shutil.copytree(sql_root(), root)
    changed = root / "schema" / "0200_function_maybe_complete_run.sql"
    text = changed.read_text()
    assert text.count("\nbegin\n") == 1
    changed.write_text(text.replace("\nbegin\n", "\nbegin\n  null;\n"))
    from_schema = stack.empty("pgflow_schema")
    migrated = stack.empty("pgflow_migrated")
    try:
        build_from_schema(stack.url(from_schema), root)
        with monkeypatch.context() as patch:
            patch.setattr(sqlfiles, "sql_root", lambda: root)
            migrate(stack.url(migrated))
        with (
            psycopg.connect(stack.url(from_schema), autocommit=True) as a,
            psycopg.connect(stack.url(migrated), autocommit=True) as b,
        ):
            diff = catalog_diff(read_catalog(a), read_catalog(b))
    finally:
        stack.drop(from_schema)
        stack.drop(migrated)
    assert diff.startswith("functions: pgflow.maybe_complete_run(uuid) differs")
    assert "-  null;" in diff  # in the schema, missing from the migrated database


def test_released_migrations_never_change() -> None:
    """A released migration is never edited: its checksum is pinned here when it ships."""
    shipped = {m.path.name: m.checksum for m in list_migrations()}
    for name, checksum in RELEASED.items():
        assert shipped.get(name) == checksum, (
            f"{name} changed; released migrations are never edited: change sql/schema and "
            "add the next migration instead (docs/sql.md, 'Changing the SQL')"
        )


def test_every_object_has_its_own_file(built: tuple[Catalog, str]) -> None:
    expected, _ = built
    files = [p.name for p in list_schema_files()]
    stems = {re.sub(r"^\d{4}_", "", f).removesuffix(".sql") for f in files}
    functions = {sig.split("(")[0].removeprefix("pgflow.") for sig in expected["functions"]}
    tables = {k.split()[0] for k, v in expected["relations"].items() if v.startswith("r")}
    tables.discard("migrations")  # migrate() makes it, before any migration runs
    types = set(expected["types"])
    assert {f"function_{f}" for f in functions} <= stems
    assert {f"table_{t}" for t in tables} <= stems
    assert {f"type_{t}" for t in types} <= stems
    for path in list_schema_files():
        text = path.read_text(encoding="utf-8")
        defined = re.findall(r"^create or replace function pgflow\.(\w+)\(", text, re.M)
        if "_function_" in path.name:
            # One function per file, its overloads included (start_tasks has two forms).
            assert set(defined) == {path.stem.split("_function_", 1)[1]}, path.name
        else:
            assert defined == [], f"{path.name} defines a function: give it its own file"


# -- deriving migrations ------------------------------------------------------------------------


@pytest.fixture
def sql_copy(tmp_path: Path) -> Path:
    """A copy of the sql folder to derive migrations in, its migrations cut back to the
    baseline, so the numbers derived are the same whatever followed it."""
    root = tmp_path / "sql"
    shutil.copytree(sql_root(), root)
    for path in (root / "migrations").glob("*.sql"):
        if path.name != BASELINE_NAME:
            path.unlink()
    return root


def test_the_baseline_is_every_schema_file_in_order(sql_copy: Path) -> None:
    text = render_baseline(sql_copy)
    positions = [text.index(f"-- ---- schema/{p.name} ----") for p in list_schema_files(sql_copy)]
    assert positions == sorted(positions)
    for path in list_schema_files(sql_copy):
        assert path.read_text(encoding="utf-8") in text


def test_the_baseline_is_derived_once(sql_copy: Path) -> None:
    baseline = sql_copy / "migrations" / BASELINE_NAME
    baseline.unlink()
    assert write_baseline(sql_copy) == baseline
    first = hashlib.sha256(baseline.read_bytes()).hexdigest()
    assert write_baseline(sql_copy) == baseline  # the same text again: nothing to refuse
    flows = sql_copy / "schema" / "0100_table_flows.sql"
    index = "create index idx_flows_created on pgflow.flows (created_at);"
    flows.write_text(f"{flows.read_text()}\n{index}\n")
    with pytest.raises(MigrationError, match=r"never changes.*--replace"):
        write_baseline(sql_copy)
    assert hashlib.sha256(baseline.read_bytes()).hexdigest() == first
    write_baseline(sql_copy, replace=True)
    assert "idx_flows_created" in baseline.read_text()
    (sql_copy / "migrations" / "0002_more.sql").write_text("select 1;\n")
    with pytest.raises(MigrationError, match="besides the baseline"):
        write_baseline(sql_copy, replace=True)


def test_the_next_migration_starts_from_function_files(sql_copy: Path) -> None:
    path = write_next("faster_start", ["0200_function_start_tasks.sql"], sql_copy)
    assert path.name == "0002_faster_start.sql"
    text = path.read_text()
    assert text.startswith("-- pgflow-py SQL core, migration 0002: faster_start.")
    assert (sql_copy / "schema" / "0200_function_start_tasks.sql").read_text() in text
    assert write_next("again", ["sql/schema/0200_function_fail_task.sql"], sql_copy).name == (
        "0003_again.sql"
    )
    with pytest.raises(MigrationError, match="ALTER statements"):
        write_next("table", ["0110_table_steps.sql"], sql_copy)
    with pytest.raises(MigrationError, match="is not a file of"):
        write_next("nope", ["0200_function_missing.sql"], sql_copy)
    with pytest.raises(MigrationError, match="lowercase"):
        write_next("Bad-Name", ["0200_function_fail_task.sql"], sql_copy)


def test_the_command_line_reports_errors_plainly(
    sql_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--sql", str(sql_copy), "next", "x", "0110_table_steps.sql"]
    assert main(args) == 2
    assert "error: 0110_table_steps.sql does not define a function" in capsys.readouterr().err
    assert main(["--sql", str(sql_copy), "next", "x", "0200_function_fail_task.sql"]) == 0
    assert capsys.readouterr().out.strip().endswith("0002_x.sql")

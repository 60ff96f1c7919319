"""The reference pages cover what exists, and nothing that does not.

The SQL reference is checked against the catalog of a migrated database (every function with
its arguments, every table with its columns) and against the events the SQL really sends; the
CLI reference against the command line's commands and options; the API pages against the
packages' ``__all__``.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
import pytest
import typer.main
from psycopg.types.json import Jsonb

import pgflow_client
import pgflow_worker
from pgflow_worker._tools.cli import app
from tests.docs.snippets import DOCS

Conn = psycopg.Connection[Any]

SQL_PAGE = DOCS / "sql.md"
WORKER_ID = uuid.UUID("11111111-1111-1111-1111-111111111111")


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line) up to the next heading of its level."""
    lines = text.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level
        ),
        len(lines),
    )
    return "\n".join(lines[start + 1 : end])


def table_cells(text: str) -> list[list[str]]:
    """The rows of the Markdown tables in ``text``, as lists of cell texts."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


# -- SQL: functions and tables ------------------------------------------------------------------


def catalog_functions(conn: Conn) -> dict[str, list[list[str]]]:
    """Each function's argument lists, one per signature (overloads sorted)."""
    rows = conn.execute(
        "select p.proname, coalesce(p.proargnames, '{}'), p.proargmodes::text[]"
        " from pg_proc p where p.pronamespace = 'pgflow'::regnamespace order by 1"
    ).fetchall()
    functions: dict[str, list[list[str]]] = {}
    for name, arg_names, modes in rows:
        inputs = [n for i, n in enumerate(arg_names) if modes is None or modes[i] in ("i", "b")]
        functions.setdefault(name, []).append(inputs)
    return {name: sorted(signatures) for name, signatures in functions.items()}


def documented_functions() -> dict[str, list[list[str]]]:
    """Each documented function's signatures: the lines right under its heading."""
    text = SQL_PAGE.read_text(encoding="utf-8")
    functions: dict[str, list[list[str]]] = {}
    for match in re.finditer(r"^#### `pgflow\.(\w+)`\n\n((?:`pgflow\.[^\n]*\n)+)", text, re.M):
        heading, lines = match.groups()
        for line in lines.splitlines():
            signature = re.match(r"^`pgflow\.(\w+)\(([^`]*?)\) → ", line)
            assert signature is not None, line
            name, arguments = signature.groups()
            assert heading == name, f"the signature under pgflow.{heading} is for pgflow.{name}"
            functions.setdefault(name, []).append(
                [a.split()[0] for a in arguments.split(", ") if a]
            )
    return {name: sorted(signatures) for name, signatures in functions.items()}


def test_every_sql_function_is_documented_with_its_arguments(conn: Conn) -> None:
    assert documented_functions() == catalog_functions(conn)


def catalog_columns(conn: Conn) -> dict[str, list[str]]:
    rows = conn.execute(
        "select c.relname, a.attname from pg_class c"
        " join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped"
        " where c.relnamespace = 'pgflow'::regnamespace and c.relkind in ('r', 'p', 'c')"
        " order by c.relname, a.attnum"
    ).fetchall()
    columns: dict[str, list[str]] = {}
    for relation, column in rows:
        columns.setdefault(relation, []).append(column)
    return columns


def test_every_table_and_column_is_documented(conn: Conn) -> None:
    text = SQL_PAGE.read_text(encoding="utf-8")
    for relation, columns in catalog_columns(conn).items():
        heading = f"### `pgflow.{relation}`"
        assert heading in text.splitlines(), f"no section for pgflow.{relation}"
        documented = [row[0].strip("`") for row in table_cells(section(text, heading))[1:]]
        assert sorted(documented) == sorted(columns), relation


# -- SQL: events --------------------------------------------------------------------------------


def define(conn: Conn, flow: str, steps: list[tuple[str, list[str], dict[str, Any]]]) -> None:
    conn.execute("select pgflow.create_flow(%s)", (flow,))
    for slug, deps, options in steps:
        named = "".join(f", {key} => %({key})s" for key in options)
        params = {"flow": flow, "slug": slug, "deps": deps, **options}
        conn.execute(f"select pgflow.add_step(%(flow)s, %(slug)s, %(deps)s{named})", params)


def start(conn: Conn, flow: str, payload: Any) -> uuid.UUID:
    row = conn.execute("select run_id from pgflow.start_flow(%s, %s)", (flow, Jsonb(payload)))
    found = row.fetchone()
    assert found is not None
    return found[0]  # type: ignore[no-any-return]


def claim(conn: Conn, flow: str) -> list[tuple[uuid.UUID, str, int]]:
    conn.execute("update pgmq.{} set vt = now()".format("q_" + flow))
    rows = conn.execute(
        "select run_id, step_slug, task_index from pgflow.start_tasks("
        "%s, array(select msg_id from pgmq.read(%s, 30, 100)), %s)",
        (flow, flow, WORKER_ID),
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def complete(conn: Conn, flow: str, output: Any) -> None:
    for run_id, step, index in claim(conn, flow):
        conn.execute(
            "select pgflow.complete_task(%s, %s, %s, %s)", (run_id, step, index, Jsonb(output))
        )


def fail(conn: Conn, flow: str) -> None:
    for run_id, step, index in claim(conn, flow):
        conn.execute("select pgflow.fail_task(%s, %s, %s, 'Boom: it broke')", (run_id, step, index))


def observed_events(conn: Conn) -> dict[str, list[set[str]]]:
    """Drive one flow per kind of event; the payload keys seen, by row of the events table."""
    conn.execute(
        "insert into pgflow.workers (worker_id, queue_name, function_name)"
        " values (%s, 'docs', 'docs')",
        (WORKER_ID,),
    )
    define(conn, "ev_ok", [("a", [], {}), ("b", ["a"], {})])
    start(conn, "ev_ok", {})
    complete(conn, "ev_ok", [1, 2])
    complete(conn, "ev_ok", "done")

    define(
        conn, "ev_empty", [("empty_map", [], {"step_type": "map"}), ("after", ["empty_map"], {})]
    )
    start(conn, "ev_empty", [])

    define(conn, "ev_fail", [("a", [], {"max_attempts": 1})])
    start(conn, "ev_fail", {})
    fail(conn, "ev_fail")

    define(conn, "ev_type", [("a", [], {}), ("m", ["a"], {"step_type": "map"})])
    start(conn, "ev_type", {})
    complete(conn, "ev_type", {"not": "an array"})

    define(
        conn,
        "ev_unmet",
        [
            ("skipped", [], {"required_input_pattern": Jsonb({"go": True})}),
            (
                "cascading",
                [],
                {"required_input_pattern": Jsonb({"go": True}), "when_unmet": "skip-cascade"},
            ),
            ("downstream", ["cascading"], {}),
        ],
    )
    start(conn, "ev_unmet", {"go": False})

    define(conn, "ev_exhausted", [("a", [], {"max_attempts": 1, "when_exhausted": "skip"})])
    start(conn, "ev_exhausted", {})
    fail(conn, "ev_exhausted")

    define(
        conn,
        "ev_condition_fails",
        [("a", [], {"forbidden_input_pattern": Jsonb({"x": 1}), "when_unmet": "fail"})],
    )
    start(conn, "ev_condition_fails", {"x": 1})

    seen: dict[str, list[set[str]]] = {}
    for event, payload in conn.execute("select event, payload from realtime.messages"):
        keys = set(payload) - {"id"}
        parts = event.split(":")
        if parts[0] == "run":
            row = f"`{event}`"
        elif parts[2] == "completed" and parts[1].startswith("empty_"):
            row = "`step:<slug>:completed` (no task)"
        elif parts[2] == "skipped" and payload["skip_reason"] == "handler_failed":
            row = "`step:<slug>:skipped` (`handler_failed`)"
        elif parts[2] == "skipped":
            row = "`step:<slug>:skipped` (`condition_unmet`, `dependency_skipped`)"
        else:
            row = f"`step:<slug>:{parts[2]}`"
        seen.setdefault(row, []).append(keys)
    return seen


def documented_events() -> dict[str, set[str]]:
    rows = table_cells(section(SQL_PAGE.read_text(encoding="utf-8"), "## Events"))[1:]
    return {row[0]: {key.strip().strip("`") for key in row[2].split(",")} for row in rows}


def test_every_event_is_documented_with_its_payload_keys(conn: Conn) -> None:
    documented = documented_events()
    observed = observed_events(conn)
    assert set(observed) == set(documented)
    for row, payloads in observed.items():
        for keys in payloads:
            assert keys == documented[row], row


# -- CLI ----------------------------------------------------------------------------------------


def test_every_command_and_option_is_documented() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    command = typer.main.get_command(app)
    commands = getattr(command, "commands", {})
    assert commands
    documented = set(re.findall(r"^## `pgflow (\w+)`$", text, re.M))
    assert documented == set(commands)
    for name, sub in commands.items():
        body = section(text, f"## `pgflow {name}`")
        # A group (pgflow db) documents its subcommands and their options in its section.
        leaves = {name: sub, **{f"{name} {n}": c for n, c in getattr(sub, "commands", {}).items()}}
        for full_name, leaf in leaves.items():
            if leaf is not sub:
                assert f"pgflow {full_name}" in body, f"pgflow {full_name} is not documented"
            for param in leaf.params:
                options = [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
                for option in options:
                    if option.startswith("-"):
                        assert f"`{option}" in body, (
                            f"pgflow {full_name}: {option} is not documented"
                        )


# -- Python API ---------------------------------------------------------------------------------


@pytest.mark.parametrize("package", [pgflow_client, pgflow_worker], ids=lambda p: p.__name__)
def test_every_public_name_has_an_api_entry(package: Any) -> None:
    page = DOCS / "api" / f"{package.__name__.removeprefix('pgflow_')}.md"
    entries = re.findall(r"^::: ([\w.]+)$", page.read_text(encoding="utf-8"), re.M)
    names = set()
    for entry in entries:
        parts = entry.split(".")
        assert parts[0] == package.__name__, entry
        if len(parts) == 2:
            names.add(parts[1])
        else:  # a public name documented from its defining module
            assert getattr(package, parts[-1]) is not None, entry
            names.add(parts[-1])
    assert names == set(package.__all__)


def test_every_testing_helper_has_an_api_entry() -> None:
    import pgflow_worker.testing

    page = DOCS / "api" / "testing.md"
    entries = re.findall(r"^::: pgflow_worker\.testing\.(\w+)$", page.read_text("utf-8"), re.M)
    assert set(entries) == set(pgflow_worker.testing.__all__)

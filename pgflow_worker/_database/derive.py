"""Migrations derived from the schema files: the baseline, and the start of the next migration.

``sql/schema`` is the schema as it is now; ``sql/migrations`` is how a database of any release
gets there. The baseline (``0001``) is every schema file in order. A later migration changing
functions starts as those functions' files, which are ``create or replace`` statements; a
change to a table is written by hand as ``alter`` statements. Either way the drift test
(``tests/sql/test_schema.py``) checks that the migrations build exactly the schema::

    python -m pgflow_worker._database.derive baseline [--sql DIR] [--replace]
    python -m pgflow_worker._database.derive next NAME SCHEMA_FILE... [--sql DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import MigrationError
from .sqlfiles import list_migrations, list_schema_files, sql_root

__all__ = [
    "BASELINE_NAME",
    "render_baseline",
    "render_next",
    "write_baseline",
    "write_next",
]

#: The file name of the first migration, derived from the whole schema.
BASELINE_NAME = "0001_baseline.sql"

_NAME = re.compile(r"^[a-z0-9_]+$")
_FUNCTION_FILE = re.compile(r"^\d{4}_function_\w+\.sql$")

_BASELINE_HEADER = """\
-- pgflow-py SQL core: the baseline migration, the whole schema as of the first release.
--
-- Derived from sql/schema (each file in order, under a line naming it) by
--   python -m pgflow_worker._database.derive baseline
-- Once released it never changes: later changes to sql/schema reach existing databases through
-- later migrations (see docs/sql.md, "Changing the SQL").
"""

_NEXT_HEADER = """\
-- pgflow-py SQL core, migration {version}: {name}.
--
-- Started from the schema files below by
--   python -m pgflow_worker._database.derive next {name} ...
-- A function added here gets EXECUTE for PUBLIC unless this migration revokes it, as
-- sql/schema/0900_privileges.sql does for the schema; the drift test compares the two.
"""


def _section(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text += "\n"
    return f"\n-- ---- schema/{path.name} ----\n\n{text}"


def render_baseline(root: Path | None = None) -> str:
    """The text of the baseline migration: the header, then every schema file in order."""
    return _BASELINE_HEADER + "".join(_section(p) for p in list_schema_files(root))


def _next_version(root: Path) -> str:
    versions = [int(m.version) for m in list_migrations(root)]
    return f"{max(versions, default=0) + 1:04d}"


def render_next(name: str, files: Sequence[str | Path], root: Path | None = None) -> str:
    """The text of the next migration, made of the named schema files (functions only)."""
    root = root or sql_root()
    if not _NAME.match(name):
        raise MigrationError(f"a migration name is lowercase letters, digits and '_'; got {name!r}")
    if not files:
        raise MigrationError("name at least one schema file to start the migration from")
    schema = {p.name: p for p in list_schema_files(root)}
    chosen: list[Path] = []
    for file in files:
        found = schema.get(Path(file).name)
        if found is None:
            raise MigrationError(f"{file} is not a file of {root / 'schema'}")
        if not _FUNCTION_FILE.match(found.name):
            raise MigrationError(
                f"{found.name} does not define a function: a table or type change cannot be "
                "derived (its file creates the object afresh); write it as ALTER statements"
            )
        chosen.append(found)
    order = list(schema)
    chosen = sorted(set(chosen), key=lambda p: order.index(p.name))
    header = _NEXT_HEADER.format(version=_next_version(root), name=name)
    return header + "".join(_section(p) for p in chosen)


def write_baseline(root: Path | None = None, *, replace: bool = False) -> Path:
    """Write the baseline migration; an existing, different one is kept unless ``replace``."""
    root = root or sql_root()
    target = root / "migrations" / BASELINE_NAME
    text = render_baseline(root)
    others = [m.path.name for m in list_migrations(root) if m.path.name != BASELINE_NAME]
    if others:
        raise MigrationError(
            f"{root / 'migrations'} holds migrations besides the baseline ({', '.join(others)}): "
            "the baseline is derived once, before the first release"
        )
    if target.is_file() and target.read_text(encoding="utf-8") != text and not replace:
        raise MigrationError(
            f"{target} exists and differs from the schema; a released baseline never changes. "
            "Before the first release, pass --replace to derive it again"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


def write_next(name: str, files: Sequence[str | Path], root: Path | None = None) -> Path:
    """Write the next migration (numbered after the last) from schema files; return its path."""
    root = root or sql_root()
    text = render_next(name, files, root)
    target = root / "migrations" / f"{_next_version(root)}_{name}.sql"
    target.write_text(text, encoding="utf-8")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: write the baseline or the next migration, print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m pgflow_worker._database.derive",
        description="Derive pgflow-py migrations from the schema files of sql/schema.",
    )
    parser.add_argument("--sql", type=Path, default=None, help="the sql folder (default: ours)")
    commands = parser.add_subparsers(dest="command", required=True)
    baseline = commands.add_parser("baseline", help="write migrations/0001_baseline.sql")
    baseline.add_argument("--replace", action="store_true", help="overwrite a different one")
    following = commands.add_parser("next", help="write the next migration from function files")
    following.add_argument("name", help="what the migration does, e.g. faster_start_tasks")
    following.add_argument("files", nargs="+", help="schema files of the changed functions")
    args = parser.parse_args(argv)
    try:
        if args.command == "baseline":
            path = write_baseline(args.sql, replace=args.replace)
        else:
            path = write_next(args.name, args.files, args.sql)
    except (MigrationError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

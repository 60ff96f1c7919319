"""Where the SQL shipped with pgflow-py lives, and how its schema files and migrations are listed.

``sql/schema`` holds the schema as it is now, one file per object, applied in file-name order;
``sql/migrations`` holds the path there from every release, applied in version order by
:func:`~pgflow_worker._database.migrate`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["Migration", "list_migrations", "list_schema_files", "realtime_compat_sql", "sql_root"]

_MIGRATION_NAME = re.compile(r"^(?P<version>\d{4,})_(?P<name>[a-z0-9_]+)\.sql$")
_SCHEMA_FILE_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One file of ``sql/migrations``: applied once, in version order."""

    version: str
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@cache
def sql_root() -> Path:
    """The ``sql`` folder: inside the installed wheel, or at the top of a source checkout."""
    package_dir = Path(__file__).resolve().parent.parent
    for candidate in (package_dir / "_sql", package_dir.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise FileNotFoundError(
        f"pgflow-py's SQL files are missing: looked in {package_dir / '_sql'} and "
        f"{package_dir.parent / 'sql'}; reinstall the pgflow-py package"
    )


def list_migrations(root: Path | None = None) -> list[Migration]:
    """The migrations in version order; a badly named file is an error, never skipped."""
    folder = (root or sql_root()) / "migrations"
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise ValueError(
                f"migration file {path.name!r} is not named like '0001_description.sql'"
            )
        found.append(Migration(match["version"], match["name"], path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a version in {folder}")
    return found


def list_schema_files(root: Path | None = None) -> list[Path]:
    """The schema files in the order they apply (by name); a badly named file is an error."""
    folder = (root or sql_root()) / "schema"
    found = sorted(folder.glob("*.sql"))
    for path in found:
        if _SCHEMA_FILE_NAME.match(path.name) is None:
            raise ValueError(
                f"schema file {path.name!r} is not named like '0200_function_name.sql'"
            )
    if not found:
        raise FileNotFoundError(f"there are no schema files in {folder}")
    return found


def realtime_compat_sql(root: Path | None = None) -> str:
    """The stand-in for Supabase's ``realtime`` schema, for plain Postgres."""
    return ((root or sql_root()) / "compat" / "realtime.sql").read_text(encoding="utf-8")

"""Preparing a database for pgflow: pgmq, the realtime stand-in, and the migrations."""

from .migrate import MigrationReport, migrate
from .pgmq import ensure_pgmq, install_extension_files, pgmq_sql_path, pgmq_version
from .sqlfiles import (
    Migration,
    list_migrations,
    list_schema_files,
    realtime_compat_sql,
    sql_root,
)

__all__ = [
    "Migration",
    "MigrationReport",
    "ensure_pgmq",
    "install_extension_files",
    "list_migrations",
    "list_schema_files",
    "migrate",
    "pgmq_sql_path",
    "pgmq_version",
    "realtime_compat_sql",
    "sql_root",
]

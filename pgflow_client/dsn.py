"""Connection strings: where they come from, and how to mention them without the password."""

from __future__ import annotations

import os
import re

from psycopg.conninfo import conninfo_to_dict

__all__ = ["describe_dsn", "redact", "resolve_dsn"]

_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)@", re.I)
_KV_PASSWORD = re.compile(r"(?P<head>password\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\S+)", re.I)


def redact(text: str) -> str:
    """Replace every password in a URL or ``key=value`` connection string with ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}***@", text)
    return _KV_PASSWORD.sub(lambda m: f"{m['head']}***", text)


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` for messages: enough to find the server, never the password."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return redact(dsn)
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    user = params.get("user")
    dbname = params.get("dbname") or user or ""
    who = f"{user}@" if user else ""
    return f"{who}{host}:{port}/{dbname}"


def resolve_dsn(explicit: str | None) -> str:
    """The connection string from ``--db`` or ``DATABASE_URL``; a clear error when neither."""
    dsn = explicit or os.environ.get("DATABASE_URL")
    if not dsn:
        raise ValueError(
            "no database given: pass --db postgresql://user@host:5432/dbname or set DATABASE_URL"
        )
    return dsn

"""Drives ``pgflow db`` through its real command line, as a user would, and prints what it saw
as JSON on its last line. Run as a script (``python dbdriver.py [--dir D]``), by the tests,
in whatever setting they reproduce: another OS user, a mount namespace.

The server is always stopped before the script ends, whatever happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def pgflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgflow_worker", "db", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def outcome(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return {"rc": result.returncode, "out": result.stdout.strip(), "err": result.stderr.strip()}


def inspect(url: str) -> dict[str, Any]:
    """What a client connected to ``url`` finds: pgmq, pgflow's migrations, who runs it."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        pgmq = conn.execute("select extversion from pg_extension where extname = 'pgmq'")
        extension = pgmq.fetchone()
        send = conn.execute("select to_regprocedure('pgmq.send(text,jsonb,integer)') is not null")
        migrations = conn.execute("select count(*) from pgflow.migrations").fetchone()
        data = conn.execute("select current_setting('data_directory')").fetchone()
        assert data is not None
        owner = os.stat(data[0]).st_uid if os.access(data[0], os.F_OK) else None
        return {
            "pgmq_extension": extension[0] if extension else None,
            "pgmq_send": (send.fetchone() or [False])[0],
            "migrations": migrations[0] if migrations else 0,
            "data_owner": owner,
        }


def main() -> None:
    where = sys.argv[1:]  # e.g. ["--dir", "/tmp/x"], or nothing for the default folder
    seen: dict[str, Any] = {"uid": os.geteuid()}
    try:
        seen["stopped_status"] = outcome(pgflow("status", *where))
        seen["start"] = outcome(pgflow("start", *where))
        seen["status"] = outcome(pgflow("status", *where))
        seen["url"] = outcome(pgflow("url", *where))
        if seen["url"]["rc"] == 0:
            seen["database"] = inspect(seen["url"]["out"])
        seen["start_again"] = outcome(pgflow("start", *where))
        seen["stop"] = outcome(pgflow("stop", *where))
        seen["status_after_stop"] = outcome(pgflow("status", *where))
        seen["url_after_stop"] = outcome(pgflow("url", *where))
        seen["stop_again"] = outcome(pgflow("stop", *where))
        seen["restart"] = outcome(pgflow("start", *where))
    finally:
        seen["final_stop"] = outcome(pgflow("stop", *where))
    print(json.dumps(seen))


if __name__ == "__main__":
    main()

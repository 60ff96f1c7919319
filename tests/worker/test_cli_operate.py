"""`pgflow runs`, `pgflow cancel` and `pgflow retry`, run in-process (and with a worker
process for `retry --wait`)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgflow_worker import compile_flow
from pgflow_worker._tools.cli import app, parse_since
from tests.worker.markupflows import marks
from tests.worker.test_cli import runner, worker_process


def define(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for statement in compile_flow(marks):
            conn.execute(statement.encode())


def start(db_url: str, payload: Any) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "select run_id::text from pgflow.start_flow('cli_marks', %s)", (Jsonb(payload),)
        ).fetchone()
    assert row is not None
    return str(row[0])


def invoke(db_url: str, *args: str) -> Any:
    return runner.invoke(app, [*args, "--db", db_url])


def test_cancel(db_url: str) -> None:
    define(db_url)
    run_id = start(db_url, {"tags": [True]})
    done = invoke(db_url, "cancel", run_id, "--reason", "[red]wrong[/red]")
    assert done.exit_code == 0, done.output
    assert done.stdout == f"run {run_id} cancelled\n"
    again = invoke(db_url, "cancel", run_id, "--json")
    assert again.exit_code == 1
    assert again.stdout == ""
    assert f"run {run_id} was already cancelled at" in again.stderr
    status = invoke(db_url, "status", run_id, "--json")
    shown = json.loads(status.stdout)
    assert (shown["status"], shown["cancelled"], shown["cancel_reason"]) == (
        "failed",
        True,
        "[red]wrong[/red]",
    )
    assert shown["error_message"] == "Run cancelled: [red]wrong[/red]"
    assert shown["restart_of_run_id"] is None
    table = invoke(db_url, "status", run_id)
    assert "failed (cancelled)" in " ".join(table.stdout.split())

    other = start(db_url, {"tags": [True]})
    as_json = invoke(db_url, "cancel", other, "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["cancelled"] is True

    missing = str(uuid.uuid4())
    unknown = invoke(db_url, "cancel", missing)
    assert unknown.exit_code == 1
    assert f"run {missing} does not exist" in unknown.stderr
    bad = invoke(db_url, "cancel", "nope")
    assert bad.exit_code == 2
    assert "run_id 'nope' is not a UUID" in bad.stderr


def test_retry(db_url: str) -> None:
    define(db_url)
    source = start(db_url, {"tags": [True]})
    refused = invoke(db_url, "retry", source)
    assert refused.exit_code == 1
    assert "has not failed (it is started)" in refused.stderr
    invoke(db_url, "cancel", source)
    plain = invoke(db_url, "retry", source)
    assert plain.exit_code == 0, plain.output
    (new_id,) = plain.stdout.splitlines()
    assert str(uuid.UUID(new_id)) == new_id
    invoke(db_url, "cancel", new_id)
    shown = invoke(db_url, "retry", new_id, "--json")
    assert shown.exit_code == 0, shown.output
    run = json.loads(shown.stdout)
    assert run["restart_of_run_id"] == new_id
    assert (run["flow_slug"], run["input"], run["cancelled"]) == (
        "cli_marks",
        {"tags": [True]},
        False,
    )
    assert invoke(db_url, "retry", "nope").exit_code == 2
    assert invoke(db_url, "retry", str(uuid.uuid4())).exit_code == 1


def test_retry_wait_with_a_worker(db_url: str) -> None:
    define(db_url)
    good = start(db_url, {"tags": [True]})
    failing = start(db_url, {"tags": [True], "fail": True})
    invoke(db_url, "cancel", good)
    invoke(db_url, "cancel", failing)
    with worker_process(db_url, "tests.worker.markupflows:marks"):
        done = invoke(db_url, "retry", good, "--wait", "--timeout", "30")
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout) == {"check": [True, False]}
        failed = invoke(db_url, "retry", failing, "--wait", "--timeout", "30")
        assert failed.exit_code == 1, failed.output
        assert failed.stdout == ""
        assert "failed: OSError: [/path] [red]" in failed.stderr


def test_runs(db_url: str) -> None:
    define(db_url)
    ids = [start(db_url, {"tags": [True], "i": i}) for i in range(4)]
    invoke(db_url, "cancel", ids[1], "--reason", "stop")
    retried = invoke(db_url, "retry", ids[1]).stdout.strip()

    listed = invoke(db_url, "runs", "--json")
    assert listed.exit_code == 0, listed.output
    runs = json.loads(listed.stdout)
    assert sorted(r["run_id"] for r in runs) == sorted([*ids, retried])
    assert set(runs[0]) == {
        "run_id",
        "flow_slug",
        "status",
        "remaining_steps",
        "started_at",
        "completed_at",
        "failed_at",
        "cancelled",
        "cancelled_at",
        "cancel_reason",
        "restart_of_run_id",
    }
    (cancelled,) = json.loads(invoke(db_url, "runs", "--status", "cancelled", "--json").stdout)
    assert (cancelled["run_id"], cancelled["cancel_reason"]) == (ids[1], "stop")
    (retry,) = [r for r in runs if r["restart_of_run_id"]]
    assert (retry["run_id"], retry["restart_of_run_id"]) == (retried, ids[1])
    first = json.loads(invoke(db_url, "runs", "--limit", "3", "--json").stdout)
    rest = json.loads(
        invoke(db_url, "runs", "--limit", "3", "--before", first[-1]["run_id"], "--json").stdout
    )
    assert [r["run_id"] for r in first + rest] == [r["run_id"] for r in runs]
    assert len(json.loads(invoke(db_url, "runs", "--since", "1h", "--json").stdout)) == 5
    assert json.loads(invoke(db_url, "runs", "--flow", "other", "--json").stdout) == []

    table = invoke(db_url, "runs", "--flow", "cli_marks", "--status", "failed")
    assert table.exit_code == 0, table.output
    words = table.stdout.split()
    assert [w for w in words[:12] if w.isalpha()] == ["run", "flow", "status", "started", "ended"]
    assert "cancelled" in words
    empty = invoke(db_url, "runs", "--status", "completed")
    assert (empty.exit_code, empty.stdout, empty.stderr) == (0, "", "no runs\n")

    for bad, message in [
        (["--status", "running"], "status 'running' is not one of"),
        (["--limit", "0"], "limit must be an int from 1 to 10000"),
        (["--since", "yesterday"], "--since 'yesterday' is neither an ISO 8601 time"),
        (["--before", "nope"], "run_id 'nope' is not a UUID"),
    ]:
        refused = invoke(db_url, "runs", *bad)
        assert refused.exit_code == 2, (bad, refused.output)
        assert message in refused.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", datetime(2026, 12, 5, 11, 58, 30, tzinfo=UTC)),
        ("15m", datetime(2026, 12, 5, 11, 45, tzinfo=UTC)),
        ("2h", datetime(2026, 12, 5, 10, tzinfo=UTC)),
        ("7d", datetime(2026, 11, 28, 12, tzinfo=UTC)),
        ("1W", datetime(2026, 11, 28, 12, tzinfo=UTC)),
        ("2026-12-01T08:00:00", datetime(2026, 12, 1, 8, tzinfo=UTC)),
        ("2026-12-01T08:00:00+02:00", datetime(2026, 12, 1, 6, tzinfo=UTC)),
    ],
)
def test_since(text: str, expected: datetime) -> None:
    assert parse_since(text, now=datetime(2026, 12, 5, 12, tzinfo=UTC)) == expected
    assert parse_since(text).tzinfo is not None
    before = datetime.now(UTC)
    assert before <= parse_since("0s") <= datetime.now(UTC)

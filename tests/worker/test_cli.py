"""The `pgflow` command line, run in-process with typer's test runner and as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from pgflow_worker import compile_flow
from pgflow_worker._tools.cli import app
from tests.worker.markupflows import marks

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_migrate_installs_everything_then_is_a_no_op(empty_db_url: str) -> None:
    first = runner.invoke(app, ["migrate", "--db", empty_db_url, "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert report["applied"]
    assert report["realtime"] == "stand-in"
    second = runner.invoke(app, ["migrate", "--db", empty_db_url, "--json"])
    assert json.loads(second.output)["applied"] == []


def test_compile_prints_sql_and_writes_a_migration(tmp_path: Path) -> None:
    printed = runner.invoke(app, ["compile", "tests.worker.cliflows:hello"])
    assert printed.exit_code == 0, printed.output
    assert printed.output.splitlines() == [
        "SELECT pgflow.create_flow('cli_hello', max_attempts => 1);",
        "SELECT pgflow.add_step('cli_hello', 'greet');",
    ]
    written = runner.invoke(app, ["compile", "tests.worker.cliflows", "--out", str(tmp_path)])
    assert written.exit_code == 0, written.output
    (path,) = tmp_path.iterdir()
    assert path.name.endswith("_create_cli_hello_flow.sql")
    assert "pgflow.add_step('cli_hello', 'greet')" in path.read_text()


def test_bad_targets_and_missing_database_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["compile", "tests.worker.nowhere:flow"])
    assert result.exit_code == 2
    assert "cannot import 'tests.worker.nowhere'" in result.output
    result = runner.invoke(app, ["compile", "tests.worker.cliflows:hllo"])
    assert result.exit_code == 2
    assert "module 'tests.worker.cliflows' has no attribute 'hllo'" in result.output
    assert "the flows it holds: tests.worker.cliflows:hello" in result.output
    result = runner.invoke(app, ["compile", "tests.worker.cliflows:Any"])
    assert result.exit_code == 2
    assert "tests.worker.cliflows:Any is not a Flow" in result.output
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result = runner.invoke(app, ["start", "cli_hello"])
    assert result.exit_code == 2
    assert "DATABASE_URL" in result.output


def test_wrong_url_names_host_and_port_but_never_the_password() -> None:
    url = "postgresql://alice:s3cret-pw@127.0.0.1:1/nowhere"
    for command in (["migrate", "--db", url], ["start", "x", "--db", url]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, result.output
        assert "127.0.0.1:1" in result.output
        assert "s3cret-pw" not in result.output


def test_start_unknown_flow_lists_the_existing_ones(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('alpha')")
        conn.execute("select pgflow.create_flow('beta')")
    result = runner.invoke(app, ["start", "gamma", "--db", db_url])
    assert result.exit_code == 1
    assert "flow 'gamma' does not exist" in result.output
    assert "alpha, beta" in result.output


@contextlib.contextmanager
def worker_process(db_url: str, target: str) -> Iterator[subprocess.Popen[str]]:
    """A `pgflow worker` child process, stopped with SIGTERM (and checked to exit 0)."""
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgflow_worker",
            "worker",
            target,
            "--db",
            db_url,
            "--max-poll-seconds",
            "1",
            "--poll-interval-ms",
            "50",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield worker
    finally:
        worker.terminate()
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr


def test_start_wait_status_with_a_worker_process(db_url: str) -> None:
    with worker_process(db_url, "tests.worker.cliflows:hello"):
        # The worker creates the flow at startup: the first `start` may come too early.
        ok = _start_when_ready(db_url, "cli_hello", ["--input", '{"name": "Ada"}', "--wait"])
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.stdout) == {"greet": "Hello, Ada!"}
        bad = runner.invoke(
            app,
            [
                "start",
                "cli_hello",
                "--db",
                db_url,
                "--input",
                '{"name": "nobody"}',
                "--wait",
                "--json",
            ],
        )
        assert bad.exit_code == 1
        failed = json.loads(bad.stdout)
        assert failed["status"] == "failed"
        assert failed["steps"]["greet"]["error_message"] == "LookupError: nobody to greet"
        status = runner.invoke(app, ["status", failed["run_id"], "--db", db_url, "--json"])
        assert json.loads(status.stdout)["steps"]["greet"]["status"] == "failed"
        table = runner.invoke(app, ["status", failed["run_id"], "--db", db_url])
        assert "greet" in table.output
        assert "failed" in table.output


def _start_when_ready(db_url: str, slug: str, extra: list[str]) -> Result:
    deadline = time.monotonic() + 30
    while True:
        result = runner.invoke(app, ["start", slug, "--db", db_url, *extra])
        if result.exit_code == 0 or "does not exist" not in result.output:
            return result
        assert time.monotonic() < deadline, result.output
        time.sleep(0.1)  # the worker has not created the flow yet: ask again shortly


def test_compile_prints_markup_like_patterns_verbatim() -> None:
    """`[true]` in a condition is JSON, not a rich style tag to swallow."""
    printed = runner.invoke(app, ["compile", "tests.worker.markupflows:marks"])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout.splitlines() == compile_flow(marks)
    assert """required_input_pattern => '{"tags":[true]}'""" in printed.stdout


def test_start_without_wait_prints_only_the_run_id(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for statement in compile_flow(marks):
            conn.execute(statement.encode())
    result = runner.invoke(app, ["start", "cli_marks", "--db", db_url, "--input", "{}"])
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n")
    (line,) = result.stdout.splitlines()
    run_id = uuid.UUID(line)
    assert str(run_id) == line
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("select flow_slug from pgflow.runs where run_id = %s", (run_id,))
        assert row.fetchone() == ("cli_marks",)


def test_markup_like_outputs_and_errors_are_printed_as_data(db_url: str) -> None:
    with worker_process(db_url, "tests.worker.markupflows:marks"):
        ok = _start_when_ready(
            db_url, "cli_marks", ["--input", '{"tags": [true]}', "--wait", "--json"]
        )
        assert ok.exit_code == 0, ok.output
        done = json.loads(ok.stdout)
        assert done["output"] == {"check": [True, False]}

        failing = '{"tags": [true], "fail": true}'
        bad = runner.invoke(
            app, ["start", "cli_marks", "--db", db_url, "--input", failing, "--wait"]
        )
        # Without --json: a failed run exits 1, its error on stderr and nothing on stdout.
        assert bad.exit_code == 1, bad.output
        assert isinstance(bad.exception, SystemExit), bad.exception
        assert bad.stdout == ""
        assert "failed: OSError: [/path] [red]" in bad.stderr
        (failed_id,) = {word for word in bad.stderr.split() if word.count("-") == 4}

        table = runner.invoke(app, ["status", done["run_id"], "--db", db_url])
        assert table.exit_code == 0, table.output
        assert "[true, false]" in table.stdout
        failed_table = runner.invoke(app, ["status", failed_id, "--db", db_url])
        assert failed_table.exit_code == 0, failed_table.output
        assert "OSError: [/path] [red]" in failed_table.stdout


def test_every_command_has_help() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0, top.output
    names = sorted(group.commands)
    assert {"migrate", "compile", "worker", "start", "status", "watch", "demo"} <= set(names)
    for name in names:
        assert name in top.stdout
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert f"Usage: pgflow {name}" in result.stdout or f"{name} [OPTIONS]" in result.stdout
        summary = (group.commands[name].help or "").split("\n")[0].strip()
        assert summary, f"{name} has no help text"
        assert summary[:30] in " ".join(result.stdout.split()), (name, result.stdout)


def test_bad_json_input_is_refused() -> None:
    result = runner.invoke(app, ["start", "x", "--db", "postgresql://u@h/d", "--input", "{oops"])
    assert result.exit_code == 2
    assert "--input is not valid JSON" in result.output


def test_start_wait_says_early_when_no_worker_polls_the_flow(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for statement in compile_flow(marks):
            conn.execute(statement.encode())
        # A worker of another flow, and one of this flow that went quiet long ago.
        conn.execute(
            "insert into pgflow.workers (worker_id, queue_name, function_name, last_heartbeat_at)"
            " values (gen_random_uuid(), 'other_flow', 'w', now()),"
            " (gen_random_uuid(), 'cli_marks', 'w', now() - interval '10 minutes')"
        )
    waiting = ["--input", '{"tags": [true]}', "--wait", "--timeout", "1"]
    result = runner.invoke(app, ["start", "cli_marks", "--db", db_url, *waiting])
    assert result.exit_code == 3, result.output
    assert "no live worker polls flow 'cli_marks'" in result.stderr
    assert "still waiting up to 1 s" in result.stderr
    assert "did not finish within 1 s" in result.stderr
    # The hint comes before the wait, not after it.
    assert result.stderr.index("no live worker") < result.stderr.index("did not finish")


def test_start_wait_with_a_live_worker_gives_no_hint(db_url: str) -> None:
    with worker_process(db_url, "tests.worker.markupflows:marks"):
        done = _start_when_ready(db_url, "cli_marks", ["--input", '{"tags": [true]}', "--wait"])
    assert done.exit_code == 0, done.output
    assert "no live worker" not in done.stderr


def test_watch_ends_its_output_with_a_newline(db_url: str) -> None:
    with worker_process(db_url, "tests.worker.markupflows:marks"):
        started = _start_when_ready(db_url, "cli_marks", ["--input", '{"tags": [true]}'])
        assert started.exit_code == 0, started.output
        run_id = started.stdout.strip()
        watched = runner.invoke(app, ["watch", run_id, "--db", db_url])
    assert watched.exit_code == 0, watched.output
    assert "completed" in watched.stdout
    assert watched.stdout.endswith("\n")
    assert not watched.stdout.endswith("\n\n")

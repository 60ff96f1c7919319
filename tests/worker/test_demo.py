"""`pgflow demo`, run as a real process: on the test database, on its own cached server, on
the Supabase stand-in; interrupted, killed, and misconfigured."""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from pgflow_worker._cli import app
from pgflow_worker._database import EmbeddedPostgres, find_bindir, migrate
from pgflow_worker._database import cluster as cluster_module
from pgflow_worker._database.embedded import server_processes
from pgflow_worker.errors import PostgresNotFound

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

pytestmark = pytest.mark.skipif(
    not Path("/proc/self").is_dir(), reason="checks for leftover server processes through /proc"
)

_STACK_VARIABLES = ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_KEY", "PGFLOW_DEMO_DIR")


def demo_env(directory: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _STACK_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    if directory is not None:
        env["PGFLOW_DEMO_DIR"] = str(directory)
    env.update(extra)
    return env


def demo(
    *args: str, env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgflow_worker", "demo", "--no-live", *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def postmasters_of(data_dir: Path) -> list[int]:
    """Live processes whose command line names ``data_dir`` (a check independent of the
    code under test, which looks at working directories)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if str(data_dir).encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def leftovers(directory: Path) -> list[str]:
    found = [f"process {pid}" for pid in server_processes(directory / "data")]
    found += [f"postmaster {pid}" for pid in postmasters_of(directory / "data")]
    if (directory / "data" / "postmaster.pid").exists():
        found.append("postmaster.pid")
    found += [path.name for path in directory.glob(".s.PGSQL.*")]
    if (directory / "owner.lock").exists():
        found.append("owner.lock")
    return found


def assert_completed(result: subprocess.CompletedProcess[str], runs: int = 2) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert '"greeting": "Hello, Alice Smith!"' in out
    assert '"greeting": "Hello, Bob Jones!"' in out
    assert out.count('"pages": 6') >= runs  # each crawl run's summary
    assert "attempt 1 failed: TimeoutError" in out  # the retried map task
    assert "first event" in out
    assert "tasks/s" in out
    # greet_user: 2 tasks; crawl_site: list_pages, 6 × fetch_page (one retried), summarize.
    assert f"{2 * runs} runs, {10 * runs} tasks ({runs} retried)" in out


class Lines:
    """Reads a process's stdout on a thread, so the test can wait for a line with a bound."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"output ended before {text!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} within {timeout} s:\n{''.join(self.seen)}")


def start_demo(directory: Path) -> tuple[subprocess.Popen[str], Lines]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pgflow_worker", "demo", "--no-live", "--runs", "2"],
        cwd=ROOT,
        env=demo_env(directory),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, Lines(process)


def require_server_binaries() -> None:
    try:
        find_bindir()
    except PostgresNotFound as exc:
        pytest.skip(f"the demo's own server cannot start here: {exc}")


@pytest.fixture(scope="module")
def template() -> Iterator[Path]:
    """A migrated, stopped demo cluster; each test starts from a copy (initdb once)."""
    require_server_binaries()
    folder = Path(tempfile.mkdtemp(prefix="pgflow-demo-tpl-", dir="/tmp"))
    with EmbeddedPostgres(folder) as server:
        migrate(server.dsn())
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def demo_dir(template: Path) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="pgflow-demo-", dir="/tmp"))
    subprocess.run(["cp", "-a", f"{template}/.", str(folder)], check=True)
    yield folder
    for pid in server_processes(folder / "data"):  # only if a test failed half-way
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(folder, ignore_errors=True)


def test_demo_on_the_test_database(db_url: str) -> None:
    result = demo("--runs", "2", "--db", db_url, env=demo_env())
    assert_completed(result)
    assert "migrations up to date" in result.stdout
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "select flow_slug, status, count(*) from pgflow.runs group by 1, 2 order by 1"
        ).fetchall()
    assert rows == [("crawl_site", "completed", 2), ("greet_user", "completed", 2)]


def test_demo_on_a_fresh_cached_server_then_reuses_it() -> None:
    require_server_binaries()
    folder = Path(tempfile.mkdtemp(prefix="pgflow-demo-fresh-", dir="/tmp"))
    try:
        first = demo("--runs", "2", env=demo_env(folder))
        assert_completed(first)
        assert ": created, started in" in first.stdout
        assert "migrations applied" in first.stdout
        assert leftovers(folder) == []
        second = demo("--runs", "2", env=demo_env(folder))
        assert_completed(second)
        assert ": reused, started in" in second.stdout
        assert "migrations up to date" in second.stdout
        assert leftovers(folder) == []
    finally:
        for pid in server_processes(folder / "data"):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_demo_stops_everything(demo_dir: Path, sig: signal.Signals) -> None:
    process, lines = start_demo(demo_dir)
    try:
        lines.wait_for("run started")
        process.send_signal(sig)
        process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    stderr = process.stderr.read()
    assert process.returncode == 128 + sig, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    assert leftovers(demo_dir) == []


@pytest.mark.parametrize("kill_server", [True, False], ids=["server-killed", "server-orphaned"])
def test_a_killed_demo_does_not_block_the_next(demo_dir: Path, kill_server: bool) -> None:
    process, lines = start_demo(demo_dir)
    try:
        lines.wait_for("run started")
        postmaster = int((demo_dir / "data" / "postmaster.pid").read_text().split()[0])
        process.kill()
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if kill_server:
        os.kill(postmaster, signal.SIGKILL)
    else:
        # Still running, orphaned; both ways of finding it see it.
        assert postmaster in server_processes(demo_dir / "data")
        assert postmaster in postmasters_of(demo_dir / "data")
    assert (demo_dir / "data" / "postmaster.pid").exists()
    result = demo("--runs", "2", env=demo_env(demo_dir))
    assert_completed(result)
    assert leftovers(demo_dir) == []


async def test_demo_with_supabase_for_the_client(db_url: str) -> None:
    from tests.supabase_standin import SupabaseStandIn

    async with SupabaseStandIn(db_url) as standin:
        env = demo_env(DATABASE_URL=db_url, SUPABASE_URL=standin.url, SUPABASE_KEY=standin.key)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "pgflow_worker", "demo", "--no-live", "--runs", "2"),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    code = process.returncode if process.returncode is not None else -1
    result = subprocess.CompletedProcess([], code, stdout.decode(), stderr.decode())
    assert_completed(result)
    assert f"Supabase {standin.url} (client)" in result.stdout
    assert "PgflowClient (Supabase Realtime)" in result.stdout


# -- bad configuration (in-process: quick, and the seams can be patched) -----------------------


@pytest.fixture
def no_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _STACK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_no_server_anywhere_says_what_to_install(
    no_stack: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PGFLOW_PG_BINDIR", str(empty))
    monkeypatch.setenv("PATH", str(empty))  # no pg_config
    monkeypatch.setattr(cluster_module, "SYSTEM_PG_ROOT", tmp_path / "no-debian")
    monkeypatch.setitem(sys.modules, "pgserver", None)  # the optional extra is absent
    monkeypatch.setenv("PGFLOW_DEMO_DIR", str(tmp_path / "demo"))
    result = runner.invoke(app, ["demo", "--no-live"])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert "no database is configured (--db, DATABASE_URL)" in message
    assert "apt-get install postgresql" in message
    assert "brew install postgresql" in message
    assert "pip install 'pgflow-py[embedded]'" in message
    assert "point DATABASE_URL at a server" in message


def test_a_wrong_url_names_host_and_port_never_the_password(no_stack: None) -> None:
    result = runner.invoke(
        app, ["demo", "--no-live", "--db", "postgresql://u:secret@127.0.0.1:1/x"]
    )
    assert result.exit_code == 1, result.output
    assert "cannot connect to u@127.0.0.1:1/x" in result.output
    assert "secret" not in result.output


def test_a_different_flow_of_the_same_name_is_left_alone(no_stack: None, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('greet_user')")
        conn.execute("select pgflow.add_step('greet_user', 'hello')")
    result = runner.invoke(app, ["demo", "--no-live", "--db", db_url])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert "already holds a different flow 'greet_user'" in message
    assert "will not replace" in message
    with psycopg.connect(db_url) as conn:
        steps = conn.execute("select step_slug from pgflow.steps where flow_slug = 'greet_user'")
        assert steps.fetchall() == [("hello",)]


def test_supabase_without_a_database_url_is_explained(
    no_stack: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPABASE_URL", "http://127.0.0.1:54321")
    monkeypatch.setenv("SUPABASE_KEY", "anon-key")
    result = runner.invoke(app, ["demo", "--no-live"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "SUPABASE_URL is set, but the worker talks to PostgreSQL directly" in message
    assert "set DATABASE_URL" in message
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/postgres")
    monkeypatch.delenv("SUPABASE_KEY")
    result = runner.invoke(app, ["demo", "--no-live"])
    assert result.exit_code == 2, result.output
    assert "SUPABASE_KEY is not" in result.output

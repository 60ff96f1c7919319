"""`pgflow demo`, run as a real process: on the test database, on its own cached server, on
the Supabase stand-in; interrupted (at any point of its start-up too), killed, and
misconfigured; and its live table, drawn into a terminal and into a pipe."""

from __future__ import annotations

import asyncio
import io
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import psycopg
import pytest
from rich.console import Console
from typer.testing import CliRunner

from pgflow_worker._database import migrate
from pgflow_worker._tools import EmbeddedPostgres, find_bindir, pgserver_bindir
from pgflow_worker._tools import cluster as cluster_module
from pgflow_worker._tools.cli import app
from pgflow_worker._tools.demo import DemoOptions, _Interrupted, _Signals, run_demo
from pgflow_worker._tools.embedded import server_processes
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
    """The demo in a session of its own, as a shell runs a command: its process group is the
    one Ctrl-C at a terminal signals (the demo and every child it has at that moment)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pgflow_worker", "demo", "--no-live", "--runs", "2"],
        cwd=ROOT,
        env=demo_env(directory),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    return process, Lines(process)


def ctrl_c(process: subprocess.Popen[str], sig: int = signal.SIGINT) -> None:
    """What a terminal does on Ctrl-C: signal the foreground process group, children too."""
    os.killpg(process.pid, sig)


def session_members(session: int) -> list[str]:
    """Live processes of a session (children of the demo that outlived it, say)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            found.append(f"{entry.name}: {cmdline}")
    return found


def kill_demo(process: subprocess.Popen[str]) -> None:
    """Kill the demo's process group if the demo still runs (a test gone wrong)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stop_demo(process: subprocess.Popen[str], timeout: float = 30) -> str:
    """Wait for the demo to exit (killing its group if it does not); return its stderr."""
    try:
        process.wait(timeout=timeout)
    finally:
        kill_demo(process)
    assert process.stderr is not None
    return process.stderr.read()


def wait_for_path(path: Path, process: subprocess.Popen[str], timeout: float = 60) -> None:
    """Return once ``path`` exists; fail if the demo exits first or it takes too long."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the demo exited ({process.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.002)


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
    except BaseException:
        kill_demo(process)
        raise
    ctrl_c(process, sig)
    stderr = stop_demo(process, timeout=15)
    assert process.returncode == 128 + sig, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    assert leftovers(demo_dir) == []
    assert session_members(process.pid) == []


# When Ctrl-C comes during start-up, on a folder with no server yet: at once (most likely
# while Python is still loading), once the demo owns the folder (its signal handlers are in
# place and the start of the server is about to begin), while initdb creates the cluster,
# while pg_ctl starts the server (its log appears), and once the server writes its pid file.
_STARTUP_MOMENTS = {
    "at-once": None,
    "folder-owned": "owner.lock",
    "initdb": "data",
    "server-starting": "server.log",
    "pid-file": "data/postmaster.pid",
}


@pytest.mark.parametrize("moment", list(_STARTUP_MOMENTS))
def test_ctrl_c_during_startup_on_a_fresh_folder_leaves_nothing(moment: str) -> None:
    require_server_binaries()
    folder = Path(tempfile.mkdtemp(prefix="pgflow-demo-startup-", dir="/tmp"))
    try:
        process, _ = start_demo(folder)
        try:
            if (watched := _STARTUP_MOMENTS[moment]) is not None:
                wait_for_path(folder / watched, process)
        except BaseException:
            kill_demo(process)
            raise
        ctrl_c(process)
        stderr = stop_demo(process)
        if moment == "at-once" and process.returncode == -signal.SIGINT:
            # Python's own handling, before the demo's was in place: still the status a
            # shell reports for Ctrl-C (130), and nothing had been started yet.
            pass
        else:
            assert process.returncode == 128 + signal.SIGINT, stderr
            assert "interrupted" in stderr
            assert "Traceback" not in stderr
        assert leftovers(folder) == []
        assert session_members(process.pid) == []
        # And the folder is fit for the next demo, whatever state the start-up was left in.
        assert_completed(demo("--runs", "2", env=demo_env(folder)))
        assert leftovers(folder) == []
    finally:
        for pid in server_processes(folder / "data"):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_signal_while_the_server_starts_waits_for_it_then_stops_it() -> None:
    """SIGTERM to the demo alone (``kill PID``, a service manager), children untouched: the
    signal is held until the server is up, then the server is stopped, not left running."""
    require_server_binaries()
    folder = Path(tempfile.mkdtemp(prefix="pgflow-demo-deferred-", dir="/tmp"))
    try:
        process, _ = start_demo(folder)
        try:
            wait_for_path(folder / "owner.lock", process)
        except BaseException:
            kill_demo(process)
            raise
        process.send_signal(signal.SIGTERM)
        stderr = stop_demo(process)
        assert process.returncode == 128 + signal.SIGTERM, stderr
        assert "interrupted: everything was stopped" in stderr
        assert "Traceback" not in stderr
        log = (folder / "server.log").read_text()
        assert "database system is ready to accept connections" in log
        assert log.rstrip().endswith("database system is shut down"), log
        assert leftovers(folder) == []
        assert session_members(process.pid) == []
    finally:
        for pid in server_processes(folder / "data"):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


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


def test_without_system_binaries_the_demo_runs_on_pgserver(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What the README promises a machine without PostgreSQL: the bundled server instead."""
    bundled = pgserver_bindir()
    if bundled is None:
        pytest.skip("pgserver is not installed (pip install 'pgflow-py[embedded]')")
    path = tmp_path / "bin"  # no pg_config; runuser only, for running the server as root
    path.mkdir()
    if (runuser := shutil.which("runuser")) is not None:
        (path / "runuser").symlink_to(runuser)
    monkeypatch.setenv("PGFLOW_PG_BINDIR", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("PATH", str(path))
    monkeypatch.setattr(cluster_module, "SYSTEM_PG_ROOT", tmp_path / "no-debian")
    assert find_bindir() == bundled
    folder = Path(tempfile.mkdtemp(prefix="pgflow-demo-pgserver-", dir="/tmp"))
    try:
        out = io.StringIO()
        errors = io.StringIO()
        code = run_demo(
            DemoOptions(runs=1, live=False, directory=folder),
            console=Console(file=out, width=200),
            errors=Console(file=errors, width=200),
            environ={},
        )
        assert code == 0, out.getvalue() + errors.getvalue()
        first = out.getvalue().splitlines()[0]
        assert re.match(r"pgflow demo · PostgreSQL 16[.\d]* \(pgserver binaries\) in ", first)
        assert "2 runs, 10 tasks (1 retried)" in out.getvalue()
        assert leftovers(folder) == []
    finally:
        for pid in server_processes(folder / "data"):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


# -- the live view (in-process, into a console of the test's own) -----------------------------

_STYLES = re.compile(r"\x1b\[[0-9;]*m|\x1b\[\?25[lh]")  # colours; hiding the cursor
_REDRAW = re.compile(r"(?:\r|\x1b\[2K|\x1b\[1A)+")  # rich's "back to the top of the view"


def live_demo(db_url: str, console: Console, live: bool | None) -> tuple[int, str, str]:
    """Run the demo into ``console``; its exit code, its output without colours, its errors."""
    errors = io.StringIO()
    code = run_demo(
        DemoOptions(runs=2, live=live, db=db_url),
        console=console,
        errors=Console(file=errors, width=200),
        environ={},
    )
    assert isinstance(console.file, io.StringIO)
    return code, _STYLES.sub("", console.file.getvalue()), errors.getvalue()


def split_summary(out: str) -> tuple[list[str], str]:
    """The frames the live view drew (first to last) and what was printed after them."""
    live_part, heading, summary = out.partition("outputs and timings")
    assert heading, out
    frames = [frame for frame in _REDRAW.split(live_part) if "┏" in frame]
    return frames, heading + summary


def assert_summary(summary: str, *, wide: bool) -> None:
    lines = summary.splitlines()
    assert lines[0].strip() == "outputs and timings"
    assert re.search(
        r"┃ run +┃ status +┃ output +┃ first event +┃ total +┃ in database +┃", summary
    )
    # A row per run (on a narrow console, labels and outputs wrap onto more lines).
    rows = re.findall(
        r"│ (?:greet_user|crawl_site)\b[^│]*│ completed +│.*│ \d+ ms +│$", summary, re.M
    )
    assert len(rows) == 4, summary
    assert ('"Hello, Alice Smith!"' if wide else '"Hello,') in summary
    assert "4 runs, 20 tasks (2 retried) in " in summary
    assert "tasks/s; first event after" in summary


def test_live_view_on_a_wide_terminal(db_url: str) -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    code, out, errors = live_demo(db_url, console, live=None)  # the default on a terminal
    assert code == 0, out + errors
    frames, summary = split_summary(out)
    # Redrawn as the runs went: a frame with the retried map step under way, before the end.
    assert len(frames) > 10
    assert any("▶ fetch_page" in frame for frame in frames[:-1])
    last = frames[-1]
    assert "pgflow demo · database" in last
    assert re.search(r"┃ run +┃ status +┃ steps +┃ attempts +┃ elapsed +┃ output +┃", last)
    for n, name in ((1, "Alice Smith"), (2, "Bob Jones")):
        assert re.search(
            rf"│ greet_user #{n} +│ completed +│ ✓ full_name  ✓ greeting +│ 2 +│ [\d.]+ s +│ "
            rf'{{"greeting": "Hello, {name}!"}} +│',
            last,
        ), last
        assert re.search(
            rf"│ crawl_site #{n} +│ completed +│ ✓ list_pages  ✓ fetch_page  ✓ summarize +│ "
            r"9 \(1 retried\) +│",
            last,
        ), last
    assert "fetch_page[1] attempt 1 failed (TimeoutError" in last
    assert "pgflow retries it" in last
    assert_summary(summary, wide=True)


def test_live_view_on_an_80_column_terminal_cuts_nothing_off(db_url: str) -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    code, out, errors = live_demo(db_url, console, live=None)
    assert code == 0, out + errors
    frames, summary = split_summary(out)
    last = frames[-1]
    assert all(len(line) <= 80 for line in last.splitlines())
    # One step a line, no output column (the summary shows the outputs), whole labels.
    assert re.search(r"┃ run +┃ status +┃ steps +┃ attempts +┃ elapsed +┃\n", last), last
    assert re.search(r"│ greet_user #1 +│ completed +│ ✓ full_name +│ 2 +│ [\d.]+ s +│\n", last)
    assert re.search(r"│ +│ +│ ✓ greeting +│ +│ +│\n", last)
    assert re.search(
        r"│ crawl_site #2 +│ completed +│ ✓ list_pages +│ 9 \(1 retried\) +│ [\d.]+ s +│\n", last
    ), last
    assert_summary(summary, wide=False)


def test_live_view_into_a_pipe_ends_its_last_line(db_url: str) -> None:
    """Forced on where no terminal is (``--live | tee log``): the final table, once, and
    the summary on lines of its own."""
    console = Console(file=io.StringIO(), force_terminal=False, width=100)
    code, out, errors = live_demo(db_url, console, live=True)
    assert code == 0, out + errors
    assert "\x1b" not in out
    frames, summary = split_summary(out)
    assert len(frames) == 1
    assert "│ crawl_site #2 " in frames[0]
    assert out.count("pgflow retries it\n") == 2
    assert "\noutputs and timings" in out
    assert_summary(summary, wide=False)


# -- deferring signals while a server starts or stops -------------------------------------------


def interruption(block: Callable[[], object]) -> _Interrupted:
    """The :class:`_Interrupted` that ``block`` raises (failing the test if it raises none)."""
    try:
        block()
    except _Interrupted as exc:
        return exc
    raise AssertionError("no interruption")


def test_a_signal_outside_a_deferred_block_interrupts_at_once() -> None:
    steps: list[str] = []

    def block() -> None:
        signal.raise_signal(signal.SIGTERM)
        steps.append("after the signal")

    with _Signals():
        caught = interruption(block)
    assert caught.signum == signal.SIGTERM
    assert steps == []


def test_a_deferred_block_finishes_then_the_first_signal_is_raised() -> None:
    steps: list[str] = []

    def block(signals: _Signals) -> None:
        with signals.deferred():
            signal.raise_signal(signal.SIGINT)
            steps.append("after the first signal")
            with signals.deferred():  # nested: only the outermost block raises
                signal.raise_signal(signal.SIGTERM)
            steps.append("after the inner block")
        steps.append("after the outer block")

    with _Signals() as signals:
        caught = interruption(lambda: block(signals))
    assert steps == ["after the first signal", "after the inner block"]
    assert caught.signum == signal.SIGINT


def test_a_failure_in_a_deferred_block_is_reported_as_the_signal_behind_it() -> None:
    """A child (initdb, pg_ctl) killed by the same Ctrl-C makes the block fail: that failure
    is the interruption. Without a signal, the failure is the failure."""

    def killed_child(signals: _Signals) -> None:
        with signals.deferred():
            signal.raise_signal(signal.SIGINT)
            raise RuntimeError("initdb was killed")

    def failed_child(signals: _Signals) -> None:
        with signals.deferred():
            raise RuntimeError("pg_ctl failed")

    with _Signals() as signals:
        caught = interruption(lambda: killed_child(signals))
        assert caught.signum == signal.SIGINT
        assert caught.__suppress_context__
        with pytest.raises(RuntimeError, match="pg_ctl failed"):
            failed_child(signals)  # and nothing was held over from the first block


def test_signal_handlers_are_given_back() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with _Signals() as signals:
        assert signal.getsignal(signal.SIGINT) != before[signal.SIGINT]
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as asyncio leaves them
        signals.reinstall()
        with pytest.raises(_Interrupted):
            signal.raise_signal(signal.SIGINT)
    assert {sig: signal.getsignal(sig) for sig in before} == before


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


# -- the '--reset' hint: only where a reset helps ---------------------------------------------

_RESET_HINT = "'pgflow demo --reset' recreates it"


def demo_in_process(folder: Path, *, reset: bool = False) -> tuple[int, str]:
    """Run the demo on ``folder``; its exit code and what it printed on standard error."""
    errors = io.StringIO()
    code = run_demo(
        DemoOptions(runs=1, live=False, directory=folder, reset=reset),
        console=Console(file=io.StringIO(), width=200),
        errors=Console(file=errors, width=200),
        environ={},
    )
    return code, errors.getvalue()


def test_the_reset_hint_comes_with_a_cluster_of_another_version(demo_dir: Path) -> None:
    (demo_dir / "data" / "PG_VERSION").write_text("9\n")
    code, errors = demo_in_process(demo_dir)
    assert code == 1
    assert "was created by PostgreSQL 9" in errors
    assert _RESET_HINT in " ".join(errors.split())
    code, errors = demo_in_process(demo_dir, reset=True)
    assert code == 0, errors
    assert leftovers(demo_dir) == []


def test_no_reset_hint_where_a_reset_changes_nothing(demo_dir: Path) -> None:
    with EmbeddedPostgres(demo_dir):
        code, errors = demo_in_process(demo_dir)
    assert code == 1
    assert "another process" in errors
    assert "--reset" not in errors
    (demo_dir / "notes.txt").write_text("mine")
    code, errors = demo_in_process(demo_dir)
    assert code == 1
    assert "holds files that are not a server's" in errors
    assert "--reset" not in errors
    assert leftovers(demo_dir) == []

"""EmbeddedPostgres: a server in a cache folder, reused, owned by one process, never left behind;
and the fallback to the binaries of the optional ``pgserver`` package."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgflow_worker._database import EmbeddedPostgres, find_bindir, migrate, pgserver_bindir
from pgflow_worker._database import cluster as cluster_module
from pgflow_worker._database.embedded import default_directory, server_processes
from pgflow_worker.errors import PostgresNotFound, PostgresStartError

ROOT = Path(__file__).resolve().parents[2]


def scratch_folder(prefix: str) -> Path:
    """A folder the ``postgres`` OS user can reach when the tests run as root (not under
    pytest's tmp_path, whose parents are private to root)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def leftovers(directory: Path) -> list[str]:
    """Everything a stopped server must not leave behind in its folder."""
    found = [f"process {pid}" for pid in server_processes(directory / "data")]
    if (directory / "data" / "postmaster.pid").exists():
        found.append("postmaster.pid")
    found += [path.name for path in directory.glob(".s.PGSQL.*")]
    if (directory / "owner.lock").exists():
        found.append("owner.lock")
    return found


def wait_until_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait for a killed process to be gone or a zombie."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} did not exit within {timeout} s")


def kill_server(directory: Path) -> None:
    """Stop a server the test left running (the test failed half-way)."""
    for pid in server_processes(directory / "data"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def template() -> Iterator[Path]:
    """A migrated, stopped cluster, copied into each test's folder (initdb once per module)."""
    try:
        find_bindir()
    except PostgresNotFound as exc:
        pytest.skip(f"no PostgreSQL binaries to run a server with: {exc}")
    folder = scratch_folder("pgflow-embedded-tpl-")
    with EmbeddedPostgres(folder) as server:
        migrate(server.dsn())
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def folder(template: Path) -> Iterator[Path]:
    target = scratch_folder("pgflow-embedded-")
    subprocess.run(["cp", "-a", f"{template}/.", str(target)], check=True)
    yield target
    kill_server(target)
    shutil.rmtree(target, ignore_errors=True)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc to find server processes")
def test_start_reuses_the_cluster_and_stop_leaves_nothing(folder: Path) -> None:
    with EmbeddedPostgres(folder) as server:
        assert server.reused
        assert server.source == "system" or pgserver_bindir() is not None
        assert server_processes(server.data_dir)
        with psycopg.connect(server.dsn()) as conn:
            conn.execute("create table kept (x int)")
        # Migrations were applied when the template was built: nothing left to do.
        assert migrate(server.dsn()).applied == []
    assert leftovers(folder) == []
    with EmbeddedPostgres(folder) as again, psycopg.connect(again.dsn()) as conn:
        conn.execute("select * from kept")
    assert leftovers(folder) == []


def test_a_second_owner_is_refused_while_the_first_runs(folder: Path) -> None:
    with EmbeddedPostgres(folder):
        with pytest.raises(PostgresStartError, match=f"another process \\(pid {os.getpid()}\\)"):
            EmbeddedPostgres(folder).start()
        assert (folder / "owner.lock").exists()
    assert leftovers(folder) == []


def test_reset_wipes_the_cluster(folder: Path) -> None:
    with EmbeddedPostgres(folder) as server, psycopg.connect(server.dsn()) as conn:
        conn.execute("create table doomed (x int)")
    server = EmbeddedPostgres(folder).start(reset=True)
    try:
        assert not server.reused
        with psycopg.connect(server.dsn()) as conn:
            found = conn.execute("select to_regclass('doomed')").fetchone()
        assert found == (None,)
    finally:
        server.stop()


def test_a_cluster_of_another_major_version_asks_for_a_reset(folder: Path) -> None:
    (folder / "data" / "PG_VERSION").write_text("9\n")
    with pytest.raises(PostgresStartError, match=r"PostgreSQL 9\b.*'pgflow demo --reset'"):
        EmbeddedPostgres(folder).start()
    assert leftovers(folder) == []


def test_the_remains_of_an_interrupted_initdb_are_replaced(folder: Path) -> None:
    (folder / "data" / "PG_VERSION").unlink()
    with EmbeddedPostgres(folder) as server, psycopg.connect(server.dsn()) as conn:
        assert not server.reused
        assert conn.execute("select 1").fetchone() == (1,)
    assert leftovers(folder) == []


def test_a_folder_holding_other_files_is_refused(folder: Path) -> None:
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(
        PostgresStartError, match=r"holds files that are not a server's \(notes.txt\)"
    ):
        EmbeddedPostgres(folder).start()
    assert (folder / "data" / "PG_VERSION").is_file()
    assert leftovers(folder) == []


def test_a_symlinked_folder_is_refused(folder: Path) -> None:
    link = folder.parent / f"{folder.name}-link"
    link.symlink_to(folder)
    try:
        with pytest.raises(PostgresStartError, match="symbolic link"):
            EmbeddedPostgres(link).start()
    finally:
        link.unlink()


_OWNER = """
import sys, time
from pgflow_worker._database import EmbeddedPostgres
server = EmbeddedPostgres(sys.argv[1]).start()
print(server.dsn(), flush=True)
time.sleep(120)
"""


def _owner_process(folder: Path) -> tuple[subprocess.Popen[str], int]:
    """A process that owns the folder's running server; returns it and the postmaster's pid."""
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(folder)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line.startswith("postgresql://"), owner.stderr.read() if owner.stderr else line
    pid = int((folder / "data" / "postmaster.pid").read_text().split()[0])
    return owner, pid


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc to find server processes")
@pytest.mark.parametrize("kill_postmaster", [True, False], ids=["killed-server", "orphan-server"])
def test_what_a_killed_owner_left_does_not_block_the_next_start(
    folder: Path, kill_postmaster: bool
) -> None:
    owner, postmaster = _owner_process(folder)
    owner.kill()
    owner.communicate(timeout=10)
    if kill_postmaster:
        os.kill(postmaster, signal.SIGKILL)
        wait_until_gone(postmaster)
        assert (folder / "data" / "postmaster.pid").exists()  # stale now
    with EmbeddedPostgres(folder) as server, psycopg.connect(server.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert postmaster not in server_processes(server.data_dir)
    assert leftovers(folder) == []


def test_default_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGFLOW_DEMO_DIR", str(tmp_path / "mine"))
    assert default_directory() == tmp_path / "mine"
    monkeypatch.delenv("PGFLOW_DEMO_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/pgflow-cache-probe")
    assert default_directory() == Path("/tmp/pgflow-cache-probe/pgflow-py/demo-pg")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_CACHE_HOME", str(private / "cache"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    # As root the server runs as 'postgres', which cannot enter a private folder.
    assert default_directory() == Path("/var/tmp/pgflow-py-demo-0")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_directory() == private / "cache" / "pgflow-py" / "demo-pg"


def _no_system_binaries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PGFLOW_PG_BINDIR", str(empty))
    monkeypatch.setenv("PATH", str(empty))  # no pg_config
    monkeypatch.setattr(cluster_module, "SYSTEM_PG_ROOT", tmp_path / "no-debian")


def test_without_any_binaries_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_system_binaries(monkeypatch, tmp_path)
    monkeypatch.setitem(sys.modules, "pgserver", None)  # as if not installed
    assert pgserver_bindir() is None
    with pytest.raises(PostgresNotFound) as caught:
        find_bindir()
    message = str(caught.value)
    assert "apt-get install postgresql" in message
    assert "brew install postgresql" in message
    assert "pip install 'pgflow-py[embedded]'" in message
    assert "DATABASE_URL" in message


def _require_pgserver() -> Path:
    bindir = pgserver_bindir()
    if bindir is None:
        pytest.skip("pgserver is not installed (pip install 'pgflow-py[embedded]')")
    return bindir


def test_without_system_binaries_pgserver_is_the_fallback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bindir = _require_pgserver()
    _no_system_binaries(monkeypatch, tmp_path)
    assert find_bindir() == bindir


def test_pgserver_binaries_run_pgflow(tmp_path: Path) -> None:
    bindir = _require_pgserver()
    target = scratch_folder("pgflow-embedded-pgserver-")
    try:
        with EmbeddedPostgres(target, bindir=bindir) as server:
            assert server.source == "pgserver"
            assert server.version.startswith("16")
            report = migrate(server.dsn())
            assert report.pgmq == "extension"
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                conn.execute("select pgflow.create_flow('embedded_probe')")
                conn.execute("select pgflow.add_step('embedded_probe', 'only')")
                conn.execute("select pgflow.start_flow('embedded_probe', '{}'::jsonb)")
        assert leftovers(target) == []
    finally:
        kill_server(target)
        shutil.rmtree(target, ignore_errors=True)

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

from pgflow_worker._database import migrate
from pgflow_worker._tools import EmbeddedPostgres, find_bindir, pgserver_bindir
from pgflow_worker._tools import cluster as cluster_module
from pgflow_worker._tools.embedded import default_directory, server_processes
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
    with pytest.raises(PostgresStartError, match=r"created by PostgreSQL 9, but") as caught:
        EmbeddedPostgres(folder).start()
    assert caught.value.cluster_at_fault
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
from pgflow_worker._tools import EmbeddedPostgres
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
    assert default_directory(16) == tmp_path / "mine"
    monkeypatch.delenv("PGFLOW_DEMO_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/pgflow-cache-probe")
    assert default_directory(16) == Path("/tmp/pgflow-cache-probe/pgflow-py/demo-pg16")
    assert default_directory(15) == Path("/tmp/pgflow-cache-probe/pgflow-py/demo-pg15")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_CACHE_HOME", str(private / "cache"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    # As root the server runs as another OS user, which cannot enter a private folder.
    assert default_directory(16) == Path("/var/lib/pgflow-py/demo-pg16")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_directory(16) == private / "cache" / "pgflow-py" / "demo-pg16"


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


# -- choosing binaries whose server can have pgmq as an extension ----------------------------

_CHOOSE = r"""
import json, sys
from pathlib import Path
from pgflow_worker._tools import choose_bindir, pgmq_extension_possible

work = Path(sys.argv[1])

def install(name, *, writable, with_pgmq):
    bindir = work / name / "bin"
    extension_dir = work / name / "share" / "postgresql" / "extension"
    bindir.mkdir(parents=True)
    extension_dir.mkdir(parents=True)
    if with_pgmq:
        (extension_dir / "pgmq.control").write_text("default_version = '1.13.0'\n")
    if not writable:
        extension_dir.chmod(0o555)
    return bindir

locked = install("locked", writable=False, with_pgmq=False)
locked_with_pgmq = install("locked_with_pgmq", writable=False, with_pgmq=True)
open_ = install("open", writable=True, with_pgmq=False)
other_locked = install("other_locked", writable=False, with_pgmq=False)
print(json.dumps({
    "possible": {p.parent.name: pgmq_extension_possible(p)
                 for p in (locked, locked_with_pgmq, open_, other_locked)},
    "fallback": choose_bindir([locked, open_]).parent.name,
    "has_pgmq": choose_bindir([locked_with_pgmq, open_]).parent.name,
    "writable_first": choose_bindir([open_, locked_with_pgmq]).parent.name,
    "none_can": choose_bindir([locked, other_locked]).parent.name,
}))
"""

_STACK = r"""
import json, os, shutil, sys
from pathlib import Path

work, site = Path(sys.argv[1]), Path(sys.argv[2])
# The official SQL as this user's own cache holds it once fetched (npm is not on its PATH).
if len(sys.argv) > 3:
    os.environ["TMPDIR"] = str(work)
    from tests._cache import user_cache
    fetched = Path(sys.argv[3])
    shutil.copytree(fetched, user_cache("npm-cache") / fetched.parent.name / "package")
# The pgserver package as this user's own install (as in its own virtualenv): writable. Its
# binaries find their libraries in the pgserver.libs folder beside the package.
package = work / "site" / "pgserver"
package.mkdir(parents=True)
(package / "__init__.py").write_text("")
shutil.copytree(site / "pgserver" / "pginstall", package / "pginstall", symlinks=True)
if (site / "pgserver.libs").is_dir():
    shutil.copytree(site / "pgserver.libs", work / "site" / "pgserver.libs", symlinks=True)
sys.path.insert(0, str(work / "site"))
# The machine's PostgreSQL as a non-root user sees it: an extension folder it cannot write,
# without pgmq. (Not runnable: the fallback must not run it.)
debian = work / "debian"
for tool in ("initdb", "pg_ctl", "postgres"):
    (debian / "15" / "bin").mkdir(parents=True, exist_ok=True)
    (debian / "15" / "bin" / tool).write_text("")
(debian / "15" / "share" / "postgresql" / "extension").mkdir(parents=True)
(debian / "15" / "share" / "postgresql" / "extension").chmod(0o555)
os.environ["PATH"] = str(work)  # no pg_config on PATH
for name in ("PGFLOW_PG_BINDIR", "DATABASE_URL"):
    os.environ.pop(name, None)

import psycopg
from pgflow_worker._tools import cluster
cluster.SYSTEM_PG_ROOT = debian

from tests._stack import Stack, TemplateUnavailable

stack = Stack()
result = {"uid": os.geteuid(), "bindir": str(stack._server.bindir),
          "missing": stack.pgmq_extension_missing()}
try:
    for kind in ("ours", "official"):
        try:
            name = stack.clone(kind)
        except TemplateUnavailable as exc:
            result[kind] = f"unavailable: {exc}"
            continue
        with psycopg.connect(stack.url(name)) as conn:
            row = conn.execute("select extversion from pg_extension where extname = 'pgmq'")
            result[kind] = (row.fetchone() or ["no pgmq extension"])[0]
finally:
    stack.close()
print(json.dumps(result))
"""


def _reachable_by(user: str, path: Path) -> bool:
    """Whether ``user`` (not root) can reach ``path``: every folder above it is searchable by
    others, and the path itself readable (and executable, for a file that is a program)."""
    for parent in path.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            return False
    return bool(path.resolve().stat().st_mode & 0o004)


def _non_root_python() -> tuple[list[str], str | None]:
    """How to run Python as a non-root user, and as whom: this interpreter as ourselves when
    not root; as root, ``runuser -u nobody`` with an interpreter of this version that nobody
    can reach. Skips, saying why, when there is none."""
    if os.geteuid() != 0:
        return [sys.executable], None
    import pwd

    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no 'nobody' user to run the check as")
    if shutil.which("runuser") is None:
        pytest.skip("running as root and runuser is not installed")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        Path(sys.executable),
        Path("/usr/bin") / version,
        Path("/usr/local/bin") / version,
    ]
    for candidate in candidates:
        if candidate.exists() and _reachable_by("nobody", candidate):
            return ["runuser", "-u", "nobody", "--", str(candidate.resolve())], "nobody"
    pytest.skip(f"no {version} interpreter that the 'nobody' user can run")


def _run_as_non_root(script: str, *args: str) -> dict[str, object]:
    """Run ``script`` as a non-root user with this checkout and its dependencies importable;
    returns the JSON it prints last. Its first argument is a scratch folder it owns."""
    import json
    import sysconfig

    command, user = _non_root_python()
    paths = [ROOT, *{Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}]
    if user is not None:
        unreachable = [str(p) for p in paths if not _reachable_by(user, p)]
        if unreachable:
            pytest.skip(f"the '{user}' user cannot reach {', '.join(unreachable)}")
    work = scratch_folder("pgflow-non-root-")
    try:
        if user is not None:
            shutil.chown(work, user=user)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join(str(p) for p in paths),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        result = subprocess.run(
            [*command, "-c", script, str(work), *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    finally:
        for folder, _, _ in os.walk(work):
            with contextlib.suppress(OSError):
                Path(folder).chmod(0o755)
        shutil.rmtree(work, ignore_errors=True)


def test_binaries_are_chosen_by_whether_pgmq_can_be_an_extension() -> None:
    """Run as a non-root user on real folders: an extension folder it cannot write and without
    pgmq rules a server out; one holding pgmq's control file, or writable, does not. The
    first candidate that can have pgmq wins, and the first one when none can."""
    got = _run_as_non_root(_CHOOSE)
    assert got == {
        "possible": {
            "locked": False,
            "locked_with_pgmq": True,
            "open": True,
            "other_locked": False,
        },
        "fallback": "open",
        "has_pgmq": "locked_with_pgmq",
        "writable_first": "open",
        "none_can": "locked",
    }


def test_a_non_root_test_stack_falls_back_to_pgserver_for_pgmq() -> None:
    """The test suite's stack, started for real by a non-root user whose machine's PostgreSQL
    has an extension folder without pgmq that it cannot write: it runs the pgserver binaries
    (its own copy, as in its own virtualenv) instead, and both template databases get pgmq as
    a real extension, so the official SQL installs too."""
    bindir = _require_pgserver()
    from tests._stack import TemplateUnavailable, official_migrations

    handed = scratch_folder("pgflow-official-")
    try:
        # Fetched by this process, handed to the user as its own cache would hold it.
        package = official_migrations()[0].parents[3]
        copy = handed / package.parent.name / "package"
        shutil.copytree(package, copy)
        for folder, _, _ in os.walk(handed):
            Path(folder).chmod(0o755)
        official: str | None = None
        extra = [str(copy)]
    except TemplateUnavailable as exc:
        official = f"unavailable: {exc}"
        extra = []
    try:
        got = _run_as_non_root(_STACK, str(bindir.parents[2]), *extra)
    finally:
        shutil.rmtree(handed, ignore_errors=True)
    assert got["uid"] != 0
    assert str(got["bindir"]).endswith("/site/pgserver/pginstall/bin"), got
    assert got["missing"] is None
    assert got["ours"] == "1.13.0", got
    if official is None:
        assert got["official"] == "1.13.0", got


# -- default folders: one per major version, the next one when in use -----------------------


@pytest.fixture
def cache_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``XDG_CACHE_HOME`` in a folder every user can enter, so that as root the default
    folders stay there (and never reach the machine's /var/lib/pgflow-py)."""
    folder = scratch_folder("pgflow-cache-")
    folder.chmod(0o755)
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    monkeypatch.delenv("PGFLOW_DEMO_DIR", raising=False)
    yield folder
    kill_servers_below(folder)
    shutil.rmtree(folder, ignore_errors=True)


def kill_servers_below(folder: Path) -> None:
    for data in folder.rglob("data"):
        for pid in server_processes(data):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_second_server_takes_the_next_default_folder(cache_home: Path) -> None:
    """Two demos at once: the second gets a server of its own instead of an error."""
    try:
        find_bindir()
    except PostgresNotFound as exc:
        pytest.skip(f"no PostgreSQL binaries to run a server with: {exc}")
    with EmbeddedPostgres() as first, EmbeddedPostgres() as second:
        major = first.version.split(".")[0]
        assert first.directory == cache_home / "pgflow-py" / f"demo-pg{major}"
        assert second.directory == cache_home / "pgflow-py" / f"demo-pg{major}-2"
        assert first.dsn() != second.dsn()
        for server in (first, second):
            with psycopg.connect(server.dsn()) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
    assert leftovers(first.directory) == []
    assert leftovers(second.directory) == []


def test_when_every_default_folder_is_in_use_the_error_says_so(cache_home: Path) -> None:
    from pgflow_worker._tools.embedded import _OwnerLock
    from pgflow_worker.errors import ServerFolderInUse

    try:
        find_bindir()
    except PostgresNotFound as exc:
        pytest.skip(f"no PostgreSQL binaries to run a server with: {exc}")
    probe = EmbeddedPostgres()
    first = probe.directory
    held = []
    for slot in [first, *(Path(f"{first}-{n}") for n in range(2, 6))]:
        slot.mkdir(parents=True)
        lock = _OwnerLock(slot / "owner.lock")
        lock.acquire()
        held.append(lock)
    try:
        with pytest.raises(ServerFolderInUse, match=r"folders \(.*\) are all in use") as caught:
            probe.start()
        assert caught.value.holder == os.getpid()
        assert not caught.value.cluster_at_fault
    finally:
        for lock in held:
            lock.release()


def test_other_binaries_get_a_default_folder_of_their_own(cache_home: Path) -> None:
    """The machine's PostgreSQL and pgserver's (another major version) each keep a cluster:
    switching between them never meets a cluster the binaries cannot read."""
    bundled = _require_pgserver()
    try:
        system = find_bindir()
    except PostgresNotFound as exc:
        pytest.skip(f"no machine binaries besides pgserver's: {exc}")
    with EmbeddedPostgres(bindir=system) as one:
        pass
    with EmbeddedPostgres(bindir=bundled) as other:
        pass
    if one.version.split(".")[0] == other.version.split(".")[0]:
        pytest.skip("the machine's PostgreSQL is pgserver's major version")
    assert one.directory != other.directory
    with EmbeddedPostgres(bindir=system) as again:
        assert again.directory == one.directory
        assert again.reused

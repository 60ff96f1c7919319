"""``pgflow db``: a server that outlives the command that started it, through the real command
line: start, status, url, stop, their exit codes, a remembered port, and a running server that
nothing else stops; as this user and as a plain user."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgflow_worker._tools import EmbeddedPostgres, find_bindir
from pgflow_worker._tools.embedded import server_processes
from pgflow_worker.errors import PostgresNotFound, PostgresStartError

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("dbdriver.py")
MIGRATIONS = len(list((ROOT / "sql" / "migrations").glob("*.sql")))
URL = re.compile(r"postgresql://postgres@127\.0\.0\.1:(\d+)/postgres")

pytestmark = pytest.mark.skipif(
    not Path("/proc/self").is_dir(), reason="checks for server processes through /proc"
)


def require_server_binaries() -> None:
    try:
        find_bindir()
    except PostgresNotFound as exc:
        pytest.skip(f"no PostgreSQL server can start here: {exc}")


def pgflow_db(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgflow_worker", "db", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def kill_servers(folder: Path) -> None:
    """Stop what a failed test left running in ``folder`` (every data folder below it)."""
    for data in folder.rglob("data"):
        for pid in server_processes(data):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def folder() -> Iterator[Path]:
    """An empty folder for the server, which the OS user running it (as root: not root) can
    reach; pytest's own folders are private to root."""
    require_server_binaries()
    path = Path(tempfile.mkdtemp(prefix="pgflow-db-", dir="/tmp"))
    yield path
    pgflow_db("stop", "--dir", str(path))
    kill_servers(path)
    shutil.rmtree(path, ignore_errors=True)


def assert_lifecycle(seen: dict[str, Any]) -> str:
    """What dbdriver.py saw is what ``pgflow db`` promises; returns the URL."""
    assert seen["stopped_status"]["rc"] == 3, seen["stopped_status"]
    assert seen["stopped_status"]["out"].startswith("not running")
    start = seen["start"]
    assert start["rc"] == 0, start
    url = start["out"]
    assert URL.fullmatch(url), start
    assert "started (created)" in start["err"]
    status = seen["status"]
    assert status["rc"] == 0, status
    lines = status["out"].splitlines()
    assert lines[0] == f"running: {url}"
    assert lines[1].startswith("folder: /")
    assert re.match(r"binaries: PostgreSQL \d+[.\d]* \((system|pgserver)\) in /", lines[2]), lines
    assert seen["url"] == {"rc": 0, "out": url, "err": ""}
    database = seen["database"]
    assert database["pgmq_send"] is True
    assert database["migrations"] == MIGRATIONS
    again = seen["start_again"]
    assert again["rc"] == 0, again
    assert again["out"] == url
    assert "already running" in again["err"]
    assert seen["stop"]["rc"] == 0
    assert "stopped the server" in seen["stop"]["err"]
    assert seen["status_after_stop"]["rc"] == 3
    assert seen["status_after_stop"]["out"].startswith("not running")
    refused = seen["url_after_stop"]
    assert refused["rc"] == 1, refused
    assert refused["out"] == ""
    assert "no server is running" in refused["err"]
    assert "pgflow db start" in refused["err"]
    assert seen["stop_again"]["rc"] == 0
    assert "no server is running" in seen["stop_again"]["err"]
    restart = seen["restart"]
    assert restart["rc"] == 0, restart
    assert restart["out"] == url  # the port is remembered
    assert "started (reused)" in restart["err"]
    assert seen["final_stop"]["rc"] == 0
    return str(url)


def run_driver(command: list[str], *args: str, env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [*command, str(DRIVER), *args],
        cwd=env.get("HOME", str(ROOT)),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_start_status_url_stop_through_the_command_line(folder: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DATABASE_URL", None)
    seen = run_driver([sys.executable], "--dir", str(folder), env=env)
    assert_lifecycle(seen)
    assert json.loads((folder / "pgflow-db.json").read_text())["port"] == int(
        URL.fullmatch(seen["start"]["out"]).group(1)  # type: ignore[union-attr]
    )
    assert server_processes(folder / "data") == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postmaster(folder: Path) -> int:
    return int((folder / "data" / "postmaster.pid").read_text().split()[0])


def test_a_running_server_is_kept_by_every_later_command(folder: Path) -> None:
    """Nothing but 'pgflow db stop' stops it: not another start (with or without the same
    port), not a demo pointed at its folder, not the command that started it exiting."""
    port = free_port()
    first = pgflow_db("start", "--dir", str(folder), "--port", str(port))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"postgresql://postgres@127.0.0.1:{port}/postgres"
    pid = postmaster(folder)
    assert pid in server_processes(folder / "data")

    again = pgflow_db("start", "--dir", str(folder), "--port", str(port))
    assert again.returncode == 0
    assert "already running" in again.stderr
    moved = pgflow_db("start", "--dir", str(folder), "--port", str(free_port()))
    assert moved.returncode == 1
    assert f"already runs on port {port}; stop it first" in moved.stderr
    with pytest.raises(PostgresStartError, match="holds the server of 'pgflow db'"):
        EmbeddedPostgres(folder).start()
    assert postmaster(folder) == pid
    assert pid in server_processes(folder / "data")

    assert pgflow_db("stop", "--dir", str(folder)).returncode == 0
    assert server_processes(folder / "data") == []
    assert not (folder / "owner.lock").exists()


def test_a_port_in_use_is_refused_clearly(folder: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = pgflow_db("start", "--dir", str(folder), "--port", str(port))
    assert result.returncode == 1
    assert "PostgreSQL did not start" in result.stderr
    assert "pgflow demo --reset" not in result.stderr
    assert "the cluster's data is what fails" not in result.stderr
    assert server_processes(folder / "data") == []


def test_a_remembered_port_taken_meanwhile_gives_way_to_a_free_one(folder: Path) -> None:
    first = pgflow_db("start", "--dir", str(folder))
    assert first.returncode == 0, first.stderr
    port = int(URL.fullmatch(first.stdout.strip()).group(1))  # type: ignore[union-attr]
    assert pgflow_db("stop", "--dir", str(folder)).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        second = pgflow_db("start", "--dir", str(folder))
    assert second.returncode == 0, second.stderr
    assert URL.fullmatch(second.stdout.strip())
    assert second.stdout.strip() != first.stdout.strip()


def test_a_cluster_of_another_major_version_is_explained(folder: Path) -> None:
    assert pgflow_db("start", "--dir", str(folder)).returncode == 0
    assert pgflow_db("stop", "--dir", str(folder)).returncode == 0
    (folder / "data" / "PG_VERSION").write_text("9\n")
    result = pgflow_db("start", "--dir", str(folder))
    assert result.returncode == 1
    assert "was created by PostgreSQL 9, but" in result.stderr
    assert "move the folder away to start afresh" in result.stderr
    assert "pgflow demo --reset" not in result.stderr


def test_a_plain_user_runs_it_in_its_own_default_folder() -> None:
    """As a user other than root (``nobody`` when the tests run as root), with a home of its
    own and no ``--dir``: the server lives under ``~/.local/share/pgflow-py/db``."""
    require_server_binaries()
    from tests.worker.test_embedded import _non_root_python, _reachable_by

    command, user = _non_root_python()
    import sysconfig

    paths = [ROOT, *{Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}]
    if user is not None:
        unreachable = [str(p) for p in [*paths, DRIVER] if not _reachable_by(user, p)]
        if unreachable:
            pytest.skip(f"the '{user}' user cannot reach {', '.join(unreachable)}")
    home = Path(tempfile.mkdtemp(prefix="pgflow-db-home-", dir="/tmp"))
    try:
        if user is not None:
            shutil.chown(home, user=user)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join(str(p) for p in paths),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if user is not None:  # runuser sets HOME to the user's own (/nonexistent for nobody)
            command = [*command[:-1], "env", f"HOME={home}", command[-1]]
        seen = run_driver(command, env=env)
        assert seen["uid"] != 0
        assert_lifecycle(seen)
        assert f"folder: {home}/.local/share/pgflow-py/db" in seen["status"]["out"]
        assert seen["database"]["data_owner"] == seen["uid"]
    finally:
        kill_servers(home)
        shutil.rmtree(home, ignore_errors=True)


def test_two_starts_at_once_share_one_server(folder: Path) -> None:
    starts = [
        subprocess.Popen(
            [sys.executable, "-m", "pgflow_worker", "db", "start", "--dir", str(folder)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [process.communicate(timeout=120) for process in starts]
    assert [process.returncode for process in starts] == [0, 0], results
    urls = {out.strip() for out, _ in results}
    assert len(urls) == 1
    assert URL.fullmatch(urls.pop())
    said = sorted("already running" in err for _, err in results)
    assert said == [False, True], results
    assert len([pid for pid in server_processes(folder / "data") if pid == postmaster(folder)]) == 1

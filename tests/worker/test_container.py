"""Root in a ``python`` container: no system PostgreSQL, no ``postgres`` OS user, the checkout
and its virtualenv under a private home. The setting is rebuilt in a mount namespace of each
test's own (``unshare --mount``): an empty folder hides ``/usr/lib/postgresql``, a copy of
``/etc/passwd`` without ``postgres`` hides that user, the checkout and the virtualenv are
mounted inside a folder of mode 700, and an empty ``/var/lib`` stands for the container's. The
demo, ``pgflow db`` and the test suite's own servers then run on pgserver's binaries, as
``nobody``, with no manual step."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgflow_worker._tools import pgserver_bindir
from tests.worker.test_db import DRIVER, assert_lifecycle

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PG = Path("/usr/lib/postgresql")


def _unavailable() -> str | None:
    if not Path("/proc/self/ns/mnt").exists():
        return "needs Linux mount namespaces"
    if os.geteuid() != 0:
        return "reproduces root in a container: needs root"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"unshare --mount is not permitted here: {probe.stderr.decode().strip()}"
    if pgserver_bindir() is None:
        return "pgserver is not installed (its wheels exist for CPython 3.11/3.12 on x86-64)"
    if sys.prefix == sys.base_prefix:
        return "the tests do not run in a virtualenv, which the setting needs"
    return None


pytestmark = pytest.mark.skipif(
    (reason := _unavailable()) is not None, reason=reason or "available"
)


@dataclass
class Container:
    """A scratch folder holding what the namespace mounts, and the paths seen inside."""

    scratch: Path
    home: Path  # the private folder (mode 700) holding the checkout and the virtualenv

    @property
    def python(self) -> str:
        return str(self.home / "venv" / "bin" / Path(sys.executable).name)

    @property
    def checkout(self) -> Path:
        return self.home / "app"

    def run(
        self, *command: str, timeout: float = 300, postgres_user: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` as root in a fresh namespace set up as the container (with the
        machine's ``postgres`` OS user when ``postgres_user``, as if created since)."""
        empty, passwd, var_lib = (self.scratch / n for n in ("empty", "passwd", "var-lib"))
        mounts = [
            *([f"mount --bind {empty} {SYSTEM_PG}"] if SYSTEM_PG.is_dir() else []),
            *([] if postgres_user else [f"mount --bind {passwd} /etc/passwd"]),
            f"mount --bind {var_lib} /var/lib",
            f"mount --bind {sys.prefix} {self.home / 'venv'}",
            f"mount --bind {ROOT} {self.checkout}",
        ]
        script = "set -e\n" + "\n".join(mounts) + f'\ncd {self.checkout}\nexec "$@"\n'
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        return subprocess.run(
            ["unshare", "--mount", "--", "bash", "-c", script, "bash", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _kill_leftovers(scratch: Path) -> None:
    """Kill server processes a failed test left in its namespace (their binaries are in the
    scratch folder's copy, which is how they are recognised from outside)."""
    ours = os.readlink("/proc/self/ns/mnt")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "mnt") == ours:
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"/var/lib/pgflow-py/" in cmdline or str(scratch).encode() in cmdline:
            os.kill(int(entry.name), signal.SIGKILL)


@pytest.fixture
def container() -> Iterator[Container]:
    scratch = Path(tempfile.mkdtemp(prefix="pgflow-container-", dir="/tmp"))
    scratch.chmod(0o755)  # only the home is private, as /root is
    home = scratch / "root"
    for folder in (scratch / "empty", scratch / "var-lib", home / "venv", home / "app"):
        folder.mkdir(parents=True)
    home.chmod(0o700)
    passwd = Path("/etc/passwd").read_text().splitlines(keepends=True)
    (scratch / "passwd").write_text("".join(x for x in passwd if not x.startswith("postgres:")))
    try:
        yield Container(scratch, home)
    finally:
        _kill_leftovers(scratch)
        shutil.rmtree(scratch, ignore_errors=True)


def test_the_setting_is_what_it_claims(container: Container) -> None:
    """Inside: no postgres user, no system binaries, the checkout's pgserver under mode 700."""
    probe = (
        "import json, os, pwd, stat\n"
        "from pgflow_worker._tools import find_bindir\n"
        "names = {p.pw_name for p in pwd.getpwall()}\n"
        "b = find_bindir()\n"
        "print(json.dumps({'postgres': 'postgres' in names, 'nobody': 'nobody' in names,\n"
        "  'system': os.listdir('/usr/lib/postgresql') if os.path.isdir('/usr/lib/postgresql')"
        " else [],\n"
        "  'bindir': str(b), 'private': [str(p) for p in b.parents"
        " if not os.stat(p).st_mode & stat.S_IXOTH]}))\n"
    )
    result = container.run(container.python, "-c", probe)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["postgres"] is False
    assert seen["nobody"] is True
    assert seen["system"] == []
    assert seen["bindir"].startswith(f"{container.home}/venv/")
    assert seen["bindir"].endswith("/pgserver/pginstall/bin")
    assert seen["private"] == [str(container.home)]


def test_the_demo_runs_as_root_with_nothing_set_up(container: Container) -> None:
    extension = "/var/lib/pgflow-py/binaries/*/pgserver/pginstall/share/postgresql/extension"
    listing = f"ls -ln /var/lib/pgflow-py {extension}"
    result = container.run(
        "bash",
        "-c",
        f'"$0" -m pgflow_worker demo --no-live --runs 1 && {listing}',
        container.python,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first = result.stdout.splitlines()[0]
    assert re.match(
        r"pgflow demo · PostgreSQL 16[.\d]* \(pgserver binaries\) in "
        r"/var/lib/pgflow-py/demo-pg16: created, started in",
        first,
    ), first
    assert "2 runs, 10 tasks (1 retried)" in result.stdout
    assert "pgflow demo --reset" not in result.stdout + result.stderr
    # The folder went to 'nobody' (uid 65534), the binaries' copy (with pgmq) stayed root's.
    assert re.search(r"^d\S+ +\d+ 65534 +\d+ .* demo-pg16$", result.stdout, re.M), result.stdout
    assert re.search(r"^d\S+ +\d+ +0 +0 .* binaries$", result.stdout, re.M)
    assert re.search(r"^-rw-r--r-- +\d+ +0 +0 .* pgmq\.control$", result.stdout, re.M)


def test_pgflow_db_runs_as_root_with_nothing_set_up(container: Container) -> None:
    result = container.run(container.python, str(DRIVER))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["uid"] == 0
    assert_lifecycle(seen)
    status = seen["status"]["out"]
    assert "folder: /var/lib/pgflow-py/db" in status
    assert re.search(
        r"binaries: PostgreSQL 16[.\d]* \(pgserver\) in " + re.escape(str(container.home)), status
    ), status
    assert seen["database"]["pgmq_extension"] == "1.13.0"
    assert seen["database"]["data_owner"] == 65534  # nobody


def test_the_suites_own_server_tests_pass_there(container: Container) -> None:
    """The two tests that a fresh clone under a private folder used to fail, and tests on the
    suite's own server (both templates: pgflow-py's SQL and the official one, which needs pgmq
    as a real extension)."""
    result = container.run(
        container.python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/worker/test_embedded.py::test_pgserver_binaries_run_pgflow",
        "tests/worker/test_demo.py::test_without_system_binaries_the_demo_runs_on_pgserver",
        "tests/worker/test_cli.py::test_migrate_installs_everything_then_is_a_no_op",
        "tests/worker/test_cli.py::test_start_unknown_flow_lists_the_existing_ones",
        "tests/interop/test_official_sql.py::test_same_flows_end_the_same_on_both_sqls",
        "-rs",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\b\d+ passed", result.stdout), result.stdout[-2000:]
    # Only the official SQL may be missing (npm unreachable); nothing else skips.
    for skipped in re.findall(r"^SKIPPED .*$", result.stdout, re.M):
        assert "official pgflow SQL unavailable: npm" in skipped, skipped


def test_the_demo_keeps_its_server_once_a_postgres_user_exists(container: Container) -> None:
    """The cluster made as 'nobody' changes hands when a 'postgres' user appears later."""
    import pwd

    try:
        postgres = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        pytest.skip("the machine has no 'postgres' OS user to add to the container")
    demo = (container.python, "-m", "pgflow_worker", "demo", "--no-live", "--runs", "1")
    first = container.run(*demo)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert ": created, started in" in first.stdout
    second = container.run(
        "bash",
        "-c",
        '"$@" && stat -c %u /var/lib/pgflow-py/demo-pg16/data',
        "demo",
        *demo,
        postgres_user=True,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert ": reused, started in" in second.stdout
    assert second.stdout.splitlines()[-1] == str(postgres)

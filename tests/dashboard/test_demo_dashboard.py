"""``pgflow demo --dashboard``: the dashboard on the demo's database, during its runs and after."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import httpx
import psycopg


def test_the_demo_opens_its_runs_in_the_dashboard(db_url: str) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgflow_worker",
            "demo",
            "--runs",
            "1",
            "--no-live",
            "--db",
            db_url,
            "--dashboard",
            "--dashboard-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stderr is not None
        seen: list[str] = []

        def read_until(text: str) -> str:
            for line in child.stderr or ():
                seen.append(line)
                if text in line:
                    return line
            raise AssertionError(f"no {text!r} in:\n{''.join(seen)}")

        # The pages answer while the demo is still running, then show its finished runs.
        found = re.search(
            r"(http://127\.0\.0\.1:\d+/runs)", read_until("the demo's runs in the dashboard")
        )
        assert found is not None, seen[-1]
        assert httpx.get(found.group(1), timeout=30).status_code == 200
        read_until("the runs are done")
        page = httpx.get(found.group(1), timeout=30)
        assert page.status_code == 200
        flows = re.findall(r'<td><a href="/runs\?flow=(\w+)">', page.text)
        assert sorted(flows) == ["crawl_site", "greet_user"]
        assert page.text.count('class="badge status-completed"') == 2
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 128 + signal.SIGINT
        assert "greet_user" in out
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


def test_a_taken_dashboard_port_stops_the_demo_before_any_run(db_url: str) -> None:
    def demo_runs() -> int:
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "select count(*) from pgflow.runs where flow_slug in ('greet_user', 'crawl_site')"
            ).fetchone()
        return int(row[0]) if row else 0

    before = demo_runs() if _migrated(db_url) else 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        demo = ["demo", "--runs", "1", "--no-live", "--db", db_url, "--dashboard"]
        done = subprocess.run(
            [sys.executable, "-m", "pgflow_worker", *demo, "--dashboard-port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert demo_runs() == before


def _migrated(db_url: str) -> bool:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("select to_regclass('pgflow.runs') is not null").fetchone()
    return bool(row and row[0])

"""``pgflow demo --dashboard``: the demo's runs, then the dashboard on its database."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx


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
        seen = []
        for line in child.stderr:
            seen.append(line)
            if "the demo's runs in the dashboard:" in line:
                break
        else:
            raise AssertionError("".join(seen))
        found = re.search(r"(http://127\.0\.0\.1:\d+/runs)", seen[-1])
        assert found is not None, seen[-1]
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

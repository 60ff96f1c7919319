"""``pgflow dashboard`` as users start it, the optional extra, the token and the Host check."""

from __future__ import annotations

import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from pgflow_worker._tools.cli import app
from pgflow_worker._tools.dashboard import create_app
from pgflow_worker._tools.dashboard._security import LOOPBACK_HOSTS
from tests.worker.test_cli import runner

ROOT = Path(__file__).resolve().parents[2]
CORE = [
    "psycopg[binary]>=3.2",
    "psycopg-pool>=3.2",
    "pydantic>=2.6",
    "typer>=0.12",
    "rich>=13",
    "pgmq==1.1.4",
    "orjson>=3.9",
]


def test_the_dashboard_is_an_extra_and_the_core_install_does_not_grow() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["dependencies"] == CORE
    extra = {d.split(">=")[0] for d in project["optional-dependencies"]["dashboard"]}
    assert extra == {"starlette", "uvicorn", "jinja2"}


def test_without_the_extra_the_command_names_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(sys.modules):
        if name.startswith("pgflow_worker._tools.dashboard"):
            monkeypatch.delitem(sys.modules, name)
    for name in list(sys.modules):  # as if Starlette were not installed
        if name == "starlette" or name.startswith("starlette."):
            monkeypatch.setitem(sys.modules, name, None)
    result = runner.invoke(app, ["dashboard", "--db", db_url])
    assert result.exit_code == 1
    assert "pip install 'pgflow-py[dashboard]'" in result.output
    assert "missing: starlette" in result.output


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_listening_beyond_loopback_needs_a_token(db_url: str, host: str) -> None:
    result = runner.invoke(app, ["dashboard", "--host", host, "--db", db_url])
    assert result.exit_code == 2
    assert f"binding to {host} makes the dashboard reachable from other machines" in (result.output)
    assert "--token" in result.output
    empty = runner.invoke(app, ["dashboard", "--host", host, "--token", " ", "--db", db_url])
    assert empty.exit_code == 2
    assert "--token is empty" in empty.output


def test_the_command_serves_on_loopback_and_stops_on_ctrl_c(db_url: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "pgflow_worker", "dashboard", "--port", "0", "--db", db_url],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stderr is not None
        seen = []
        for line in child.stderr:
            seen.append(line)
            if line.startswith("pgflow dashboard on "):
                break
        else:
            raise AssertionError("".join(seen))
        url = line.split()[3]
        assert url.startswith("http://127.0.0.1:"), line
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200
        assert "<h1>Flows</h1>" in page.text
        rebound = httpx.get(url, headers={"Host": "attacker.example"}, timeout=30)
        assert rebound.status_code == 421
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 128 + signal.SIGINT
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_token_guards_every_request(db_url: str) -> None:
    with TestClient(create_app(db_url, token="s3cret-token")) as client:
        for path in ["/", "/runs", "/static/dashboard.css", "/runs/x", "/nowhere"]:
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert "needs its token" in refused.text
        assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/?token=wrong").status_code == 401
        assert client.get("/", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200

        adopted = client.get("/runs?status=failed&token=s3cret-token", follow_redirects=False)
        assert adopted.status_code == 303
        assert adopted.headers["location"] == "/runs?status=failed"
        cookie = adopted.headers["set-cookie"]
        assert "pgflow_token=s3cret-token" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert adopted.headers["referrer-policy"] == "same-origin"
        assert client.get("/runs?status=failed").status_code == 200  # the cookie now
        assert client.get("/static/live.js").status_code == 200


def test_a_loopback_bind_answers_only_loopback_names(db_url: str) -> None:
    app_ = create_app(db_url, allowed_hosts=LOOPBACK_HOSTS)
    for base, status in [
        ("http://127.0.0.1:8765", 200),
        ("http://localhost:8765", 200),
        ("http://[::1]:8765", 200),
        ("http://rebound.example:8765", 421),
    ]:
        with TestClient(app_, base_url=base) as client:
            assert client.get("/").status_code == status, base


def test_templates_and_static_files_ship_in_the_package() -> None:
    from importlib.resources import files

    package = files("pgflow_worker._tools.dashboard")
    assert {"base.html", "run.html", "runs.html", "index.html", "_run_body.html"} <= {
        p.name for p in package.joinpath("templates").iterdir()
    }
    assert {"dashboard.css", "live.js"} <= {p.name for p in package.joinpath("static").iterdir()}

"""The grants docs/dashboard.md gives a dashboard role are enough for every page and button."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from starlette.testclient import TestClient

from pgflow_worker._tools.dashboard import create_app
from tests.dashboard.conftest import define, run_to_end, start
from tests.dashboard.flows import hostile, shapes
from tests.docs.snippets import DOCS, parse

PASSWORD = "dashboard-test"


def documented_grants() -> str:
    page = parse(DOCS / "dashboard.md")
    blocks = [
        b for b in page.blocks if b.language == "sql" and "test_dashboard_grants.py" in b.args
    ]
    assert len(blocks) == 1, "docs/dashboard.md should hold one grants block checked here"
    return blocks[0].code


@pytest.fixture
def dashboard_role(db_url: str) -> Iterator[str]:
    role = f"dash_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create role {} login password {}").format(
                sql.Identifier(role), sql.Literal(PASSWORD)
            )
        )
        conn.execute(documented_grants().replace("pgflow_dashboard", role).encode())
        try:
            yield make_conninfo(db_url, user=role, password=PASSWORD)
        finally:
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


async def test_a_role_with_the_documented_grants_uses_every_page(
    db_url: str, dashboard_role: str
) -> None:
    await define(db_url, shapes(), hostile())
    finished = await run_to_end(db_url, shapes(), {"n": 2, "flagged": True})
    failed = await run_to_end(db_url, hostile(), {})
    started = await start(db_url, "dash_shapes", {"n": 1})
    same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    with TestClient(create_app(dashboard_role)) as client:
        for path in ["/", "/runs", "/runs?status=failed", f"/runs/{finished}", f"/runs/{failed}"]:
            page = client.get(path)
            assert page.status_code == 200, (path, page.text[-2000:])
        assert "Live updates are off" not in client.get(f"/runs/{started}").text
        with client.stream("GET", f"/runs/{finished}/events") as events:
            assert "event: update" in "".join(events.iter_text())
        token = client.cookies["pgflow_csrf"]
        cancelled = client.post(
            f"/runs/{started}/cancel", data={"csrf": token}, headers=same, follow_redirects=False
        )
        assert cancelled.status_code == 303, cancelled.text
        retried = client.post(
            f"/runs/{failed}/retry", data={"csrf": token}, headers=same, follow_redirects=False
        )
        assert retried.status_code == 303, retried.text


async def test_without_a_table_grant_the_page_names_what_was_refused(
    db_url: str, dashboard_role: str
) -> None:
    await define(db_url, shapes())
    finished = await run_to_end(db_url, shapes(), {"n": 1})
    role = psycopg.conninfo.conninfo_to_dict(dashboard_role)["user"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("revoke select on pgflow.step_tasks from {}").format(sql.Identifier(str(role)))
        )
    with TestClient(create_app(dashboard_role)) as client:
        page = client.get(f"/runs/{finished}")
    assert page.status_code == 500
    assert re.search(r"permission denied for table step_tasks", page.text)

"""The grants documented for a plain-Postgres client role are enough, and needed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgflow_client import PgflowClient, RpcError
from pgflow_worker import Flow, FlowWorker
from tests.docs.snippets import DOCS, parse

PASSWORD = "docs-test"


def documented_grants() -> str:
    page = parse(DOCS / "postgres.md")
    blocks = [b for b in page.blocks if b.language == "sql" and "test_grants.py" in b.args]
    assert len(blocks) == 1, "docs/postgres.md should hold one grants block checked here"
    return blocks[0].code


@pytest.fixture
def client_role(db_url: str) -> Iterator[str]:
    role = f"app_client_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create role {} login password {}").format(
                sql.Identifier(role), sql.Literal(PASSWORD)
            )
        )
        try:
            yield role
        finally:
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


def grant(db_url: str, role: str, statements: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(statements.replace("app_client", role).encode())


def greet() -> Flow:
    flow = Flow("greet_role", max_attempts=1)

    @flow.step
    def hello(input: dict[str, Any]) -> str:
        return f"hello {input['name']}"

    return flow


async def test_a_client_role_with_the_documented_grants_runs_flows(
    db_url: str, client_role: str
) -> None:
    grant(db_url, client_role, documented_grants())
    role_dsn = make_conninfo(db_url, user=client_role, password=PASSWORD)
    flow = greet()
    async with (
        FlowWorker(flow, db_url, max_poll_seconds=1, poll_interval_ms=20),
        await PgflowClient.connect(role_dsn) as client,
    ):
        run = await client.start_flow("greet_role", {"name": "app"})
        seen: list[str] = []
        run.step("hello").on("completed", lambda event: seen.append(event.event_type))
        await run.wait_for_status("completed", timeout=30)
    assert run.output == {"hello": "hello app"}
    assert seen == ["step:completed"]  # delivered through LISTEN and realtime.messages


async def test_without_the_grants_the_role_cannot_start_runs(db_url: str, client_role: str) -> None:
    without_execute = "\n".join(
        line for line in documented_grants().splitlines() if "execute" not in line
    )
    grant(db_url, client_role, without_execute)
    async with (
        FlowWorker(greet(), db_url, max_poll_seconds=1),
        await PgflowClient.connect(
            make_conninfo(db_url, user=client_role, password=PASSWORD)
        ) as client,
    ):
        with pytest.raises(RpcError, match="permission denied"):
            await client.start_flow("greet_role", {"name": "app"})

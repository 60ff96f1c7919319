"""Fixtures for the dashboard: flows in the test's database, runs driven by a real worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
import uvicorn
from psycopg.types.json import Jsonb
from starlette.testclient import TestClient

from pgflow_worker import Flow, FlowWorker, ensure_flow
from pgflow_worker._tools.dashboard import create_app
from pgflow_worker._tools.dashboard._security import LOOPBACK_HOSTS

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 20}


async def define(db_url: str, *flows: Flow) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for flow in flows:
            await ensure_flow(conn, flow)


async def start(db_url: str, slug: str, payload: Any) -> str:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select run_id::text from pgflow.start_flow(%s, %s)", (slug, Jsonb(payload))
        )
        row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def run_to_end(db_url: str, flow: Flow, payload: Any, timeout: float = 30) -> str:
    """Start a run and work it on a real worker until it is no longer started."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("listen realtime_broadcast")
        run_id = await start(db_url, flow.slug, payload)
        async with FlowWorker(flow, db_url, **FAST):
            async with asyncio.timeout(timeout):
                while True:
                    cur = await conn.execute(
                        "select status from pgflow.runs where run_id = %s", (run_id,)
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    if row[0] != "started":
                        return run_id
                    async for _ in conn.notifies(timeout=1.0, stop_after=1):
                        pass


@pytest.fixture
def dashboard(db_url: str) -> Iterator[TestClient]:
    """The dashboard over HTTP (in process), on the test's database."""
    with TestClient(create_app(db_url), base_url="http://127.0.0.1:8765") as client:
        yield client


def random_run_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
async def shaped(db_url: str) -> dict[str, str]:
    """Two finished runs of dash_shapes: one flagged (audit ran), one not (audit skipped)."""
    from tests.dashboard.flows import shapes

    flow = shapes()
    await define(db_url, flow)
    return {
        "flagged": await run_to_end(db_url, flow, {"n": 3, "flagged": True}),
        "plain": await run_to_end(db_url, flow, {"n": 2}),
    }


@contextlib.asynccontextmanager
async def serving(db_url: str) -> AsyncIterator[str]:
    """The dashboard on a real uvicorn server in the running event loop; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections wait in the backlog until uvicorn accepts them
    port = sock.getsockname()[1]
    app = create_app(db_url, allowed_hosts=LOOPBACK_HOSTS)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(30):
            await task
        sock.close()


@pytest.fixture
async def served(db_url: str) -> AsyncIterator[str]:
    """The dashboard served over real HTTP for the test's database."""
    async with serving(db_url) as url:
        yield url


def chromium_path() -> str | None:
    """The machine's Chromium (Debian's ``chromium`` package), or None."""
    named = os.environ.get("PGFLOW_TEST_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium driven by Playwright (the system's browser, nothing downloaded)."""
    path = chromium_path()
    if path is None:
        pytest.skip(
            "no Chromium on this machine (apt-get install chromium, or set "
            "PGFLOW_TEST_CHROMIUM): the browser tests need one"
        )
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=path, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()

"""The live run page's event stream: pushed by LISTEN/NOTIFY from start to end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
from starlette.testclient import TestClient

from pgflow_worker import FlowWorker
from pgflow_worker._tools.dashboard import create_app
from tests.dashboard.conftest import FAST, define, random_run_id, start
from tests.dashboard.flows import gated


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    event, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "message", ""


async def test_the_stream_follows_a_run_from_started_to_completed(db_url: str, served: str) -> None:
    gate, entered = asyncio.Event(), asyncio.Event()
    flow = gated(gate, entered)
    await define(db_url, flow)
    run_id = await start(db_url, flow.slug, {})
    async with FlowWorker(flow, db_url, **FAST), httpx.AsyncClient(base_url=served) as http:
        async with asyncio.timeout(30):
            await entered.wait()
        async with asyncio.timeout(60), http.stream("GET", f"/runs/{run_id}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            seen: list[tuple[str, str | None]] = []
            last = ""
            async for event, data in _events(stream):
                seen.append((event, data.get("status")))
                last = data.get("html", last)
                if event == "update" and not gate.is_set():
                    assert data["status"] == "started"
                    assert 'class="node status-started" data-step="first"' in data["html"]
                    assert 'class="node status-created" data-step="second"' in data["html"]
                    assert "Cancel run" in data["html"]
                    gate.set()
                if event == "end":
                    break
    assert seen[0] == ("update", "started")
    assert seen[-2:] == [("update", "completed"), ("end", None)]
    assert "&#34;one+two&#34;" in last  # the run's output, in the last update
    assert 'class="node status-completed" data-step="second"' in last
    assert "Cancel run" not in last


async def test_a_finished_run_streams_once_and_ends(db_url: str, served: str) -> None:
    gate, entered = asyncio.Event(), asyncio.Event()
    flow = gated(gate, entered)
    await define(db_url, flow)
    run_id = await start(db_url, flow.slug, {})
    async with httpx.AsyncClient(base_url=served) as http:
        cancelled = await http.get(f"/runs/{run_id}")
        assert 'data-events="/runs/' in cancelled.text
        await http.post(
            f"/runs/{run_id}/cancel",
            data={"csrf": http.cookies["pgflow_csrf"]},
            headers={"Origin": served},
        )
        async with asyncio.timeout(30), http.stream("GET", f"/runs/{run_id}/events") as stream:
            seen = [(event, data.get("status")) async for event, data in _events(stream)]
        assert seen == [("update", "cancelled"), ("end", None)]
        assert (await http.get(f"/runs/{random_run_id()}/events")).status_code == 404


async def test_without_notifications_the_page_says_it_is_not_live(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        # As on a Supabase database: broadcasts are stored, nothing is notified.
        conn.execute("drop trigger notify_message_inserted on realtime.messages")
    gate, entered = asyncio.Event(), asyncio.Event()
    flow = gated(gate, entered)
    await define(db_url, flow)
    run_id = await start(db_url, flow.slug, {})
    with TestClient(create_app(db_url)) as client:
        page = client.get(f"/runs/{run_id}")
        assert "Live updates are off: realtime.messages has no NOTIFY trigger" in page.text
        with client.stream("GET", f"/runs/{run_id}/events") as stream:
            text = "".join(stream.iter_text())
    assert text.count("event: update") == 1
    assert text.endswith("event: end\ndata: {}\n\n")

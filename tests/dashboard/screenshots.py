"""Screenshots of the dashboard's three pages for the docs, taken in headless Chromium.

``uv run python -m tests.dashboard.screenshots docs/images`` starts a PostgreSQL server as the
tests do, runs the demo's flows and a conditional one on a real worker, and saves
``dashboard-flows.png``, ``dashboard-runs.png`` and ``dashboard-run.png``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import psycopg

from pgflow_worker import FlowWorker
from pgflow_worker._tools.demo_flows import crawl_site_flow, greet_user_flow
from tests._stack import Stack
from tests.dashboard.conftest import FAST, chromium_path, define, run_to_end, serving, start
from tests.dashboard.flows import shapes

_NAMES = [("Alice", "Smith"), ("Bob", "Jones"), ("Chidi", "Okafor"), ("Dana", "Kim")]


async def _populate(db_url: str) -> str:
    """Runs of every kind; returns the crawl run the run page shows."""
    greet, crawl = greet_user_flow(), crawl_site_flow(delay=0.05)
    shaped = shapes("review_order")
    await define(db_url, greet, crawl, shaped)
    for first, last in _NAMES:
        await run_to_end(db_url, greet, {"first_name": first, "last_name": last})
    await run_to_end(db_url, shaped, {"n": 4, "flagged": True})
    await run_to_end(db_url, shaped, {"n": 2})
    shown = await run_to_end(db_url, crawl, {"site": "example.org", "pages": 6})
    broken = await start(db_url, crawl.slug, {"site": "example.com"})  # no "pages": it fails
    async with FlowWorker(crawl, db_url, **FAST):
        await _until_ended(db_url, broken)
    stopped = await start(db_url, shaped.slug, {"n": 3})
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pgflow.cancel_run(%s, 'started by mistake')", (stopped,))
    await start(db_url, greet.slug, {"first_name": "Emil", "last_name": "Novak"})
    return shown


async def _until_ended(db_url: str, run_id: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("listen realtime_broadcast")
        async with asyncio.timeout(30):
            while True:
                cur = await conn.execute(
                    "select status from pgflow.runs where run_id = %s", (run_id,)
                )
                row = await cur.fetchone()
                if row is not None and row[0] != "started":
                    return
                async for _ in conn.notifies(timeout=1.0, stop_after=1):
                    pass


async def take(out: Path) -> None:
    from playwright.async_api import async_playwright

    path = chromium_path()
    if path is None:
        raise SystemExit("no Chromium found (apt-get install chromium)")
    stack = Stack()
    name = stack.clone("ours")
    try:
        db_url = stack.url(name)
        run_id = await _populate(db_url)
        async with serving(db_url) as base, async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=path, headless=True)
            page = await browser.new_page(viewport={"width": 1280, "height": 860})
            for target, file in [
                ("/", "dashboard-flows.png"),
                ("/runs", "dashboard-runs.png"),
                (f"/runs/{run_id}", "dashboard-run.png"),
            ]:
                await page.goto(base + target)
                await page.screenshot(path=str(out / file), full_page=True)
                print(out / file)
            await browser.close()
    finally:
        stack.drop(name)
        stack.close()


if __name__ == "__main__":
    logging.getLogger("pgflow.worker").setLevel(logging.CRITICAL)  # the failing run's attempts
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images")
    folder.mkdir(parents=True, exist_ok=True)
    asyncio.run(take(folder))

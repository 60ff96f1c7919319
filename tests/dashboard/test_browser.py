"""The dashboard in a real headless Chromium: live runs, the buttons, filters, hostile data."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from playwright.async_api import Page, expect

from pgflow_worker import FlowWorker
from tests.dashboard.conftest import FAST, define, run_to_end, start
from tests.dashboard.flows import HOSTILE, gated, hostile, shapes

# Counts the times the live script replaces the run's body (window.__redrawn).
_COUNT_REDRAWS = """
document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run");
  if (!run) return;
  new MutationObserver(() => { window.__redrawn = (window.__redrawn || 0) + 1; })
    .observe(run, {childList: true});
});
"""


async def _page(browser: Any, problems: list[str]) -> Page:
    page: Page = await browser.new_page()

    async def on_dialog(dialog: Any) -> None:
        problems.append(f"dialog: {dialog.message}")
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    return page


async def test_a_run_page_follows_the_run_live_without_reloading(
    db_url: str, served: str, browser: Any
) -> None:
    gate, entered = asyncio.Event(), asyncio.Event()
    flow = gated(gate, entered)
    await define(db_url, flow)
    run_id = await start(db_url, flow.slug, {})
    problems: list[str] = []
    page = await _page(browser, problems)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url.removeprefix(served)))
    async with FlowWorker(flow, db_url, **FAST):
        async with asyncio.timeout(30):
            await entered.wait()
        await page.goto(f"{served}/runs/{run_id}")
        status = page.locator("#run-status .badge")
        await expect(status).to_have_text("started")
        first = page.locator('svg.dag g[data-step="first"]')
        await expect(first).to_have_class("node status-started")
        await expect(page.locator("#live-state")).to_contain_text("Live")
        await page.evaluate("window.__same_document = true")
        gate.set()
        await expect(status).to_have_text("completed", timeout=30_000)
    await expect(page.locator('svg.dag g[data-step="second"]')).to_have_class(
        "node status-completed"
    )
    await expect(page.locator("#step-second pre.json")).to_have_text('"one+two"')
    await expect(page.locator("#run")).to_have_attribute("data-live", "ended")
    assert await page.evaluate("window.__same_document") is True  # no reload happened
    pages = [r for r in requests if r.startswith(f"/runs/{run_id}")]
    assert pages == [f"/runs/{run_id}", f"/runs/{run_id}/events"]  # one stream, no polling
    assert problems == []


async def test_cancel_then_retry_from_their_buttons(db_url: str, served: str, browser: Any) -> None:
    await define(db_url, shapes())
    run_id = await start(db_url, "dash_shapes", {"n": 2})
    problems: list[str] = []
    page = await _page(browser, problems)
    await page.add_init_script(_COUNT_REDRAWS)
    await page.goto(f"{served}/runs/{run_id}")
    await expect(page.locator("#run-status .badge")).to_have_text("started")
    await expect(page.locator("#run")).to_have_attribute("data-status", "started")  # streamed
    # The stream's first update showed nothing new: the form was left as it was drawn.
    assert await page.evaluate("window.__redrawn") is None
    await page.get_by_label("Reason").fill("wrong input")
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.locator("#run-status .badge")).to_have_text("cancelled")
    await expect(page.locator(".notice")).to_have_text("The run was cancelled.")
    await expect(page.locator("#run-error")).to_have_text("Run cancelled: wrong input")

    await page.get_by_role("button", name="Retry run").click()
    await expect(page.locator(".notice")).to_have_text("This run was started as a retry.")
    await expect(page.locator("#run-status .badge")).to_have_text("started")
    new_id = page.url.rsplit("/", 1)[1].split("?")[0]
    assert new_id != run_id
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "select restart_of_run_id::text, status from pgflow.runs where run_id = %s",
            (new_id,),
        ).fetchone()
    assert row == (run_id, "started")
    await page.get_by_role("link", name=run_id[:8]).click()
    await expect(page.locator("#run-status .badge")).to_have_text("cancelled")
    assert problems == []


async def test_filters_and_paging(db_url: str, served: str, browser: Any) -> None:
    await define(db_url, shapes(), hostile())
    shaped = [await start(db_url, "dash_shapes", {"n": i}) for i in range(23)]
    other = await start(db_url, "dash_hostile", {})
    with psycopg.connect(db_url, autocommit=True) as conn:
        for i, run_id in enumerate([*shaped, other]):
            conn.execute(
                "update pgflow.runs set started_at = now() - make_interval(secs => %s) "
                "where run_id = %s",
                (100 - i, run_id),
            )
        conn.execute("select pgflow.cancel_run(%s)", (shaped[5],))
    problems: list[str] = []
    page = await _page(browser, problems)
    await page.goto(f"{served}/runs")
    links = page.locator("a.run-link")
    await expect(links).to_have_count(24)

    await page.get_by_label("Flow").select_option("dash_shapes")
    await page.get_by_label("Per page").select_option("20")
    await page.get_by_role("button", name="Filter").click()
    await expect(links).to_have_count(20)
    newest_first = shaped[::-1]
    assert [await a.get_attribute("href") for a in await links.all()] == [
        f"/runs/{r}" for r in newest_first[:20]
    ]
    await page.get_by_role("link", name="Older →").click()
    await expect(links).to_have_count(3)
    assert [await a.get_attribute("href") for a in await links.all()] == [
        f"/runs/{r}" for r in newest_first[20:]
    ]
    await expect(page.get_by_label("Flow")).to_have_value("dash_shapes")
    await page.get_by_role("link", name="← Newest").click()
    await expect(links).to_have_count(20)

    await page.get_by_label("Status").select_option("cancelled")
    await page.get_by_role("button", name="Filter").click()
    await expect(links).to_have_count(1)
    assert await links.first.get_attribute("href") == f"/runs/{shaped[5]}"
    await page.get_by_role("link", name="Clear").click()
    await expect(links).to_have_count(24)
    assert problems == []


async def test_hostile_strings_are_shown_as_text(db_url: str, served: str, browser: Any) -> None:
    flow = hostile()
    await define(db_url, flow)
    run_id = await run_to_end(db_url, flow, {"note": HOSTILE})
    problems: list[str] = []
    page = await _page(browser, problems)
    for path in ["/", "/runs", f"/runs/{run_id}"]:
        await page.goto(f"{served}{path}")
        assert await page.evaluate("typeof window.__pwned") == "undefined", path
    await expect(page.locator("#run-error")).to_have_text(f"RuntimeError: {HOSTILE}")
    await expect(page.locator("#step-boom pre.error")).to_have_text(f"RuntimeError: {HOSTILE}")
    await expect(page.locator("#step-big .note")).to_contain_text("too large to show in full")
    assert await page.locator("img").count() == 0
    assert await page.locator("script").count() == 1  # ours
    assert problems == []

"""The dashboard's pages over HTTP, against a real database with runs worked by a real worker."""

from __future__ import annotations

import html
import re

import psycopg
import pytest
from markupsafe import escape
from starlette.testclient import TestClient

from tests.dashboard.conftest import define, random_run_id, run_to_end, start
from tests.dashboard.flows import BIG, HOSTILE, hostile, shapes


def _text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


async def test_flows_page_draws_each_dag_and_counts_runs(
    dashboard: TestClient, shaped: dict[str, str]
) -> None:
    page = dashboard.get("/")
    assert page.status_code == 200
    body = page.text
    assert "dash_shapes" in body
    svg = re.search(r"<svg class=\"dag\".*?</svg>", body, re.S)
    assert svg is not None
    nodes = re.findall(r'data-step="([^"]+)"', svg.group(0))
    assert nodes == ["fetch", "items", "each", "audit", "report"]
    assert re.search(r'class="node status-none map" data-step="each"', svg.group(0))
    assert re.search(r'class="node status-none conditional" data-step="audit"', svg.group(0))
    assert "runs if its input contains {&#34;fetch&#34;: {&#34;flagged&#34;: true}}" in svg.group(0)
    assert svg.group(0).count('class="edge"') == 5  # fetch→items, items→each, fetch→audit, 2→report
    counts = re.search(r'status=completed">\s*<span class="n">(\d+)</span>', body)
    assert counts is not None
    assert counts.group(1) == "2"
    for run_id in shaped.values():
        assert f'href="/runs/{run_id}"' in body


async def test_run_page_shows_steps_outputs_tasks_and_timings(
    dashboard: TestClient, shaped: dict[str, str]
) -> None:
    page = dashboard.get(f"/runs/{shaped['flagged']}")
    assert page.status_code == 200
    body = page.text
    assert 'class="badge status-completed"' in body
    dag = re.search(r"<svg class=\"dag\".*?</svg>", body, re.S)
    assert dag is not None
    statuses = dict(re.findall(r'class="node status-(\w+)[^"]*" data-step="(\w+)"', dag.group(0)))
    assert set(statuses) == {"completed"}
    step = re.search(r'<section class="card step" id="step-each".*?</section>', body, re.S)
    assert step is not None
    assert "Tasks (3)" in step.group(0)
    assert step.group(0).count("<td>") >= 3 * 4
    assert "3 of 3 done" in step.group(0)
    report = re.search(r'id="step-report".*?</section>', body, re.S)
    assert report is not None
    assert "&#34;total&#34;: 30" in report.group(0)  # 0 + 10 + 20
    assert "Duration" in body
    assert "Retry run" not in body
    assert "Cancel run" not in body
    assert "data-events" not in body  # a finished run's page is not live

    plain = dashboard.get(f"/runs/{shaped['plain']}").text
    audit = re.search(r'id="step-audit".*?</section>', plain, re.S)
    assert audit is not None
    assert 'class="badge status-skipped"' in audit.group(0)
    assert "Skipped: condition_unmet" in audit.group(0)


async def test_not_a_uuid_and_unknown_runs_are_404_pages(dashboard: TestClient) -> None:
    for path, says in [
        ("/runs/not-a-uuid", "is not a run id"),
        ("/runs/<script>", "is not a run id"),
        (f"/runs/{random_run_id()}", "There is no run"),
        ("/nowhere", "There is no page at /nowhere"),
    ]:
        page = dashboard.get(path)
        assert page.status_code == 404, path
        assert page.headers["content-type"].startswith("text/html")
        assert says in html.unescape(page.text)
        assert "<script>" not in page.text
    events = dashboard.get(f"/runs/{random_run_id()}/events")
    assert events.status_code == 404


async def test_hostile_strings_are_text_and_big_outputs_are_cut(
    db_url: str, dashboard: TestClient
) -> None:
    flow = hostile()
    await define(db_url, flow)
    run_id = await run_to_end(db_url, flow, {"note": HOSTILE})
    page = dashboard.get(f"/runs/{run_id}")
    assert page.status_code == 200
    body = page.text
    assert "<script>window" not in body
    assert "<img src=x" not in body
    assert 'onerror="window' not in body
    assert str(escape(HOSTILE)) in body  # the error message, escaped
    text = _text(body)
    assert f"RuntimeError: {HOSTILE}" in text  # the step's and the run's error
    assert "too large to show in full" in text
    assert re.search(r"Showing the first 20,000 characters of 2,097,\d{3} characters", text)
    assert len(body) < 200_000, "the 2 MB output was sent whole"
    assert BIG[:1000] in body
    assert "window.__pwned" in text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_runs_filters_and_keyset_paging(db_url: str, dashboard: TestClient) -> None:
    flow = shapes()
    await define(db_url, flow)
    ids = [await start(db_url, "dash_shapes", {"n": i}) for i in range(25)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Distinct start times, the newest last; one cancelled, one failed.
        for i, run_id in enumerate(ids):
            conn.execute(
                "update pgflow.runs set started_at = now() - make_interval(secs => %s) "
                "where run_id = %s",
                (100 - i, run_id),
            )
        conn.execute("select pgflow.cancel_run(%s, 'stop')", (ids[3],))
    newest_first = ids[::-1]

    def listed(page: str) -> list[str]:
        return re.findall(r'class="run-link" href="/runs/([0-9a-f-]{36})"', page)

    first = dashboard.get("/runs?limit=20")
    assert first.status_code == 200
    assert listed(first.text) == newest_first[:20]
    older = re.search(r'class="older" href="([^"]+)"', first.text)
    assert older is not None
    second = dashboard.get(html.unescape(older.group(1)))
    assert listed(second.text) == newest_first[20:]
    assert 'class="older"' not in second.text
    assert 'class="newest"' in second.text

    cancelled = dashboard.get("/runs?status=cancelled")
    assert listed(cancelled.text) == [ids[3]]
    started = dashboard.get("/runs?status=started&flow=dash_shapes")
    assert len(listed(started.text)) == 24
    assert 'value="dash_shapes" selected' in started.text
    assert listed(dashboard.get("/runs?flow=other").text) == []

    bad = dashboard.get("/runs?status=<b>")
    assert bad.status_code == 400
    assert "&#39;&lt;b&gt;&#39; is not one of started, completed, failed, cancelled" in bad.text
    assert dashboard.get("/runs?before=nope").status_code == 400
    gone = dashboard.get(f"/runs?before={random_run_id()}")
    assert gone.status_code == 400
    assert "does not exist" in gone.text
    assert dashboard.get("/runs?limit=7").status_code == 400


def _csrf(client: TestClient, path: str) -> str:
    page = client.get(path)
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


async def test_cancel_and_retry_from_their_forms(db_url: str, dashboard: TestClient) -> None:
    await define(db_url, shapes())
    run_id = await start(db_url, "dash_shapes", {"n": 1})
    token = _csrf(dashboard, f"/runs/{run_id}")
    same = {"Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "same-origin"}
    done = dashboard.post(
        f"/runs/{run_id}/cancel",
        data={"csrf": token, "reason": "<b>not today</b>"},
        headers=same,
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/runs/{run_id}?notice=cancelled"
    page = dashboard.get(done.headers["location"]).text
    assert 'class="badge status-cancelled"' in page
    assert "Run cancelled: &lt;b&gt;not today&lt;/b&gt;" in page
    assert "Retry run" in page

    again = dashboard.post(
        f"/runs/{run_id}/cancel", data={"csrf": token}, headers=same, follow_redirects=False
    )
    assert again.status_code == 409
    assert "was already cancelled" in again.text

    retried = dashboard.post(
        f"/runs/{run_id}/retry", data={"csrf": token}, headers=same, follow_redirects=False
    )
    assert retried.status_code == 303
    new_id = retried.headers["location"].split("/")[2].split("?")[0]
    assert new_id != run_id
    new_page = dashboard.get(retried.headers["location"]).text
    assert f'href="/runs/{run_id}"' in new_page  # "retry of"
    assert "Cancel run" in new_page
    assert f'href="/runs/{new_id}"' in dashboard.get(f"/runs/{run_id}").text  # "retried as"

    refused = dashboard.post(
        f"/runs/{new_id}/retry", data={"csrf": token}, headers=same, follow_redirects=False
    )
    assert refused.status_code == 409
    assert "has not failed" in refused.text


@pytest.mark.parametrize(
    ("headers", "with_token"),
    [
        ({"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, True),
        ({"Origin": "https://evil.example"}, True),
        ({"Sec-Fetch-Site": "same-site"}, True),
        ({"Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "same-origin"}, False),
    ],
    ids=["cross-site", "foreign-origin", "same-site", "no-csrf-token"],
)
async def test_cross_site_posts_are_refused(
    db_url: str, dashboard: TestClient, headers: dict[str, str], with_token: bool
) -> None:
    await define(db_url, shapes())
    run_id = await start(db_url, "dash_shapes", {"n": 1})
    token = _csrf(dashboard, f"/runs/{run_id}")
    answer = dashboard.post(
        f"/runs/{run_id}/cancel",
        data={"csrf": token if with_token else "forged"},
        headers=headers,
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert "Cross-site request refused" in answer.text
    with psycopg.connect(db_url) as conn:
        row = conn.execute("select status from pgflow.runs where run_id = %s", (run_id,))
        assert row.fetchone() == ("started",)

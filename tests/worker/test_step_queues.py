"""Per-step queues from the DSL and the worker: one worker per step, each polling its own queue."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from pgflow_worker._compiler import compile_flow
from pgflow_worker._flow import Flow
from pgflow_worker._tools.cli import app
from pgflow_worker._worker import FlowWorker
from pgflow_worker.errors import FlowDefinitionError, StepNotFound, WorkerError
from tests.worker.helpers import start_run, tasks_of, wait_run

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 50}


def split_flow() -> Flow:
    """``fetch`` then ``score`` (the one a GPU box would serve), each on its own queue."""
    flow = Flow("split", step_queues=True)

    @flow.step
    def fetch(input: dict[str, Any]) -> int:
        return int(input["n"]) * 10

    @flow.step(depends_on=[fetch])
    def score(input: dict[str, Any]) -> int:
        return int(input["fetch"]) + 1

    return flow


def test_queue_names_follow_pgflows_rules() -> None:
    flow = split_flow()
    assert flow.queue_mode == "step"
    assert [flow.queue_name(s.slug) for s in flow.steps] == ["split__fetch", "split__score"]
    assert flow.route_map() == [
        {"stepSlug": "fetch", "queueName": "split__fetch"},
        {"stepSlug": "score", "queueName": "split__score"},
    ]
    long = Flow("f" * 40, step_queues=True)
    long.step(slug="a_rather_long_step")(lambda i: i)
    assert long.queue_name("a_rather_long_step") == "f" * 40 + "__0"
    assert Flow("Mixed").queue_name() == "mixed"
    with pytest.raises(FlowDefinitionError, match="per-step queues"):
        Flow("f" * 45, step_queues=True)


def test_a_worker_serves_a_step_only_of_a_flow_with_step_queues() -> None:
    with pytest.raises(WorkerError, match="one worker per step"):
        FlowWorker(split_flow(), "postgresql://unused")
    with pytest.raises(WorkerError, match="one queue for all its steps"):
        FlowWorker(Flow("plain"), "postgresql://unused", step="a")
    with pytest.raises(StepNotFound):
        FlowWorker(split_flow(), "postgresql://unused", step="nope")
    assert FlowWorker(split_flow(), "postgresql://unused", step="score").queue_name == (
        "split__score"
    )


async def test_two_step_workers_finish_interleaved_runs(db_url: str) -> None:
    fetcher = FlowWorker(split_flow(), db_url, step="fetch", **FAST)
    scorer = FlowWorker(split_flow(), db_url, step="score", **FAST)
    async with fetcher:
        runs = [await start_run(db_url, "split", {"n": n}) for n in range(3)]
        async with scorer:
            runs += [await start_run(db_url, "split", {"n": n}) for n in range(3, 6)]
            finished = await asyncio.gather(*(wait_run(db_url, r) for r in runs))
    assert [r["output"] for r in finished] == [{"score": n * 10 + 1} for n in range(6)]
    assert (fetcher.completed, scorer.completed) == (6, 6)
    for run_id in runs:
        by_step = {t["step_slug"]: t["last_worker_id"] for t in await tasks_of(db_url, run_id)}
        assert by_step == {"fetch": str(fetcher.worker_id), "score": str(scorer.worker_id)}


async def test_a_step_without_a_worker_waits_in_its_queue(db_url: str) -> None:
    async with FlowWorker(split_flow(), db_url, step="fetch", **FAST):
        run_id = await start_run(db_url, "split", {"n": 1})
        for _ in range(200):
            tasks = {t["step_slug"]: t["status"] for t in await tasks_of(db_url, run_id)}
            if tasks == {"fetch": "completed", "score": "queued"}:
                break
            await asyncio.sleep(0.05)
        assert tasks == {"fetch": "completed", "score": "queued"}
    async with FlowWorker(split_flow(), db_url, step="score", **FAST):
        assert (await wait_run(db_url, run_id))["output"] == {"score": 11}


async def test_the_compiled_sql_builds_the_flow_with_its_step_queues(db_url: str) -> None:
    (statement,) = compile_flow(split_flow())
    assert statement.startswith("SELECT pgflow.ensure_flow_compiled('split', '")
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(statement.encode())
        row = await cur.fetchone()
        assert row is not None
        assert row[0]["status"] == "compiled"
        cur = await conn.execute(
            "select step_slug, queue_name from pgflow.steps where flow_slug = 'split'"
            " order by step_index"
        )
        assert await cur.fetchall() == [("fetch", "split__fetch"), ("score", "split__score")]
    # The worker verifies what the compiled SQL built.
    async with FlowWorker(split_flow(), db_url, step="fetch", **FAST):
        pass


def test_status_says_which_step_waits_on_a_queue_without_a_worker(db_url: str) -> None:
    (statement,) = compile_flow(split_flow())
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(statement.encode())
        row = conn.execute("select run_id from pgflow.start_flow('split', '{\"n\": 1}')").fetchone()
        assert row is not None
        run_id = str(row[0])

        def status() -> str:
            result = CliRunner().invoke(app, ["status", run_id, "--db", db_url])
            assert result.exit_code == 0, result.output
            return " ".join(result.output.split())

        assert "step fetch waits: no live worker polls its queue split__fetch" in status()
        assert "--step fetch" in status()
        conn.execute(
            "insert into pgflow.workers (worker_id, queue_name, function_name)"
            " values (gen_random_uuid(), 'split__fetch', 'tests')"
        )
        assert "waits" not in status()

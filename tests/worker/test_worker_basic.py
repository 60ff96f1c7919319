"""FlowWorker running in-process against real Postgres."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgflow_worker._flow import Flow
from pgflow_worker._worker import FlowWorker
from tests.worker.helpers import wait_run


def greet_flow() -> Flow:
    flow = Flow("greet_user")

    @flow.step
    def full_name(input: dict[str, Any], ctx: Any) -> str:
        return f"{input['first_name']} {input['last_name']}"

    @flow.step(depends_on=[full_name])
    async def greeting(input: dict[str, Any]) -> str:
        return f"Hello, {input['full_name']}!"

    return flow


async def test_greet_user_runs_to_completion(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    flow = greet_flow()
    async with FlowWorker(flow, db_url, max_poll_seconds=1) as worker:
        cur = await aconn.execute(
            "select run_id from pgflow.start_flow('greet_user', %s)",
            (Jsonb({"first_name": "Alice", "last_name": "Smith"}),),
        )
        row = await cur.fetchone()
        assert row is not None
        run = await wait_run(db_url, row[0])
    assert run["status"] == "completed"
    assert run["output"] == {"greeting": "Hello, Alice Smith!"}
    assert worker.completed == 2
    cur = await aconn.execute(
        "select stopped_at is not null from pgflow.workers where worker_id = %s",
        (worker.worker_id,),
    )
    assert await cur.fetchone() == (True,)

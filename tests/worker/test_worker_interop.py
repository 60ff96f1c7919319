"""The same worker runs flows on the official @pgflow/core SQL (0.8.1, fetched with npm)."""

from __future__ import annotations

from typing import Any

from pgflow_worker._flow import Flow
from pgflow_worker._worker import FlowWorker
from tests.worker.helpers import start_run, wait_run

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 50}


def mixed_flow() -> Flow:
    flow = Flow("interop")

    @flow.step
    def full_name(input: dict[str, Any]) -> str:
        return f"{input['first_name']} {input['last_name']}"

    @flow.array(depends_on=[full_name])
    def letters(input: dict[str, str]) -> list[str]:
        return list(input["full_name"].replace(" ", ""))[:4]

    @flow.map(array=letters)
    async def upper(letter: str) -> str:
        return letter.upper()

    @flow.step(depends_on=[upper, full_name])
    async def summary(input: dict[str, Any], ctx: Any) -> dict[str, Any]:
        flow_input = await ctx.get_flow_input()
        return {"name": input["full_name"], "initials": "".join(input["upper"]), "in": flow_input}

    return flow


async def test_worker_runs_the_same_flow_on_both_sqls(any_db_url: str) -> None:
    flow = mixed_flow()
    async with FlowWorker(flow, any_db_url, **FAST):
        run_id = await start_run(
            any_db_url, "interop", {"first_name": "Ada", "last_name": "Lovelace"}
        )
        run = await wait_run(any_db_url, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {
        "summary": {
            "name": "Ada Lovelace",
            "initials": "ADAL",
            "in": {"first_name": "Ada", "last_name": "Lovelace"},
        }
    }


async def test_root_map_on_both_sqls(any_db_url: str) -> None:
    flow = Flow("interop_map")

    @flow.map
    def double(x: int) -> int:
        return 2 * x

    async with FlowWorker(flow, any_db_url, **FAST):
        run = await wait_run(any_db_url, await start_run(any_db_url, "interop_map", [1, 2, 3]))
    assert run["output"] == {"double": [2, 4, 6]}

"""Python steps in a flow served by another language: one step of a flow with per-step queues
runs on pgflow-py's worker, the others on a Node task loop built on ``@pgflow/core``'s
``PgflowSqlClient``, and pgflow-py's client sees every event of the run."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgflow_client import PgflowClient
from pgflow_worker import Flow, FlowWorker, flow_shape
from tests.interop._node import NodeTaskLoop

pytestmark = pytest.mark.usefixtures("ts_packages")


def poly_flow() -> Flow:
    """``fetch`` and ``report`` for the Node loop; ``embed``, the Python step, in between."""
    flow = Flow("poly", step_queues=True)

    @flow.step
    def fetch(input: Any) -> Any:
        raise AssertionError("the Node loop serves fetch")

    @flow.step(depends_on=[fetch])
    def embed(input: dict[str, Any]) -> dict[str, Any]:
        return {"vector": [len(str(input["fetch"])), 1.0], "by": "python"}

    @flow.step(depends_on=[embed])
    def report(input: Any) -> Any:
        raise AssertionError("the Node loop serves report")

    return flow


async def test_one_step_in_python_the_others_in_node(db_url: str) -> None:
    flow = poly_flow()
    # The Node loop compiles the flow as pgflow 0.17's workers do, with its whole route map,
    # and serves every step but embed.
    node = NodeTaskLoop(
        db_url,
        flow.slug,
        shape=flow_shape(flow),
        routes=flow.route_map(),
        serve=["fetch", "report"],
        max_poll_seconds=1,
    )
    with node:
        with psycopg.connect(db_url, autocommit=True) as conn:
            node.wait_registered(conn, 30)
        async with (
            FlowWorker(flow, db_url, step="embed", max_poll_seconds=1) as python,
            await PgflowClient.connect(db_url) as client,
        ):
            run = await client.start_flow("poly", {"url": "https://example.com"})
            seen: list[str] = []
            run.on("*", lambda event: seen.append(event.event_type))
            for step in ("fetch", "embed", "report"):
                run.step(step).on("*", lambda event: seen.append(event.event_type))
            try:
                await run.wait_for_status("completed", timeout=30)
            except TimeoutError:
                with psycopg.connect(db_url, autocommit=True) as conn:
                    tasks = conn.execute(
                        "select step_slug, status, queue_name, error_message"
                        " from pgflow.step_tasks order by step_slug"
                    ).fetchall()
                pytest.fail(f"run unfinished; tasks {tasks}\nNode loop:\n{node.log_tail()}")
        summary = node.stop()
    assert run.output == {"report": {"step": "report"}}
    assert run.step("embed").output == {"vector": [17, 1.0], "by": "python"}
    assert run.step("fetch").output == {"step": "fetch"}
    assert (summary["completed"], summary["failed"]) == (2, 0)
    assert python.completed == 1
    assert seen.count("step:completed") == 3
    assert seen[-1] == "run:completed"

"""Flows used by the end-to-end tests."""

from __future__ import annotations

from typing import Any

from pgflow_worker import Flow


def chain() -> Flow:
    flow = Flow("e2e_chain", max_attempts=1)

    @flow.step
    def fetch(input: dict[str, Any]) -> dict[str, Any]:
        return {"id": input["id"], "title": f"title-{input['id']}"}

    @flow.step(depends_on=[fetch])
    async def summarize(input: dict[str, Any]) -> str:
        return f"summary of {input['fetch']['title']}"

    @flow.step(depends_on=[summarize])
    def publish(input: dict[str, Any]) -> dict[str, Any]:
        if input["summarize"].endswith("title-boom"):
            raise RuntimeError("publishing refused")
        return {"published": input["summarize"]}

    return flow


def mapping() -> Flow:
    flow = Flow("e2e_map", max_attempts=1)

    @flow.map
    def double(x: int) -> int:
        return x * 2

    @flow.step(depends_on=[double])
    def total(input: dict[str, list[int]]) -> int:
        return sum(input["double"])

    return flow


def empty_dependent_map() -> Flow:
    flow = Flow("e2e_empty_dep", max_attempts=1)

    @flow.array
    def items(input: dict[str, Any]) -> list[int]:
        return list(range(int(input["n"])))

    @flow.map(array=items)
    def each(x: int) -> int:
        return x

    return flow

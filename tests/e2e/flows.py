"""Flows used by the end-to-end tests."""

from __future__ import annotations

import asyncio
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


def gated(entered: asyncio.Event, gate: asyncio.Event) -> Flow:
    """Two steps; the first sets ``entered`` and then waits for ``gate``, so a test can act
    while the run is in flight and decide when the rest of it happens."""
    flow = Flow("gated", max_attempts=1)

    @flow.step
    async def first(input: Any) -> str:
        entered.set()
        await gate.wait()
        return "one"

    @flow.step(depends_on=[first])
    def second(input: dict[str, str]) -> str:
        return input["first"] + "+two"

    return flow


def type_violation() -> Flow:
    """A single step feeding a dependent map with an object instead of an array."""
    flow = Flow("e2e_type_violation", max_attempts=1)

    @flow.step
    def items(input: Any) -> dict[str, str]:
        return {"not": "an array"}

    @flow.map(array=items)
    def each(x: Any) -> Any:
        return x

    return flow

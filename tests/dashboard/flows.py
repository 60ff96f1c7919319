"""Flows the dashboard tests run: a DAG with a map and a condition, hostile values, a gate."""

from __future__ import annotations

import asyncio
from typing import Any

from pgflow_worker import Flow

#: Strings a page must show as text: markup, both quotes, an attribute breakout.
HOSTILE = '<script>window.__pwned = 1</script>"\'><img src=x onerror="window.__pwned=1">'
#: An output larger than any page shows in full.
BIG = "x" * (2 * 1024 * 1024)


def shapes(slug: str = "dash_shapes") -> Flow:
    """fetch → (each over items, audit if flagged) → report."""
    flow = Flow(slug, max_attempts=1)

    @flow.step
    def fetch(input: dict[str, Any]) -> dict[str, Any]:
        return {"n": input.get("n", 3), "flagged": input.get("flagged", False)}

    @flow.array(depends_on=[fetch])
    def items(input: dict[str, Any]) -> list[int]:
        return list(range(input["fetch"]["n"]))

    @flow.map(array=items)
    def each(x: int) -> int:
        return x * 10

    @flow.step(depends_on=[fetch], if_={"fetch": {"flagged": True}})
    def audit(input: dict[str, Any]) -> str:
        return "audited"

    @flow.step(depends_on=[each, audit])
    def report(input: dict[str, Any]) -> dict[str, Any]:
        return {"total": sum(input["each"])}

    return flow


def hostile() -> Flow:
    """A 2 MB output with markup in it, then a failure whose message is markup."""
    flow = Flow("dash_hostile", max_attempts=1)

    @flow.step
    def big(input: Any) -> dict[str, str]:
        return {"html": HOSTILE, "blob": BIG}

    @flow.step(depends_on=[big])
    def boom(input: Any) -> None:
        raise RuntimeError(HOSTILE)

    return flow


def gated(gate: asyncio.Event, entered: asyncio.Event) -> Flow:
    """first waits for the gate, so a test sees the run started; second follows."""
    flow = Flow("dash_gated", max_attempts=1)

    @flow.step
    async def first(input: Any) -> str:
        entered.set()
        await gate.wait()
        return "one"

    @flow.step(depends_on=[first])
    def second(input: dict[str, str]) -> str:
        return input["first"] + "+two"

    return flow

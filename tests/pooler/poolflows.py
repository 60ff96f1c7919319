"""Flows the pooler tests run, in process and in a ``pgflow worker`` process (MODULE:FLOW)."""

from __future__ import annotations

from typing import Any

from pgflow_worker import Flow, StepContext

#: A chain around a map step: a root step, a map over its array, then a step summing the map.
squares = Flow("pooled_squares", max_attempts=1)


@squares.array
def numbers(input: dict[str, int]) -> list[int]:
    return list(range(input["n"]))


@squares.map(array=numbers)
async def square(x: int) -> int:
    return x * x


@squares.step(depends_on=[square])
def total(input: dict[str, list[int]], ctx: StepContext) -> dict[str, Any]:
    (row,) = ctx.execute("select %s::int + 0", (sum(input["square"]),))
    return {"sum": row[0], "run_id": str(ctx.run_id)}

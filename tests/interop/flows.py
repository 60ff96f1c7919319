"""Flows the interop tests run, each with the input to start it with and what it must end in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from pgflow_worker import Flow, compile_flow


@dataclass(frozen=True)
class Case:
    """A flow, its input, and the run's expected end: status plus output or error text."""

    name: str
    build: Callable[[], Flow]
    input: Any
    status: str
    output: Any = None
    error_contains: str | None = None

    @property
    def flow(self) -> Flow:
        return self.build()

    def step_slugs(self) -> list[str]:
        return [step.slug for step in self.flow.steps]


def mixed() -> Flow:
    """A single step, an array, a map over it, and a step joining two branches."""
    flow = Flow("interop_mixed", max_attempts=1)

    @flow.step
    def full_name(input: dict[str, Any]) -> dict[str, str]:
        return {"name": f"{input['first_name']} {input['last_name']}"}

    @flow.array(depends_on=[full_name])
    def letters(input: dict[str, Any]) -> list[str]:
        return list(input["full_name"]["name"].replace(" ", ""))[:4]

    @flow.map(array=letters)
    async def upper(letter: str) -> str:
        return letter.upper()

    @flow.step(depends_on=[upper, full_name])
    async def summary(input: dict[str, Any]) -> dict[str, Any]:
        return {"name": input["full_name"]["name"], "initials": "".join(input["upper"])}

    return flow


def failing() -> Flow:
    """The second step raises; with one attempt the step and the run fail."""
    flow = Flow("interop_failing", max_attempts=1)

    @flow.step
    def fetch(input: dict[str, Any]) -> dict[str, Any]:
        return {"id": input["id"]}

    @flow.step(depends_on=[fetch])
    def publish(input: dict[str, Any]) -> None:
        raise RuntimeError(f"publishing {input['fetch']['id']} was refused")

    return flow


def empty_map() -> Flow:
    """A dependent map over an empty array: it completes without ever starting."""
    flow = Flow("interop_empty_map", max_attempts=1)

    @flow.array
    def items(input: dict[str, Any]) -> list[int]:
        return list(range(int(input["n"])))

    @flow.map(array=items)
    def each(x: int) -> int:
        return x * 10

    @flow.step(depends_on=[each])
    def count(input: dict[str, list[int]]) -> dict[str, int]:
        return {"count": len(input["each"])}

    return flow


def root_map() -> Flow:
    """A root map over the flow input, then a step over its results."""
    flow = Flow("interop_root_map", max_attempts=1)

    @flow.map
    def double(x: int) -> int:
        return 2 * x

    @flow.step(depends_on=[double])
    def total(input: dict[str, list[int]]) -> int:
        return sum(input["double"])

    return flow


def chain() -> Flow:
    """Three steps in a row (the shape of the throughput benchmarks)."""
    flow = Flow("interop_chain", max_attempts=1)

    @flow.step
    async def a(input: Any) -> dict[str, str]:
        return {"step": "a"}

    @flow.step(depends_on=[a])
    async def b(input: Any) -> dict[str, str]:
        return {"step": "b"}

    @flow.step(depends_on=[b])
    async def c(input: Any) -> dict[str, str]:
        return {"step": "c"}

    return flow


MIXED = Case(
    "mixed",
    mixed,
    {"first_name": "Ada", "last_name": "Lovelace"},
    "completed",
    output={"summary": {"name": "Ada Lovelace", "initials": "ADAL"}},
)
FAILING = Case("failing", failing, {"id": 7}, "failed", error_contains="publishing 7 was refused")
EMPTY_MAP = Case("empty_map", empty_map, {"n": 0}, "completed", output={"count": {"count": 0}})
ROOT_MAP = Case("root_map", root_map, [1, 2, 3], "completed", output={"total": 12})

CHAIN = Case("chain", chain, {"n": 1}, "completed", output={"c": {"step": "c"}})

CASES = (MIXED, FAILING, EMPTY_MAP, ROOT_MAP)


async def define(dsn: str, *cases: Case) -> None:
    """Create the cases' flows in the database, as ``pgflow compile`` output would."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for case in cases:
            for statement in compile_flow(case.flow):
                await conn.execute(statement.encode())

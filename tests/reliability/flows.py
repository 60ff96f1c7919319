"""Flows run by worker processes in the reliability tests (``tests.reliability.flows:NAME``).

Handlers report what they do so the tests can check it from outside the process:
``vanish`` and ``hang_sync`` NOTIFY ``rel_started`` when a handler begins; ``soak`` appends one
line per execution to a log file in ``$RELIABILITY_LOG_DIR`` (one file per process).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from typing import Any

import psycopg

from pgflow_worker import Flow, StepContext

SOAK_FAILURE_RATE = 0.1
SOAK_MAX_ATTEMPTS = 3


class InjectedFailure(RuntimeError):
    """The failure the soak flow injects into about one attempt in ten."""


def soak_fails(run_id: object, step: str, index: int, attempt: int) -> bool:
    """Whether the soak flow fails this attempt: pseudo-random, but fixed for given arguments,
    so the test can predict every task's attempts from the run ids alone."""
    return random.Random(f"{run_id}/{step}/{index}/{attempt}").random() < SOAK_FAILURE_RATE


# -- vanish: a map whose first attempts never return -----------------------------------------

vanish = Flow("rel_vanish", timeout=3, base_delay=1, max_attempts=5)


@vanish.map
async def work(item: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    async with ctx.connection() as conn:
        await conn.execute(
            "select pg_notify('rel_started', %s)", (f"{ctx.run_id}:{ctx.task_index}:{ctx.attempt}",)
        )
    if ctx.attempt == 1 and item.get("hang"):
        await asyncio.Event().wait()  # the worker is killed while waiting here
    return {"x": item["x"], "attempt": ctx.attempt, "pid": os.getpid()}


# -- hang_sync: a synchronous handler that never returns -------------------------------------

hang_sync = Flow("rel_hang_sync", timeout=3, max_attempts=2, base_delay=1)


@hang_sync.step
def stuck(input: Any, ctx: StepContext) -> str:
    with psycopg.connect(os.environ["RELIABILITY_DSN"], autocommit=True) as conn:
        conn.execute("select pg_notify('rel_started', %s)", (str(ctx.run_id),))
    if ctx.attempt == 1:
        threading.Event().wait()  # blocks this thread for good; it cannot be interrupted
    return f"attempt {ctx.attempt}"


# -- soak: a five-step DAG with a map and injected failures -----------------------------------

soak = Flow("rel_soak", max_attempts=SOAK_MAX_ATTEMPTS, base_delay=1)

_log_lock = threading.Lock()
_log_files: dict[int, Any] = {}


def _record(ctx: StepContext, ok: bool) -> None:
    line = f"{ctx.run_id} {ctx.step_slug} {ctx.task_index} {ctx.attempt} {'ok' if ok else 'fail'}\n"
    pid = os.getpid()
    with _log_lock:
        handle = _log_files.get(pid)
        if handle is None:
            path = os.path.join(os.environ["RELIABILITY_LOG_DIR"], f"exec-{pid}.log")
            handle = _log_files[pid] = open(path, "a", buffering=1)  # noqa: SIM115
        handle.write(line)


def _attempt(ctx: StepContext) -> None:
    if soak_fails(ctx.run_id, ctx.step_slug, ctx.task_index, ctx.attempt):
        _record(ctx, ok=False)
        raise InjectedFailure(f"injected failure, attempt {ctx.attempt}")
    _record(ctx, ok=True)


@soak.step
def load(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _attempt(ctx)
    return {"n": input["n"], "label": input["label"]}


@soak.array(depends_on=[load])
async def items(input: dict[str, Any], ctx: StepContext) -> list[int]:
    _attempt(ctx)
    return list(range(input["load"]["n"]))


@soak.map(array=items)
def square(x: int, ctx: StepContext) -> int:
    _attempt(ctx)
    return x * x


@soak.step(depends_on=[load])
async def meta(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _attempt(ctx)
    return {"label": input["load"]["label"].upper()}


@soak.step(depends_on=[square, meta])
def total(input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _attempt(ctx)
    return {"sum": sum(input["square"]), "label": input["meta"]["label"]}

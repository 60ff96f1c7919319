"""Flows run by worker processes in tests (importable as tests.worker.procflows:NAME)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from pgflow_worker._flow import Flow

slow = Flow("slow_proc", timeout=3, base_delay=1)


@slow.step
async def work(input: dict[str, Any], ctx: Any) -> dict[str, Any]:
    async with ctx.connection() as conn:
        await conn.execute("select pg_notify('test_task_started', %s)", (str(ctx.attempt),))
    if ctx.attempt == 1:
        await asyncio.sleep(float(input["seconds"]))  # the work this step stands for
    return {"pid": os.getpid(), "attempt": ctx.attempt}


shared = Flow("shared_proc")


@shared.map
def each(x: int) -> dict[str, int]:
    time.sleep(0.05)  # simulated work, so both workers get a share
    return {"pid": os.getpid(), "x": x}

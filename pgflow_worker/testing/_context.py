"""Building a handler's context without a worker, to unit-test one handler."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from .._context import FlowInputCache, StepContext
from .._settings import WorkerSettings
from .._sql_client import StepTask

__all__ = ["make_context"]

_log = logging.getLogger("pgflow.testing")


def make_context(
    *,
    flow_input: Any = None,
    input: Any = None,
    flow_slug: str = "test_flow",
    step_slug: str = "test_step",
    run_id: uuid.UUID | str | None = None,
    task_index: int = 0,
    attempt: int = 1,
    settings: WorkerSettings | None = None,
    shutdown: asyncio.Event | None = None,
) -> StepContext:
    """A :class:`~pgflow_worker.StepContext` as a worker would pass it, with no database.

    ``ctx.flow_input`` and ``await ctx.get_flow_input()`` give ``flow_input``; ``ctx.run_id``,
    ``ctx.attempt`` and the rest give what is passed here. ``ctx.connection()`` and
    ``ctx.execute()`` raise :class:`~pgflow_worker.HandlerContextError`: a handler that needs
    the database is tested by running its flow (the ``pgflow_run`` fixture).
    """
    rid = uuid.UUID(str(run_id)) if run_id is not None else uuid.uuid4()
    task = StepTask(
        flow_slug=flow_slug,
        run_id=rid,
        step_slug=step_slug,
        task_index=task_index,
        msg_id=0,
        input=input,
        flow_input=flow_input,
        has_flow_input=True,
        attempt=attempt,
    )
    inputs = FlowInputCache(None)
    inputs.remember(rid, flow_input)
    logger = logging.LoggerAdapter(
        _log,
        {
            "run_id": str(rid),
            "flow_slug": flow_slug,
            "step_slug": step_slug,
            "task_index": task_index,
        },
    )
    return StepContext(
        task=task,
        raw_message={
            "msg_id": 0,
            "read_ct": attempt,
            "enqueued_at": None,
            "vt": None,
            "message": {
                "flow_slug": flow_slug,
                "run_id": str(rid),
                "step_slug": step_slug,
                "task_index": task_index,
            },
            "headers": None,
        },
        settings=settings or WorkerSettings(),
        shutdown=shutdown or asyncio.Event(),
        logger=logger,
        _pool=None,
        _inputs=inputs,
        _loop=None,
    )

"""The testing helpers that need no database: a handler's context, the run's report."""

from __future__ import annotations

import pytest

from pgflow_worker import FlowRunTimeout, HandlerContextError, StepNotFound
from pgflow_worker.testing import FlowRunResult, StepResult, make_context


async def test_context_serves_its_input_to_async_handlers() -> None:
    ctx = make_context(flow_input={"n": 1}, step_slug="double", task_index=3)
    assert await ctx.get_flow_input() == {"n": 1}
    assert (ctx.step_slug, ctx.task_index, ctx.attempt) == ("double", 3, 1)
    with pytest.raises(HandlerContextError, match="no database"):
        async with ctx.connection():
            pass


def _result(status: str) -> FlowRunResult:
    steps = {
        "a": StepResult("a", "completed", 1, None, 1),
        "b": StepResult("b", status, None, "ValueError: bad" if status == "failed" else None, 2),
    }
    return FlowRunResult(
        "r1", "f", "failed" if status == "failed" else "started", {}, None, None, steps
    )


def test_failed_run_names_its_step_and_error() -> None:
    result = _result("failed")
    with pytest.raises(AssertionError, match=r"step 'b' failed: ValueError: bad \(after 2"):
        result.assert_completed()
    with pytest.raises(StepNotFound, match="no step 'c'"):
        result.step("c")


def test_timeout_names_the_steps_not_ended() -> None:
    error = FlowRunTimeout(_result("started"), 2.0)
    assert isinstance(error, TimeoutError)
    assert "after 2 s" in str(error)
    assert "'b' started" in str(error)

"""Running a flow to its end on a real worker, in process, for a test."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgflow_client import PgflowClient, StatusUnreachable

from .._flow import Flow
from .._shape import ensure_flow
from .._worker import FlowWorker
from ..errors import FlowRunTimeout, StepNotFound

__all__ = ["FlowRunResult", "FlowRunner", "StepResult", "run_flow"]

#: Worker settings for tests: quick polls, a quick stop.
_TEST_SETTINGS: dict[str, Any] = {
    "poll_interval_ms": 20,
    "max_poll_seconds": 1,
    "shutdown_timeout": 5.0,
}


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step of a finished run, as the database recorded it.

    ``attempts`` is the most attempts any of its tasks took; ``error_message`` is the step's,
    or the last task error when the step itself has none (a retried task that then succeeded).
    """

    step_slug: str
    status: str
    output: Any
    error_message: str | None
    attempts: int
    skip_reason: str | None = None


@dataclass(frozen=True, slots=True)
class FlowRunResult:
    """A run that ended (or was still running when its time ran out), with its steps."""

    run_id: str
    flow_slug: str
    status: str
    input: Any
    output: Any
    error_message: str | None
    steps: Mapping[str, StepResult] = field(default_factory=dict)

    def step(self, step_slug: str) -> StepResult:
        """The step named ``step_slug``; :class:`~pgflow_worker.StepNotFound` names the steps
        the run has when there is none."""
        try:
            return self.steps[step_slug]
        except KeyError:
            raise StepNotFound(self.flow_slug, step_slug) from None

    def assert_completed(self) -> None:
        """Raise AssertionError, naming each step that did not complete and its error,
        unless the run completed."""
        if self.status != "completed":
            raise AssertionError(f"run {self.run_id} did not complete: {self!r}")

    def __repr__(self) -> str:
        parts = [f"FlowRunResult({self.flow_slug!r}, status={self.status!r}"]
        if self.error_message:
            parts.append(f"error_message={self.error_message!r}")
        for step in self.steps.values():
            if step.status != "completed":
                detail = f"step {step.step_slug!r} {step.status}"
                if step.error_message:
                    detail += f": {step.error_message}"
                if step.attempts > 1:
                    detail += f" (after {step.attempts} attempts)"
                parts.append(detail)
        return ", ".join(parts) + ")"


async def run_flow(
    flow: Flow,
    input: Any,
    dsn: str,
    *,
    timeout: float = 30.0,
    base_delay: int | None = 0,
    **worker_settings: Any,
) -> FlowRunResult:
    """Run ``flow`` once on a worker of its own against ``dsn`` and return the ended run.

    The flow is compiled into the database first. ``base_delay`` replaces the flow's and its
    steps' retry delay in that database (0, the default, retries at once; ``None`` keeps the
    flow's own). A run still going after ``timeout`` seconds raises
    :class:`~pgflow_worker.FlowRunTimeout`, naming the steps that had not ended.
    """
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await ensure_flow(conn, flow)
        if base_delay is not None:
            await conn.execute(
                "update pgflow.flows set opt_base_delay = %s where flow_slug = %s",
                (base_delay, flow.slug),
            )
            await conn.execute(
                "update pgflow.steps set opt_base_delay = %s"
                " where flow_slug = %s and opt_base_delay is not null",
                (base_delay, flow.slug),
            )
    worker = FlowWorker(flow, dsn, **{**_TEST_SETTINGS, **worker_settings})
    working = asyncio.create_task(worker.run(install_signal_handlers=False))
    finished = False
    try:
        await _first(worker.wait_started(), working)
        client = await PgflowClient.connect(dsn)
        async with client:
            run = await client.start_flow(flow.slug, input)
            run_id = run.run_id
            with contextlib.suppress(StatusUnreachable):
                try:
                    async with asyncio.timeout(timeout):
                        await _first(run.wait_for_status("completed", timeout=None), working)
                    finished = True
                except TimeoutError:
                    pass
    finally:
        worker.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await working
    result = await _read_result(dsn, run_id)
    if result.status == "started" and not finished:
        raise FlowRunTimeout(result, timeout)
    return result


async def _first(awaitable: Any, working: asyncio.Task[None]) -> None:
    """Await ``awaitable``; if the worker ends first, raise what ended it."""
    waiting = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({waiting, working}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        waiting.cancel()
        raise
    if waiting in done:
        waiting.result()
        return
    waiting.cancel()
    working.result()  # raises what stopped the worker
    raise RuntimeError("the worker stopped before the run ended")


async def _read_result(dsn: str, run_id: str) -> FlowRunResult:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select run_id::text, flow_slug, status, input, output"
            " from pgflow.runs where run_id = %s",
            (run_id,),
        )
        row = await cur.fetchone()
        if row is None:
            raise LookupError(f"run {run_id} does not exist")
        cur = await conn.execute(
            "select s.step_slug, s.status, s.output, s.error_message, s.skip_reason,"
            " coalesce(max(t.attempts_count), 0),"
            " (array_agg(t.error_message order by t.task_index)"
            "  filter (where t.error_message is not null))[1]"
            " from pgflow.step_states s"
            " join pgflow.steps d using (flow_slug, step_slug)"
            " left join pgflow.step_tasks t using (run_id, step_slug)"
            " where s.run_id = %s"
            " group by s.step_slug, s.status, s.output, s.error_message, s.skip_reason,"
            " d.step_index order by d.step_index",
            (run_id,),
        )
        steps = {
            slug: StepResult(
                step_slug=slug,
                status=status,
                output=output,
                error_message=error or task_error,
                attempts=attempts,
                skip_reason=skip_reason,
            )
            for slug, status, output, error, skip_reason, attempts, task_error in (
                await cur.fetchall()
            )
        }
    rid, slug, status, run_input, output = row
    # A run has no error column: its error is that of the step that failed it.
    error = next((s.error_message for s in steps.values() if s.status == "failed"), None)
    return FlowRunResult(rid, slug, status, run_input, output, error, steps)


class FlowRunner:
    """Runs flows to their end against one database: what the ``pgflow_run`` fixture is.

    Call it from sync tests (``runner(flow, input)``); async tests may call it too (it then
    runs the flow on a thread of its own) or ``await runner.run_async(flow, input)``.
    """

    def __init__(self, dsn: str, **worker_settings: Any) -> None:
        self.dsn = dsn
        self._worker_settings = worker_settings

    def __call__(
        self, flow: Flow, input: Any, *, timeout: float = 30.0, base_delay: int | None = 0
    ) -> FlowRunResult:
        """Run ``flow`` with ``input`` and return the ended run (see :func:`run_flow`)."""
        coro = self.run_async(flow, input, timeout=timeout, base_delay=base_delay)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # Called from an async test: its loop is busy waiting for this call.
        outcome: list[FlowRunResult] = []
        failure: list[BaseException] = []

        def target() -> None:
            try:
                outcome.append(asyncio.run(coro))
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=target, name="pgflow-run", daemon=True)
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return outcome[0]

    async def run_async(
        self, flow: Flow, input: Any, *, timeout: float = 30.0, base_delay: int | None = 0
    ) -> FlowRunResult:
        """The async form of calling the runner."""
        return await run_flow(
            flow,
            input,
            self.dsn,
            timeout=timeout,
            base_delay=base_delay,
            **self._worker_settings,
        )

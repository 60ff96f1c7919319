"""What a FlowWorker does with real flows: inputs, maps, retries, timeouts, bad outputs."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Any

import pytest
from pydantic import BaseModel

from pgflow_worker._flow import Flow
from pgflow_worker._worker import FlowWorker
from tests.worker.helpers import start_run, steps_of, tasks_of, wait_run

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 50}


async def run_flow(db_url: str, flow: Flow, payload: Any, **settings: Any) -> dict[str, Any]:
    async with FlowWorker(flow, db_url, **{**FAST, **settings}):
        run_id = await start_run(db_url, flow.slug, payload)
        run = await wait_run(db_url, run_id)
    run["_steps"] = await steps_of(db_url, run_id)
    run["_tasks"] = await tasks_of(db_url, run_id)
    return run


async def test_diamond_dag_with_sync_and_async_handlers(db_url: str) -> None:
    flow = Flow("diamond")
    seen: dict[str, Any] = {}

    @flow.step
    def a(input: Any) -> int:
        seen["a"] = input
        return int(input["n"])

    @flow.step(depends_on=[a])
    async def b(input: Any) -> int:
        return int(input["a"]) + 1

    @flow.step(depends_on=["a"])
    def c(input: Any, ctx: Any) -> int:
        seen["c_thread"] = threading.current_thread().name
        return int(input["a"]) * 10

    @flow.step(depends_on=[b, c])
    async def d(input: Any, ctx: Any) -> dict[str, Any]:
        seen["d_input"] = input
        seen["d_flow_input"] = await ctx.get_flow_input()
        return {"sum": input["b"] + input["c"]}

    run = await run_flow(db_url, flow, {"n": 2})
    assert run["status"] == "completed"
    assert run["output"] == {"d": {"sum": 23}}
    assert seen["a"] == {"n": 2}
    assert seen["d_input"] == {"b": 3, "c": 20}
    assert seen["d_flow_input"] == {"n": 2}
    assert seen["c_thread"].startswith("pgflow-diamond")


async def test_root_map_and_dependent_map_over_an_array_step(db_url: str) -> None:
    flow = Flow("maps")

    @flow.map
    def square(x: int) -> int:
        return x * x

    @flow.array(depends_on=[square])
    def pairs(input: dict[str, list[int]]) -> list[list[int]]:
        return [[i, v] for i, v in enumerate(input["square"])]

    @flow.map(array=pairs)
    async def label(pair: list[int], ctx: Any) -> str:
        return f"{pair[0]}:{pair[1]}@{ctx.task_index}"

    run = await run_flow(db_url, flow, [3, 1, 2])
    assert run["status"] == "completed"
    assert run["output"] == {"label": ["0:9@0", "1:1@1", "2:4@2"]}
    assert run["_steps"]["square"]["output"] == [9, 1, 4]


async def test_empty_arrays_complete_without_tasks(db_url: str) -> None:
    flow = Flow("empties")
    calls: list[str] = []

    @flow.array
    def nothing(input: Any) -> list[int]:
        calls.append("nothing")
        return []

    @flow.map(array=nothing)
    def each(x: int) -> int:
        calls.append("each")
        return x

    @flow.step(depends_on=[each])
    def after(input: Any) -> Any:
        calls.append("after")
        return input

    run = await run_flow(db_url, flow, {})
    assert run["status"] == "completed"
    assert run["output"] == {"after": {"each": []}}
    assert calls == ["nothing", "after"]
    assert run["_steps"]["each"]["initial_tasks"] == 0


async def test_empty_root_map_completes_inside_start_flow(db_url: str) -> None:
    flow = Flow("empty_root")

    @flow.map
    def each(x: int) -> int:
        raise AssertionError("no element, no call")

    async with FlowWorker(flow, db_url, **FAST):
        run_id = await start_run(db_url, "empty_root", [])
        run = await wait_run(db_url, run_id)
    assert (run["status"], run["output"]) == ("completed", {"each": []})


async def test_handler_failing_twice_then_succeeding(db_url: str) -> None:
    flow = Flow("flaky", base_delay=1, max_attempts=3)
    attempts: list[int] = []

    @flow.step
    async def wobble(input: Any, ctx: Any) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} lost the connection")
        return "steady"

    run = await run_flow(db_url, flow, {})
    assert run["status"] == "completed"
    assert attempts == [1, 2, 3]
    (task,) = run["_tasks"]
    assert task["attempts_count"] == 3
    assert task["status"] == "completed"
    assert task["error_message"] == "ConnectionError: attempt 2 lost the connection"


async def test_exhausted_retries_fail_the_run(db_url: str) -> None:
    flow = Flow("doomed", base_delay=1)

    @flow.step(max_attempts=2)
    def boom(input: Any) -> None:
        raise ValueError("bad input shape")

    run = await run_flow(db_url, flow, {})
    assert run["status"] == "failed"
    step = run["_steps"]["boom"]
    assert (step["status"], step["error_message"]) == ("failed", "ValueError: bad input shape")
    assert run["_tasks"][0]["attempts_count"] == 2


async def test_a_result_after_the_run_failed_is_harmless(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``slow`` is still running when ``boom`` fails the run: its task is cancelled, its late
    result is sent once, changes nothing and is no error, and the worker goes on to finish
    the next run."""
    flow = Flow("late_result", max_attempts=1)
    release = asyncio.Event()
    slow_done = asyncio.Event()

    @flow.step
    async def slow(input: Any) -> str:
        await release.wait()
        slow_done.set()
        return "late"

    @flow.step
    def boom(input: Any) -> str:
        if input["fail"]:
            raise RuntimeError("boom")
        return "fine"

    async with FlowWorker(flow, db_url, **FAST) as worker:
        failed_id = await start_run(db_url, flow.slug, {"fail": True})
        failed = await wait_run(db_url, failed_id)
        assert failed["status"] == "failed"
        release.set()
        await asyncio.wait_for(slow_done.wait(), 10)
        next_id = await start_run(db_url, flow.slug, {"fail": False})
        following = await wait_run(db_url, next_id)
        # boom's failure; slow's late result, then both of the second run.
        assert (worker.stats.failures, worker.stats.completions) == (1, 3)
    assert following["status"] == "completed"
    assert [r.getMessage() for r in caplog.records if "report" in r.getMessage()] == []
    tasks = {t["step_slug"]: t for t in await tasks_of(db_url, failed_id)}
    assert (tasks["boom"]["status"], tasks["slow"]["status"]) == ("failed", "cancelled")
    assert tasks["slow"]["output"] is None


async def test_hung_async_handler_times_out_and_is_retried(db_url: str) -> None:
    flow = Flow("hung", timeout=3, base_delay=1)
    never = asyncio.Event()

    @flow.step
    async def stuck(input: Any, ctx: Any) -> str:
        if ctx.attempt == 1:
            await never.wait()
        return f"attempt {ctx.attempt}"

    run = await run_flow(db_url, flow, {})
    assert run["status"] == "completed"
    assert run["output"] == {"stuck": "attempt 2"}
    (task,) = run["_tasks"]
    assert task["attempts_count"] == 2
    assert "timed out after 3 s" in task["error_message"]


async def test_hung_sync_handler_is_abandoned_and_retried(db_url: str) -> None:
    flow = Flow("hung_sync", timeout=3, base_delay=1)
    release = threading.Event()

    @flow.step
    def stuck(input: Any, ctx: Any) -> str:
        if ctx.attempt == 1:
            release.wait(30)
        return f"attempt {ctx.attempt}"

    try:
        run = await run_flow(db_url, flow, {})
    finally:
        release.set()
    assert run["output"] == {"stuck": "attempt 2"}
    assert "TimeoutError" in run["_tasks"][0]["error_message"]


async def test_sync_handlers_reuse_idle_threads(db_url: str) -> None:
    """A chain of sync steps, one attempt after another: the later attempts run on the thread
    the first one left idle rather than on a new thread each."""
    flow = Flow("sync_chain")
    names: list[str] = []

    @flow.step
    def first(input: Any) -> int:
        names.append(threading.current_thread().name)
        return 1

    @flow.step(depends_on=[first])
    def second(input: Any) -> int:
        names.append(threading.current_thread().name)
        return 2

    @flow.step(depends_on=[second])
    def third(input: Any) -> int:
        names.append(threading.current_thread().name)
        return 3

    run = await run_flow(db_url, flow, {})
    assert run["output"] == {"third": 3}
    assert names == ["pgflow-sync_chain-1"] * 3


async def test_lost_lease_is_retried_when_the_worker_does_not_enforce_timeouts(
    db_url: str,
) -> None:
    """Without the worker's own timeout, the SQL notices the expired lease (timeout + 2 s)."""
    flow = Flow("lease", timeout=3, base_delay=1)
    never = asyncio.Event()

    @flow.step
    async def stuck(input: Any, ctx: Any) -> str:
        if ctx.attempt == 1:
            await never.wait()
        return f"attempt {ctx.attempt}"

    run = await run_flow(db_url, flow, {}, enforce_timeouts=False, shutdown_timeout=0.5)
    assert run["output"] == {"stuck": "attempt 2"}
    assert "lease expired" in run["_tasks"][0]["error_message"]


async def test_start_delay_is_respected(db_url: str) -> None:
    flow = Flow("delayed")

    @flow.step
    def first(input: Any) -> int:
        return 1

    @flow.step(depends_on=[first], start_delay=2)
    def later(input: Any) -> int:
        return 2

    run = await run_flow(db_url, flow, {})
    assert run["status"] == "completed"
    step_started = dt.datetime.fromisoformat(run["_steps"]["later"]["started_at"])
    task = next(t for t in run["_tasks"] if t["step_slug"] == "later")
    task_started = dt.datetime.fromisoformat(task["started_at"])
    assert task_started - step_started >= dt.timedelta(seconds=2)


async def test_non_json_output_fails_the_task_naming_step_and_type(db_url: str) -> None:
    flow = Flow("not_json", max_attempts=1)

    @flow.step
    def when(input: Any) -> dict[str, Any]:
        return {"at": dt.datetime(2026, 1, 1)}

    run = await run_flow(db_url, flow, {})
    assert run["status"] == "failed"
    message = run["_steps"]["when"]["error_message"]
    assert "HandlerOutputError" in message
    assert "'when'" in message
    assert "datetime" in message


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_base_exceptions_fail_the_task_but_not_the_worker(db_url: str, kind: str) -> None:
    flow = Flow(f"exits_{kind}", max_attempts=1)

    if kind == "sync":

        @flow.map
        def each(x: int) -> int:
            if x == 1:
                raise SystemExit(3)
            if x == 2:
                raise KeyboardInterrupt
            return x

    else:

        @flow.map
        async def each(x: int) -> int:
            if x == 1:
                raise SystemExit(3)
            if x == 2:
                raise KeyboardInterrupt
            return x

    async with FlowWorker(flow, db_url, **FAST) as worker:
        failed = await wait_run(db_url, await start_run(db_url, flow.slug, [0, 1, 2]))
        ok = await wait_run(db_url, await start_run(db_url, flow.slug, [0, 5]))
    assert failed["status"] == "failed"
    assert ok["status"] == "completed"
    assert ok["output"] == {"each": [0, 5]}
    assert worker.failed >= 1


class Person(BaseModel):
    first_name: str
    last_name: str


class Greeting(BaseModel):
    text: str
    length: int


async def test_pydantic_models_for_input_and_output(db_url: str) -> None:
    flow = Flow("typed")

    @flow.step
    def greet(person: Person) -> Greeting:
        text = f"Hello, {person.first_name} {person.last_name}!"
        return Greeting(text=text, length=len(text))

    run = await run_flow(db_url, flow, {"first_name": "Ada", "last_name": "Lovelace"})
    assert run["output"] == {"greet": {"text": "Hello, Ada Lovelace!", "length": 20}}


async def test_context_describes_the_task(db_url: str) -> None:
    flow = Flow("ctx")
    seen: dict[str, Any] = {}

    @flow.step
    def root(input: Any) -> list[str]:
        return ["x", "y"]

    @flow.map(array=root)
    def each(item: str, ctx: Any) -> str:
        if ctx.task_index == 1:
            seen.update(
                run_id=ctx.run_id,
                step=ctx.step_slug,
                attempt=ctx.attempt,
                flow_input=ctx.flow_input,
                message=ctx.raw_message["message"],
                batch_size=ctx.settings.batch_size,
                shutdown=ctx.shutdown_requested,
            )
        return item.upper()

    async with FlowWorker(flow, db_url, batch_size=7, **FAST):
        run_id = await start_run(db_url, "ctx", {"hello": "world"})
        await wait_run(db_url, run_id)
    assert seen["run_id"] == run_id
    assert (seen["step"], seen["attempt"], seen["batch_size"]) == ("each", 1, 7)
    assert seen["flow_input"] == {"hello": "world"}
    assert seen["message"] == {
        "flow_slug": "ctx",
        "run_id": str(run_id),
        "step_slug": "each",
        "task_index": 1,
    }
    assert seen["shutdown"] is False


async def test_conditions_mixed_with_a_retried_step(db_url: str) -> None:
    """A gated step that fails once and succeeds on retry; conditions downstream are checked
    against the output of the attempt that succeeded, and skipped steps stay skipped."""
    flow = Flow("gated_retry", max_attempts=3, base_delay=1)
    attempts: list[int] = []
    seen: dict[str, Any] = {}

    @flow.step(if_={"plan": "pro"})
    def premium(input: Any) -> str:
        raise AssertionError("the plan is free: this step is skipped")

    @flow.step(if_={"plan": "free"})
    async def fetch(input: Any, ctx: Any) -> dict[str, int]:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("the first call drops")
        return {"attempt": ctx.attempt}

    @flow.step(depends_on=[fetch], if_={"fetch": {"attempt": 2}})
    def on_retry(input: dict[str, Any]) -> str:
        return "after a retry"

    @flow.step(depends_on=[fetch], if_={"fetch": {"attempt": 1}})
    def first_time(input: dict[str, Any]) -> str:
        raise AssertionError("fetch needed a retry: this step is skipped")

    @flow.step(depends_on=[premium, on_retry, first_time])
    def report(input: dict[str, Any]) -> list[str]:
        seen["report"] = input
        return sorted(input)

    run = await run_flow(db_url, flow, {"plan": "free"})
    assert run["status"] == "completed"
    assert run["output"] == {"report": ["on_retry"]}
    assert seen["report"] == {"on_retry": "after a retry"}
    assert attempts == [1, 2]
    states = {
        slug: (s["status"], s["skip_reason"], s["remaining_tasks"])
        for slug, s in run["_steps"].items()
    }
    assert states == {
        "premium": ("skipped", "condition_unmet", None),
        "fetch": ("completed", None, 0),
        "on_retry": ("completed", None, 0),
        "first_time": ("skipped", "condition_unmet", None),
        "report": ("completed", None, 0),
    }
    tasks = {t["step_slug"]: t for t in run["_tasks"]}
    assert set(tasks) == {"fetch", "on_retry", "report"}  # skipped steps got no task
    assert (tasks["fetch"]["status"], tasks["fetch"]["attempts_count"]) == ("completed", 2)
    assert tasks["fetch"]["error_message"] == "ConnectionError: the first call drops"
    assert (tasks["on_retry"]["attempts_count"], tasks["report"]["attempts_count"]) == (1, 1)
    assert run["remaining_steps"] == 0

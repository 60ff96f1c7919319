"""SyncPgflowClient end to end: real Postgres, a real worker in a thread of its own."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from pgflow_client import (
    ClientClosed,
    FlowNotFound,
    FlowRunStatus,
    FlowStepStatus,
    StatusUnreachable,
    SyncFlowRun,
    SyncFlowStep,
    SyncPgflowClient,
    WaitCancelled,
    WaitTimeout,
)
from pgflow_worker import Flow, FlowWorker
from pgflow_worker._shape import ensure_flow
from tests.e2e.flows import chain, mapping

FAST = {"max_poll_seconds": 1, "poll_interval_ms": 20}

CHAIN_EVENTS = [
    "step:completed:fetch",
    "step:started:summarize",
    "step:completed:summarize",
    "step:started:publish",
    "step:completed:publish",
    "run:completed",
]


# -- helpers --------------------------------------------------------------------------------------


async def adefine(db_url: str, *flows: Flow) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for flow in flows:
            await ensure_flow(conn, flow)


def define(db_url: str, *flows: Flow) -> None:
    """Create the flows in the database (from code that has no running loop)."""
    asyncio.run(adefine(db_url, *flows))


@contextlib.contextmanager
def worker_thread(db_url: str, *flows: Flow) -> Iterator[None]:
    """Run a worker for each flow on an event loop in a thread of its own."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        state["stop"] = (asyncio.get_running_loop(), stop)
        async with contextlib.AsyncExitStack() as stack:
            for flow in flows:
                await stack.enter_async_context(FlowWorker(flow, db_url, **FAST))
            ready.set()
            await stop.wait()

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            state["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=main, name="test-worker", daemon=True)
    thread.start()
    assert ready.wait(30), "the worker did not start within 30 s"
    try:
        if "error" in state:
            raise state["error"]
        yield
    finally:
        if "stop" in state:
            loop, stop = state["stop"]
            with contextlib.suppress(RuntimeError):  # its loop already ended
                loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        assert not thread.is_alive(), "the worker did not stop within 30 s"
    if "error" in state:
        raise state["error"]


def wait_until(condition: Callable[[], bool], what: str, *, within: float = 10.0) -> None:
    """Block until ``condition()`` holds, checking every few milliseconds, for ``within`` s."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within} s: {what}")
        time.sleep(0.005)


def listeners(run: SyncFlowRun) -> int:
    """Callbacks, waits and iterators on the run and its steps (counted on the loop thread)."""
    return run._portal.call(run.async_run._listener_count)


def loop_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("pgflow-client-")}


def event_name(event: Any) -> str:
    step = getattr(event, "step_slug", None)
    return f"{event.event_type}{':' + step if step else ''}"


@pytest.fixture
def client(db_url: str) -> Iterator[SyncPgflowClient]:
    with SyncPgflowClient.connect(db_url) as c:
        yield c


# -- starting, waiting, outputs -------------------------------------------------------------------


def test_chain_runs_to_completion(db_url: str, client: SyncPgflowClient) -> None:
    flow = chain()
    define(db_url, flow)
    run = client.start_flow("e2e_chain", {"id": 7})
    assert isinstance(run, SyncFlowRun)
    assert run.status is FlowRunStatus.STARTED
    assert run.flow_slug == "e2e_chain"
    assert run.input == {"id": 7}
    assert run.remaining_steps == 3
    assert list(run.steps) == ["fetch", "summarize", "publish"]
    assert run.step("fetch").status is FlowStepStatus.STARTED
    seen: list[tuple[Any, str]] = []
    run.step("publish").on(
        "completed", lambda e: seen.append((e.output, threading.current_thread().name))
    )
    with worker_thread(db_url, flow):
        assert run.wait_for_status("completed", timeout=30) is run
    assert run.status is FlowRunStatus.COMPLETED
    assert run.output == {"publish": {"published": "summary of title-7"}}
    assert run.remaining_steps == 0
    assert run.completed_at is not None
    summarize = run.step("summarize")
    assert isinstance(summarize, SyncFlowStep)
    assert summarize is run.steps["summarize"]
    assert summarize.output == "summary of title-7"
    assert summarize.status is FlowStepStatus.COMPLETED
    assert summarize.completed_at is not None
    # Callbacks run on the client's own loop thread.
    [(output, thread_name)] = seen
    assert output == {"published": "summary of title-7"}
    assert thread_name.startswith("pgflow-client-")
    html = run._repr_html_()
    assert run.run_id in html
    assert html.count(">completed</span>") == 4
    assert "summary of title-7" in summarize._repr_html_()
    assert repr(run) == (
        f"<SyncFlowRun run_id={run.run_id!r} flow_slug='e2e_chain' status='completed'>"
    )


def test_map_flow_and_step_waits(db_url: str, client: SyncPgflowClient) -> None:
    flow = mapping()
    define(db_url, flow)
    run = client.start_flow("e2e_map", [1, 2, 3])
    with worker_thread(db_url, flow):
        double = run.step("double").wait_for_status("completed", timeout=30)
        assert double is run.step("double")
        run.wait_for_status("completed", timeout=30)
    assert double.output == [2, 4, 6]
    assert run.output == {"total": 12}
    # A wait for a status already passed returns at once.
    assert run.step("double").wait_for_status("started", timeout=0.01) is double


def test_every_event_once_listening_before_the_worker(
    db_url: str, client: SyncPgflowClient
) -> None:
    flow = chain()
    define(db_url, flow)
    run = client.start_flow("e2e_chain", {"id": 2})
    names: list[str] = []

    def consume() -> None:
        names.extend(event_name(event) for event in run.events())

    with ThreadPoolExecutor(1) as pool:
        consumer = pool.submit(consume)
        wait_until(lambda: listeners(run) == 1, "the iterator listens")
        with worker_thread(db_url, flow):
            consumer.result(30)
    assert names == CHAIN_EVENTS


def test_leaving_events_early_stops_listening(db_url: str, client: SyncPgflowClient) -> None:
    flow = chain()
    define(db_url, flow)
    run = client.start_flow("e2e_chain", {"id": 3})

    def first_event() -> str:
        for event in run.events():
            return event_name(event)
        raise AssertionError("the run ended before its first event")

    with ThreadPoolExecutor(1) as pool:
        consumer = pool.submit(first_event)
        wait_until(lambda: listeners(run) == 1, "the iterator listens")
        with worker_thread(db_url, flow):
            assert consumer.result(30) == "step:completed:fetch"
            assert listeners(run) == 0
            run.wait_for_status("completed", timeout=30)
    assert list(run.events()) == []  # already terminal


def test_disposal_ends_events(db_url: str, client: SyncPgflowClient) -> None:
    define(db_url, chain())
    run = client.start_flow("e2e_chain", {"id": 3})
    events = run.events()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(next, events, None)
        wait_until(lambda: listeners(run) == 1, "the iterator listens")
        run.dispose()
        assert pending.result(10) is None
    assert listeners(run) == 0


def test_on_decorator_and_unsubscribe(db_url: str, client: SyncPgflowClient) -> None:
    flow = chain()
    define(db_url, flow)
    run = client.start_flow("e2e_chain", {"id": 4})
    steps: list[str] = []
    runs: list[str] = []

    @run.step("summarize").on("*")
    def on_summarize(event: Any) -> None:
        steps.append(event.event_type)

    unsubscribe = run.on("*", lambda e: runs.append(e.event_type))
    dropped = run.on("completed", lambda e: runs.append("never"))
    assert listeners(run) == 3
    dropped()
    dropped()  # a second call does nothing
    assert listeners(run) == 2
    with pytest.raises(ValueError, match="unknown event 'done'"):
        run.on("done")  # type: ignore[call-overload]
    with worker_thread(db_url, flow):
        run.wait_for_status("completed", timeout=30)
    assert steps == ["step:started", "step:completed"]
    assert runs == ["run:completed"]
    unsubscribe()


# -- waits that end otherwise ---------------------------------------------------------------------


def test_wait_timeout(db_url: str, client: SyncPgflowClient) -> None:
    define(db_url, chain())
    run = client.start_flow("e2e_chain", {"id": 5})
    with pytest.raises(WaitTimeout) as caught:
        run.wait_for_status("completed", timeout=0.2)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.timeout == 0.2
    assert run.run_id in str(caught.value)
    with pytest.raises(WaitTimeout):
        run.step("publish").wait_for_status("started", timeout=0.05)
    assert listeners(run) == 0


def test_status_unreachable(db_url: str, client: SyncPgflowClient) -> None:
    flow = chain()
    define(db_url, flow)
    run = client.start_flow("e2e_chain", {"id": "boom"})
    with worker_thread(db_url, flow), pytest.raises(StatusUnreachable) as caught:
        run.wait_for_status("completed", timeout=60)
    assert caught.value.status == "failed"
    assert caught.value.error_message == "RuntimeError: publishing refused"
    with pytest.raises(StatusUnreachable) as step_caught:
        run.step("publish").wait_for_status("completed", timeout=60)
    assert step_caught.value.step_slug == "publish"
    assert run.error_message == "RuntimeError: publishing refused"


def test_cancel_with_a_threading_event(db_url: str, client: SyncPgflowClient) -> None:
    define(db_url, chain())
    run = client.start_flow("e2e_chain", {"id": 6})
    already = threading.Event()
    already.set()
    with pytest.raises(WaitCancelled, match="cancel event was set"):
        run.wait_for_status("completed", timeout=30, cancel=already)

    cancel = threading.Event()

    def set_once_waiting() -> None:
        wait_until(lambda: listeners(run) == 1, "the wait is registered")
        cancel.set()

    with ThreadPoolExecutor(1) as pool:
        setter = pool.submit(set_once_waiting)
        started = time.monotonic()
        with pytest.raises(WaitCancelled) as caught:
            run.step("publish").wait_for_status("completed", timeout=30, cancel=cancel)
        setter.result(10)
    assert time.monotonic() - started < 10
    assert caught.value.target == "completed"
    assert listeners(run) == 0
    assert run.status is FlowRunStatus.STARTED


def test_keyboard_interrupt_cancels_the_wait(db_url: str, client: SyncPgflowClient) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach only the main thread, and the tests run elsewhere")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT does not raise KeyboardInterrupt in this process")
    define(db_url, chain())
    run = client.start_flow("e2e_chain", {"id": 8})
    main = threading.main_thread().ident
    assert main is not None

    def interrupt_once_waiting() -> None:
        wait_until(lambda: listeners(run) == 1, "the wait is registered")
        signal.pthread_kill(main, signal.SIGINT)

    with ThreadPoolExecutor(1) as pool:
        interrupter = pool.submit(interrupt_once_waiting)
        with pytest.raises(KeyboardInterrupt):
            run.wait_for_status("completed", timeout=60)
        interrupter.result(10)
    # The coroutine behind the wait was cancelled and cleaned up before the interrupt surfaced.
    assert listeners(run) == 0
    assert run.wait_for_status("started", timeout=1) is run
    assert client.get_run(run.run_id) == run


def test_blocking_calls_are_refused_inside_callbacks(db_url: str, client: SyncPgflowClient) -> None:
    flow = chain()
    define(db_url, flow)
    run = client.start_flow("e2e_chain", {"id": 9})
    seen: list[object] = []

    def on_fetched(event: Any) -> None:
        seen.append(run.step("fetch").status)  # reading state is fine
        try:
            run.wait_for_status("completed", timeout=1)
        except RuntimeError as exc:
            seen.append(exc)

    run.step("fetch").on("completed", on_fetched)
    with worker_thread(db_url, flow):
        run.wait_for_status("completed", timeout=30)
    status, refused = seen
    assert status is FlowStepStatus.COMPLETED
    assert isinstance(refused, RuntimeError)
    assert "own loop thread" in str(refused)


# -- finding and releasing runs -------------------------------------------------------------------


def test_get_run_of_existing_and_missing_runs(db_url: str, client: SyncPgflowClient) -> None:
    flow = mapping()
    define(db_url, flow)
    started = client.start_flow("e2e_map", [5])
    assert client.get_run(started.run_id) == started  # this client's cached run
    with SyncPgflowClient.connect(db_url) as other:
        found = other.get_run(uuid.UUID(started.run_id))
        assert found is not None
        assert found != started
        assert found.status is FlowRunStatus.STARTED
        assert found.input == [5]
        with worker_thread(db_url, flow):
            found.wait_for_status("completed", timeout=30)
            started.wait_for_status("completed", timeout=30)
        assert found.output == started.output == {"total": 10}
        assert other.get_run(uuid.uuid4()) is None
        assert other.subscriptions() == frozenset()


def test_errors_are_those_of_the_async_client(client: SyncPgflowClient) -> None:
    with pytest.raises(FlowNotFound) as caught:
        client.start_flow("no_such_flow", {})
    assert caught.value.flow_slug == "no_such_flow"
    assert client.subscriptions() == frozenset()
    assert client.runs == {}


def test_dispose_ends_waits_and_releases_the_subscription(
    db_url: str, client: SyncPgflowClient
) -> None:
    define(db_url, chain())
    run = client.start_flow("e2e_chain", {"id": 10})
    other = client.start_flow("e2e_chain", {"id": 11})
    assert client.subscriptions() == {run.run_id, other.run_id}
    assert set(client.runs) == {run.run_id, other.run_id}
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(run.wait_for_status, "completed", timeout=30)
        wait_until(lambda: listeners(run) == 1, "the wait is registered")
        client.dispose(run.run_id)
        with pytest.raises(WaitCancelled, match="disposed"):
            waiting.result(10)
    assert run.disposed
    assert run.status is FlowRunStatus.STARTED  # state stays readable
    wait_until(lambda: client.subscriptions() == {other.run_id}, "the run is unsubscribed")
    client.dispose_all()
    assert other.disposed
    wait_until(lambda: client.subscriptions() == frozenset(), "every run is unsubscribed")
    assert client.runs == {}


def test_close_stops_the_thread_and_releases_everything(db_url: str) -> None:
    define(db_url, chain())
    before = loop_threads()
    client = SyncPgflowClient.connect(db_url)
    [thread] = loop_threads() - before
    assert thread.daemon
    run = client.start_flow("e2e_chain", {"id": 12})
    assert client.subscriptions() == {run.run_id}
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(run.wait_for_status, "completed", timeout=30)
        wait_until(lambda: listeners(run) == 1, "the wait is registered")
        client.close()
        with pytest.raises(WaitCancelled):
            waiting.result(10)
    assert not thread.is_alive()
    assert loop_threads() == before
    assert client.closed
    assert client.subscriptions() == frozenset()
    assert run.disposed
    client.close()  # idempotent
    with pytest.raises(ClientClosed):
        client.start_flow("e2e_chain", {"id": 13})
    with pytest.raises(ClientClosed):
        client.get_run(run.run_id)
    # Final state stays readable, and waits answer from it.
    assert run.status is FlowRunStatus.STARTED
    assert run.wait_for_status("started") is run
    with pytest.raises(WaitCancelled):
        run.wait_for_status("completed")
    assert list(run.events()) == []
    assert "e2e_chain" in run._repr_html_()


def test_a_failed_connect_leaves_no_thread(db_url: str) -> None:
    before = loop_threads()
    bad = db_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(Exception, match="no_such_database"):
        SyncPgflowClient.connect(bad, connect_timeout=5)
    assert loop_threads() == before


def test_two_clients_side_by_side(db_url: str) -> None:
    flow = chain()
    define(db_url, flow)
    with SyncPgflowClient.connect(db_url) as first, SyncPgflowClient.connect(db_url) as second:
        assert first.loop is not second.loop
        a = first.start_flow("e2e_chain", {"id": 20})
        b = second.start_flow("e2e_chain", {"id": 21})
        with worker_thread(db_url, flow):
            a.wait_for_status("completed", timeout=30)
            b.wait_for_status("completed", timeout=30)
            first.close()
            c = second.start_flow("e2e_chain", {"id": 22})
            c.wait_for_status("completed", timeout=30)
        assert a.output == {"publish": {"published": "summary of title-20"}}
        assert b.output == {"publish": {"published": "summary of title-21"}}
        assert c.output == {"publish": {"published": "summary of title-22"}}


# -- inside running event loops -------------------------------------------------------------------


def _complete_one_run(db_url: str, input: dict[str, Any]) -> Any:
    with SyncPgflowClient.connect(db_url) as client:
        run = client.start_flow("e2e_chain", input)
        return run.wait_for_status("completed", timeout=30).output


async def test_from_a_coroutine_through_to_thread(db_url: str) -> None:
    flow = chain()
    await adefine(db_url, flow)
    # The worker runs on this test's loop while the blocking calls run in a thread.
    async with FlowWorker(flow, db_url, **FAST):
        output = await asyncio.to_thread(_complete_one_run, db_url, {"id": 30})
    assert output == {"publish": {"published": "summary of title-30"}}


async def test_blocking_calls_straight_from_a_coroutine(db_url: str) -> None:
    flow = chain()
    await adefine(db_url, flow)
    with worker_thread(db_url, flow):
        # Like a notebook cell: this loop is blocked meanwhile, the client's own is not.
        output = _complete_one_run(db_url, {"id": 31})
    assert output == {"publish": {"published": "summary of title-31"}}


def test_blocking_calls_in_a_thread_that_runs_a_loop(db_url: str) -> None:
    flow = chain()
    define(db_url, flow)

    async def cell() -> Any:
        asyncio.get_running_loop()  # the situation of a Jupyter kernel
        return _complete_one_run(db_url, {"id": 32})

    with worker_thread(db_url, flow), ThreadPoolExecutor(1) as pool:
        output = pool.submit(asyncio.run, cell()).result(60)
    assert output == {"publish": {"published": "summary of title-32"}}


# -- over Supabase --------------------------------------------------------------------------------


async def test_over_supabase(db_url: str, supabase_env: tuple[str, str]) -> None:
    from supabase import acreate_client

    url, key = supabase_env
    flow = chain()
    await adefine(db_url, flow)

    def scenario() -> list[Any]:
        outputs = []
        with SyncPgflowClient.from_supabase(url, key) as client:
            run = client.start_flow("e2e_chain", {"id": 40})
            outputs.append(run.wait_for_status("completed", timeout=30).output)
        assert client.subscriptions() == frozenset()
        with SyncPgflowClient(lambda: acreate_client(url, key)) as client:
            run = client.start_flow("e2e_chain", {"id": 41})
            outputs.append(run.wait_for_status("completed", timeout=30).output)
        return outputs

    before = loop_threads()
    # The stand-in (when used) serves from this test's loop, so the blocking calls run in a
    # thread; so does the worker.
    async with FlowWorker(flow, db_url, **FAST):
        outputs = await asyncio.to_thread(scenario)
    assert outputs == [
        {"publish": {"published": "summary of title-40"}},
        {"publish": {"published": "summary of title-41"}},
    ]
    assert loop_threads() == before


def test_a_supabase_client_instance_is_refused() -> None:
    before = loop_threads()
    with pytest.raises(TypeError, match="from_supabase"):
        SyncPgflowClient(object())  # type: ignore[arg-type]
    assert loop_threads() == before

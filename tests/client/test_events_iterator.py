"""`run.events()`: every accepted run and step event, ending with the run."""

from __future__ import annotations

import asyncio

from pgflow_client import FlowEvent, FlowRun

from ._factories import (
    OTHER_RUN_ID,
    make_run,
    run_completed,
    run_failed,
    run_row,
    run_started,
    step_completed,
    step_started,
    until,
)


async def collect(run: FlowRun) -> list[FlowEvent]:
    return [event async for event in run.events()]


async def test_yields_run_and_step_events_and_ends_after_the_terminal_one() -> None:
    run = make_run()
    iterating = asyncio.create_task(collect(run))
    await until(lambda: run._listener_count() == 1)
    events: list[FlowEvent] = [
        step_started("a"),
        step_started("a"),  # duplicate: not accepted, not yielded
        run_started(),  # same status: not accepted
        step_completed("a", output=1),
        step_completed("b", run_id=OTHER_RUN_ID),  # foreign
        step_started("b"),
        run_completed(),
        step_completed("b"),  # after the run's end
    ]
    accepted = [run._apply_event(e) for e in events]
    assert accepted == [True, False, False, True, False, True, True, True]
    got = await asyncio.wait_for(iterating, 5)
    assert [e.event_type for e in got] == [
        "step:started",
        "step:completed",
        "step:started",
        "run:completed",
    ]
    assert got[1] is events[3]


async def test_ends_at_once_when_the_run_is_already_terminal() -> None:
    run = make_run(status="failed")
    assert await asyncio.wait_for(collect(run), 5) == []


async def test_several_concurrent_iterators_see_every_event() -> None:
    run = make_run()
    iterating = [asyncio.create_task(collect(run)) for _ in range(3)]
    await until(lambda: run._listener_count() == 3)
    run._apply_event(step_started("a"))
    run._apply_event(run_failed())
    results = await asyncio.wait_for(asyncio.gather(*iterating), 5)
    for got in results:
        assert [e.event_type for e in got] == ["step:started", "run:failed"]
    assert run._listener_count() == 0


async def test_events_before_the_first_iteration_are_not_replayed() -> None:
    run = make_run()
    run._apply_event(step_started("a"))
    iterating = asyncio.create_task(collect(run))
    await until(lambda: run._listener_count() == 1)
    run._apply_event(run_completed())
    assert [e.event_type for e in await asyncio.wait_for(iterating, 5)] == ["run:completed"]


async def test_ends_when_a_silent_snapshot_makes_the_run_terminal() -> None:
    run = make_run()
    iterating = asyncio.create_task(collect(run))
    await until(lambda: run._listener_count() == 1)
    run._apply_snapshot(
        run_row(status="completed", completed_at="2024-01-01T12:00:09+00:00"), [], emit=False
    )
    assert await asyncio.wait_for(iterating, 5) == []


async def test_ends_when_the_run_is_disposed() -> None:
    run = make_run()
    iterating = asyncio.create_task(collect(run))
    await until(lambda: run._listener_count() == 1)
    run._apply_event(step_started("a"))
    run.dispose()
    got = await asyncio.wait_for(iterating, 5)
    assert [e.event_type for e in got] == ["step:started"]
    assert await collect(run) == []


async def test_breaking_out_releases_the_iterator() -> None:
    run = make_run()
    seen: list[FlowEvent] = []

    async def first_only() -> None:
        async for event in run.events():
            seen.append(event)
            break

    task = asyncio.create_task(first_only())
    await until(lambda: run._listener_count() == 1)
    run._apply_event(step_started("a"))
    await asyncio.wait_for(task, 5)
    # The abandoned generator is closed by the event loop's finalizer.
    await until(lambda: run._listener_count() == 0)
    assert len(seen) == 1


async def test_closing_the_iterator_releases_it() -> None:
    run = make_run()
    iterator = run.events()
    first = asyncio.ensure_future(iterator.__anext__())
    await until(lambda: run._listener_count() == 1)
    run._apply_event(step_started("a"))
    assert (await first).event_type == "step:started"
    await iterator.aclose()
    assert run._listener_count() == 0


async def test_an_iterator_keeps_a_terminal_run_alive_until_it_ends() -> None:
    run = make_run()
    iterator = run.events()
    first = asyncio.ensure_future(iterator.__anext__())
    await until(lambda: run._listener_count() == 1)
    run._apply_event(run_completed())
    assert (await first).event_type == "run:completed"
    assert not run.disposed  # the iterator has not ended yet
    async for _ in iterator:
        raise AssertionError("nothing follows the terminal event")
    assert run.disposed


async def test_a_callback_disposing_the_run_still_lets_iterators_see_the_terminal_event() -> None:
    run = make_run()
    run.on("completed", lambda e: run.dispose())
    iterating = asyncio.create_task(collect(run))
    await until(lambda: run._listener_count() == 2)
    run._apply_event(run_completed())
    got = await asyncio.wait_for(iterating, 5)
    assert [e.event_type for e in got] == ["run:completed"]
    assert run.disposed

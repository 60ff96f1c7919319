"""The threads that run sync handlers: reused while idle, never a cap on how many run at once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pgflow_worker._threads import HandlerThreads

WAIT = 10.0


def current() -> threading.Thread:
    return threading.current_thread()


async def test_calls_one_after_another_reuse_one_thread() -> None:
    threads = HandlerThreads("t")
    seen = {await asyncio.wait_for(threads.run(current), WAIT) for _ in range(50)}
    assert len(seen) == 1
    assert threads.started == 1
    (thread,) = seen
    assert thread.name == "t-1"
    assert thread.daemon
    threads.close()
    thread.join(WAIT)
    assert not thread.is_alive()


async def test_calls_at_once_each_get_a_thread() -> None:
    """Eight calls that can only finish together: a pool smaller than eight would hang here."""
    threads = HandlerThreads("t")
    barrier = threading.Barrier(8, timeout=WAIT)

    def meet() -> threading.Thread:
        barrier.wait()
        return current()

    seen = await asyncio.wait_for(asyncio.gather(*(threads.run(meet) for _ in range(8))), WAIT)
    assert len(set(seen)) == 8
    assert threads.started == 8
    threads.close()


async def test_a_call_that_never_returns_keeps_only_its_own_thread() -> None:
    threads = HandlerThreads("t")
    release = threading.Event()
    hung = threads.run(lambda: release.wait(60))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(hung, 0.05)  # abandoned, as the worker does at a step's timeout
    try:
        later = [await asyncio.wait_for(threads.run(current), WAIT) for _ in range(20)]
        assert len(set(later)) == 1
        assert threads.started == 2
    finally:
        release.set()
        threads.close()


async def test_errors_reach_the_caller() -> None:
    threads = HandlerThreads("t")

    def broken() -> None:
        raise ValueError("bad input")

    def exits() -> None:
        raise SystemExit(3)

    with pytest.raises(ValueError, match="bad input"):
        await asyncio.wait_for(threads.run(broken), WAIT)
    with pytest.raises(SystemExit):
        await asyncio.wait_for(threads.run(exits), WAIT)
    # The thread survived both and serves the next call.
    assert await asyncio.wait_for(threads.run(lambda: 7), WAIT) == 7
    assert threads.started == 1
    threads.close()


async def test_an_idle_thread_leaves_and_a_new_one_takes_over() -> None:
    threads = HandlerThreads("t", idle_seconds=0.01)
    first = await asyncio.wait_for(threads.run(current), WAIT)
    first.join(WAIT)
    assert not first.is_alive()
    second = await asyncio.wait_for(threads.run(current), WAIT)
    assert second is not first
    assert threads.started == 2
    threads.close()


async def test_close_lets_idle_threads_leave_and_later_calls_still_run() -> None:
    threads = HandlerThreads("t", idle_seconds=600)
    idle = await asyncio.wait_for(threads.run(current), WAIT)
    threads.close()
    idle.join(WAIT)
    assert not idle.is_alive()
    late = await asyncio.wait_for(threads.run(current), WAIT)
    late.join(WAIT)  # after close, a thread leaves as soon as its call is done
    assert not late.is_alive()


async def test_no_call_is_lost_when_idle_threads_time_out_meanwhile() -> None:
    """Idle waits that run out at every moment race with calls handed to idle threads; every
    call must still run exactly once."""
    threads = HandlerThreads("t", idle_seconds=0.0005)
    lock = threading.Lock()
    runs: list[int] = []

    def note(i: int) -> int:
        with lock:
            runs.append(i)
        return i

    for burst in range(40):
        calls = [threads.run(lambda i=i: note(i)) for i in range(burst * 25, burst * 25 + 25)]
        assert await asyncio.wait_for(asyncio.gather(*calls), WAIT) == list(
            range(burst * 25, burst * 25 + 25)
        )
        await asyncio.sleep(0.001 * (burst % 3))  # let some waits run out between bursts
    assert sorted(runs) == list(range(1000))
    threads.close()


async def test_outcomes_finishing_together_all_arrive_a_stop_iteration_among_them() -> None:
    """Outcomes ready at once reach the loop together; one that a future cannot hold as it is
    (StopIteration) fails its own call as a RuntimeError and keeps none of the others back."""
    threads = HandlerThreads("t")
    barrier = threading.Barrier(6, timeout=WAIT)

    def meet(i: int) -> int:
        barrier.wait()
        if i == 2:
            raise StopIteration
        return i

    calls = [threads.run(lambda i=i: meet(i)) for i in range(6)]
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), WAIT)
    assert [o for i, o in enumerate(outcomes) if i != 2] == [0, 1, 3, 4, 5]
    assert isinstance(outcomes[2], RuntimeError)
    assert isinstance(outcomes[2].__cause__, StopIteration)
    threads.close()

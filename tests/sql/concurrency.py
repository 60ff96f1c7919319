"""Tools for race tests: several real connections acting at the same moment.

Threads line up on a barrier and then call the database together; a test that needs one
call to be parked behind another's lock waits for PostgreSQL to report the wait.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")

Conn = psycopg.Connection[Any]


@contextmanager
def connections(url: str, count: int) -> Iterator[list[Conn]]:
    """``count`` autocommit connections, each with its backend pid known to PostgreSQL."""
    conns = [psycopg.connect(url, autocommit=True) for _ in range(count)]
    try:
        yield conns
    finally:
        for c in conns:
            c.close()


def worker_ids(count: int) -> list[uuid.UUID]:
    return [uuid.UUID(int=0x5000 + i) for i in range(count)]


def together(calls: Sequence[Callable[[], T]], timeout: float = 30) -> list[T]:
    """Run every call in its own thread, released at the same instant; return their results.

    The first exception raised by any call is re-raised here (after all have finished).
    """
    barrier = threading.Barrier(len(calls), timeout=timeout)

    def start(call: Callable[[], T]) -> T:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(start, call) for call in calls]
        return [f.result(timeout=timeout) for f in futures]


def wait_until_blocked(observer: Conn, pid: int, timeout: float = 10) -> None:
    """Return once backend ``pid`` is waiting for a lock held by another backend."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = observer.execute("select cardinality(pg_blocking_pids(%s))", (pid,)).fetchone()
        if row is not None and row[0] > 0:
            return
        time.sleep(0.005)  # polling PostgreSQL's lock table, not waiting for a guess
    raise AssertionError(f"backend {pid} never blocked on a lock within {timeout} s")

"""Worker processes started through the CLI: graceful SIGTERM, sharing work, no double runs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.worker.helpers import start_run, tasks_of, wait_run

ROOT = Path(__file__).resolve().parents[2]


def spawn_worker(db_url: str, target: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgflow_worker",
            "worker",
            target,
            "--db",
            db_url,
            "--max-poll-seconds",
            "1",
            "--poll-interval-ms",
            "50",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


async def wait_for_workers(db_url: str, count: int, timeout: float = 30) -> None:
    async def registered() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            while True:
                cur = await conn.execute("select count(*) from pgflow.workers")
                row = await cur.fetchone()
                if row and row[0] >= count:
                    return
                await asyncio.sleep(0.05)

    await asyncio.wait_for(registered(), timeout)


async def next_notification(conn: psycopg.AsyncConnection[Any], timeout: float = 30) -> str:
    async def first() -> str:
        async for note in conn.notifies():
            return note.payload
        raise AssertionError("notification stream ended")

    return await asyncio.wait_for(first(), timeout)


async def test_sigterm_lets_the_running_task_finish(
    db_url: str, procs: list[subprocess.Popen[str]]
) -> None:
    proc = spawn_worker(db_url, "tests.worker.procflows:slow")
    procs.append(proc)
    await wait_for_workers(db_url, 1)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener:
        await listener.execute("listen test_task_started")
        run_id = await start_run(db_url, "slow_proc", {"seconds": 1.5})
        assert await next_notification(listener) == "1"
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, stderr
    assert "stopping after in-flight tasks finish" in stderr
    run = await wait_run(db_url, run_id, timeout=5)
    assert run["status"] == "completed"
    assert run["output"]["work"]["attempt"] == 1
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute("select count(*) from pgflow.workers where stopped_at is null")
        assert await cur.fetchone() == (0,)


async def test_task_cut_off_by_shutdown_is_retried_by_the_next_worker(
    db_url: str, procs: list[subprocess.Popen[str]]
) -> None:
    first = spawn_worker(db_url, "tests.worker.procflows:slow", "--shutdown-timeout", "0.2")
    procs.append(first)
    await wait_for_workers(db_url, 1)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener:
        await listener.execute("listen test_task_started")
        run_id = await start_run(db_url, "slow_proc", {"seconds": 60})
        assert await next_notification(listener) == "1"
        first.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(first.communicate, timeout=30)
        assert first.returncode == 0, stderr
        assert "will be retried" in stderr
        second = spawn_worker(db_url, "tests.worker.procflows:slow")
        procs.append(second)
        assert await next_notification(listener) == "2"
    run = await wait_run(db_url, run_id)
    assert run["status"] == "completed"
    (task,) = await tasks_of(db_url, run_id)
    assert task["attempts_count"] == 2
    assert "lease expired" in task["error_message"]


async def test_two_workers_share_a_map_and_no_task_runs_twice(
    db_url: str, procs: list[subprocess.Popen[str]]
) -> None:
    procs.extend(
        spawn_worker(db_url, "tests.worker.procflows:shared", "--concurrency", "4")
        for _ in range(2)
    )
    await wait_for_workers(db_url, 2)
    run_id = await start_run(db_url, "shared_proc", list(range(40)))
    run = await wait_run(db_url, run_id)
    assert run["status"] == "completed"
    outputs = run["output"]["each"]
    assert [o["x"] for o in outputs] == list(range(40))
    assert len({o["pid"] for o in outputs}) == 2, "both workers should have done some of the work"
    tasks = await tasks_of(db_url, run_id)
    assert all(t["status"] == "completed" and t["attempts_count"] == 1 for t in tasks)

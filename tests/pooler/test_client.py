"""The client's Postgres transport through pgbouncer: refused in transaction mode, where LISTEN
cannot work, and working in session mode."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgflow_client import FlowRunStatus, ListenUnavailable, PgflowClient
from pgflow_worker import FlowWorker
from tests.pooler.poolflows import squares

ROOT = Path(__file__).resolve().parents[2]


async def test_connect_through_a_transaction_pooler_is_refused(transaction_url: str) -> None:
    began = time.monotonic()
    with pytest.raises(ListenUnavailable, match="session-mode pooler") as caught:
        await asyncio.wait_for(PgflowClient.connect(transaction_url), 30)
    assert time.monotonic() - began < 15
    assert "pooler-test-secret" not in str(caught.value)


async def test_the_client_works_through_a_session_pooler(session_url: str, db_url: str) -> None:
    async with FlowWorker(squares, db_url), await PgflowClient.connect(session_url) as client:
        run = await client.start_flow(squares.slug, {"n": 5})
        await run.wait_for_status(FlowRunStatus.COMPLETED, timeout=60)
    assert run.output is not None
    assert run.output["total"]["sum"] == 30


def test_pgflow_start_wait_through_a_transaction_pooler_fails_clearly(
    transaction_url: str,
) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pgflow_worker", "start", "pooled_squares"),
            *("--input", "{}", "--wait", "--db", transaction_url),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode != 0
    assert "session-mode pooler" in " ".join(result.stderr.split()), result.stderr

"""Task results sent in batches: every result ready at the same moment goes in one transaction.

Handlers that finish together would otherwise each take a connection and a transaction of
their own. Their commits then queue in the database (each result sends realtime events, and
PostgreSQL commits transactions that notify one at a time), and every wait costs a process
wake-up. Sent together, the results cost one round trip and one commit. The rules:

* results of one step (same run, same step slug) never travel in two batches at once: they all
  update that step's row and would only queue on its lock;
* a batch takes the rows of its runs in run id order, so two batches cannot deadlock;
* a batch the database refuses is sent again one result at a time, each in a transaction of
  its own, so a bad result fails only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ._sql_client import PgflowSqlClient, Report, StepTask

__all__ = ["ReportBatcher"]


@dataclass(slots=True)
class _Pending:
    report: Report
    future: asyncio.Future[None] = field(repr=False)

    @property
    def key(self) -> tuple[uuid.UUID, str]:
        return (self.report.task.run_id, self.report.task.step_slug)


class ReportBatcher:
    """Collects results and sends them in batches, at most ``max_batches`` at once.

    A batch leaves as soon as a sending slot is free, with whatever is waiting then: under
    light load each result goes alone and at once; when results arrive faster than the
    database takes them, they wait for a slot and leave together.
    """

    def __init__(
        self, client: PgflowSqlClient, *, max_batches: int, max_batch_size: int = 100
    ) -> None:
        if max_batches < 1 or max_batch_size < 1:
            raise ValueError("max_batches and max_batch_size must be at least 1")
        self._client = client
        self._max_batches = max_batches
        self._max_batch_size = max_batch_size
        self._waiting: deque[_Pending] = deque()
        self._busy: set[tuple[uuid.UUID, str]] = set()
        self._sending: set[asyncio.Task[None]] = set()

    async def complete(self, task: StepTask, output: Any) -> None:
        """Report a task's output; returns once committed, raises what the database raised."""
        await self._submit(Report("complete", task, output))

    async def fail(self, task: StepTask, error_message: str) -> None:
        """Report a task's failure; returns once committed, raises what the database raised."""
        await self._submit(Report("fail", task, error_message))

    async def aclose(self) -> None:
        """Wait for the batches already being sent; results not yet sent are dropped."""
        for pending in self._waiting:
            pending.future.cancel()
        self._waiting.clear()
        if self._sending:
            await asyncio.wait(set(self._sending))

    async def _submit(self, report: Report) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(report, future))
        self._dispatch()
        await future

    def _dispatch(self) -> None:
        while len(self._sending) < self._max_batches and self._waiting:
            batch: list[_Pending] = []
            left: deque[_Pending] = deque()
            for pending in self._waiting:
                if pending.future.done():  # its sender was cancelled: nobody awaits it
                    continue
                if pending.key in self._busy or len(batch) >= self._max_batch_size:
                    left.append(pending)
                else:
                    batch.append(pending)
            self._waiting = left
            if not batch:
                return
            keys = {pending.key for pending in batch}
            self._busy |= keys
            sender = asyncio.create_task(self._send(batch, keys))
            self._sending.add(sender)

    async def _send(self, batch: list[_Pending], keys: set[tuple[uuid.UUID, str]]) -> None:
        batch.sort(key=lambda p: p.key)
        try:
            outcomes = await self._client.report_batch([p.report for p in batch])
        except BaseException as exc:
            for pending in batch:
                if not pending.future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        pending.future.cancel()
                    else:
                        pending.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for pending, error in zip(batch, outcomes, strict=True):
                if pending.future.done():
                    continue
                if error is None:
                    pending.future.set_result(None)
                else:
                    pending.future.set_exception(error)
        finally:
            self._busy -= keys
            current = asyncio.current_task()
            with contextlib.suppress(KeyError):
                self._sending.remove(current)  # type: ignore[arg-type]
            self._dispatch()

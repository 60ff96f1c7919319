"""FlowWorker: polls a flow's queue, runs step handlers with bounded concurrency, reports back.

The loop follows pgflow's Edge Worker: register a row in ``pgflow.workers`` and heartbeat it;
read messages (``pgmq.read_with_poll``), claim their tasks (``pgflow.start_tasks``), run the
handlers, then ``complete_task`` or ``fail_task``. Retries, backoff and run state live in SQL;
the worker only executes. It polls again while handlers still run instead of waiting for the
whole batch: once a slot frees up it takes every free slot, and under load waits up to 20 ms
for a whole batch of them, so a busy worker reads a full batch per round trip rather than one
message each time a handler ends. A finished handler gives its slot to the next poll while its
result is sent; results ready at once are sent together, in one statement
(:mod:`._reports`). It enforces each step's ``timeout`` on the handler itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from pgflow_client.dsn import describe_dsn, redact

from ._context import FlowInputCache, StepContext
from ._flow import Flow, StepDefinition
from ._reports import ReportBatcher
from ._settings import WorkerSettings
from ._shape import ensure_flow
from ._sql_client import Message, PgflowSqlClient, SqlCallStats, StepTask, configure_connection
from ._telemetry import WorkerTelemetry
from ._threads import HandlerThreads
from .errors import WorkerError

__all__ = ["FlowWorker", "run_worker"]

log = logging.getLogger("pgflow.worker")

#: How long a poll waits for a batch of slots to come free while handlers run.
_FILL_WAIT = 0.02
_DEFAULT_TIMEOUT = 60  # create_flow's default when a flow sets none
_REPORT_RETRY_SECONDS = 30.0


class _TaskLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every record with the run, step and task it concerns, and attaches them as
    ``extra`` fields for structured handlers."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"[run {extra['run_id']} {extra['step_slug']}[{extra['task_index']}]] {msg}", kwargs


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class FlowWorker:
    """Runs one flow's step handlers against a pgflow database.

    Use ``await worker.run()`` (returns after a graceful stop: SIGTERM/SIGINT, :meth:`stop`,
    or deprecation of the worker's row), or ``async with worker:`` to run it in the background.

    A worker polls its flow's queue; for a flow with per-step queues
    (``Flow(..., step_queues=True)``) it serves one step, ``step=``, polling that step's queue
    only, so each step can have its own workers. It finds out at startup which ``start_tasks``
    the database's SQL has: pgflow 0.17's, with the queue and the step, or the older
    three-argument one (pgflow up to 0.16), which has no per-step queues.

    With ``opentelemetry-api`` installed (the ``otel`` extra), each task attempt is a span and
    feeds the task metrics, through ``tracer_provider``/``meter_provider`` or the global ones.
    """

    def __init__(
        self,
        flow: Flow,
        dsn: str,
        *,
        settings: WorkerSettings | None = None,
        worker_id: uuid.UUID | None = None,
        step: str | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        **overrides: Any,
    ) -> None:
        if settings is not None and overrides:
            raise WorkerError("pass either settings=WorkerSettings(...) or keyword settings")
        if step is not None and not flow.step_queues:
            raise WorkerError(
                f"step={step!r}: flow {flow.slug!r} has one queue for all its steps; serve a "
                "single step only of a flow with step_queues=True"
            )
        if step is None and flow.step_queues:
            raise WorkerError(
                f"flow {flow.slug!r} has a queue per step: start one worker per step, "
                f"with step= one of {[s.slug for s in flow.steps]}"
            )
        if step is not None:
            flow.get_step(step)  # StepNotFound names the flow's steps
        self.flow = flow
        #: The step this worker serves, or None for the whole flow.
        self.step = step
        #: The pgmq queue this worker polls.
        self.queue_name = flow.queue_name(step)
        self.dsn = dsn
        self.settings = settings or WorkerSettings(**overrides)
        self.worker_id = worker_id or uuid.uuid4()
        # Spans and metrics when opentelemetry-api is installed; the providers default to the
        # API's global ones.
        self._telemetry = WorkerTelemetry(tracer_provider, meter_provider)
        self._stopping = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._shutdown_flag = threading.Event()
        self._started = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        #: Contexts of the handlers running, by run: what a cancellation is told to.
        self._running: dict[uuid.UUID, set[StepContext]] = {}
        self._slots = asyncio.Semaphore(self.settings.max_concurrent)
        self._report_slots = asyncio.Semaphore(self.settings.max_concurrent)
        self._runner: asyncio.Task[None] | None = None
        self._threads = HandlerThreads(f"pgflow-{flow.slug}")
        self._client: PgflowSqlClient | None = None
        self.completed = 0
        self.failed = 0
        #: Counts of the SQL calls this worker made (polls, messages, flow-input loads, ...).
        self.stats = SqlCallStats()

    @property
    def application_name(self) -> str:
        """The ``application_name`` of the worker's connections, as ``pg_stat_activity`` shows
        it: one worker's connections can be told apart from another's on the server."""
        return f"pgflow-worker {self.worker_id}"

    # -- public control -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop: no more polling; in-flight handlers may finish."""
        self._stopping.set()

    async def wait_started(self) -> None:
        """Wait until the worker is registered and polling."""
        await self._started.wait()

    async def __aenter__(self) -> Self:
        self._runner = asyncio.create_task(self.run(install_signal_handlers=False))
        started = asyncio.create_task(self._started.wait())
        done, _ = await asyncio.wait({self._runner, started}, return_when=asyncio.FIRST_COMPLETED)
        if self._runner in done:
            started.cancel()
            self._runner.result()  # raises what stopped it
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
        if self._runner is not None:
            await self._runner

    # -- main loop ----------------------------------------------------------------------------

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Register, poll and execute until asked to stop; then drain and mark the row stopped."""
        loop = asyncio.get_running_loop()
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.settings.max_pg_connections,
            kwargs={
                "autocommit": True,
                "application_name": self.application_name,
                "prepare_threshold": self.settings.prepare_threshold,
            },
            configure=configure_connection,
            open=False,
            name=f"pgflow-worker-{self.flow.slug}",
        )
        try:
            # One direct attempt first: it fails at once with the server's own reason,
            # where the pool would retry quietly until its timeout.
            probe = await AsyncConnection.connect(
                self.dsn, connect_timeout=10, application_name=self.application_name
            )
            await probe.close()
            await pool.open(wait=True, timeout=30)
        except Exception as exc:
            await pool.close()
            raise WorkerError(
                f"worker for flow {self.flow.slug!r} cannot connect to "
                f"{describe_dsn(self.dsn)}: {redact(str(exc)).strip()}"
            ) from None
        client = self._client = PgflowSqlClient(pool, self.stats)
        reports = ReportBatcher(client, max_batches=max(1, self.settings.max_pg_connections // 2))
        inputs = FlowInputCache(client)
        removers: list[Callable[[], None]] = []
        try:
            await self._prepare(client)
            if install_signal_handlers:
                removers = self._install_signal_handlers(loop)
            log.info(
                "worker %s started for flow %r (max_concurrent=%s)",
                self.worker_id,
                self.flow.slug,
                self.settings.max_concurrent,
            )
            self._started.set()
            heartbeat = asyncio.create_task(self._heartbeat(client))
            watch = asyncio.create_task(self._watch_cancellations(client))
            try:
                await self._poll(client, reports, pool, inputs, loop)
            finally:
                await self._drain()
                await reports.aclose()
                for background in (heartbeat, watch):
                    background.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await background
                with contextlib.suppress(psycopg.Error):
                    await client.mark_stopped(self.worker_id)
                log.info(
                    "worker %s stopped (%s completed, %s failed)",
                    self.worker_id,
                    self.completed,
                    self.failed,
                )
        finally:
            for remove in removers:
                remove()
            self._threads.close()
            await pool.close()

    async def _prepare(self, client: PgflowSqlClient) -> None:
        # pgflow's order: the flow first, so a worker that cannot compile registers nothing.
        async with client.pool.connection() as conn:
            result = await ensure_flow(conn, self.flow, recompile=self.settings.recompile)
        if result.differences:
            log.warning(
                "flow %r: %s, its runs deleted; it differed: %s",
                self.flow.slug,
                result.status,
                "; ".join(result.differences),
            )
        else:
            log.info("flow %r: %s", self.flow.slug, result.status)
        if result.kept_options:
            log.info(
                "flow %r: options in the database differ from the definition and were kept "
                "(recompile, or update them in SQL, to change them): %s",
                self.flow.slug,
                "; ".join(result.kept_options),
            )
        await client.detect_flavour()
        if self._telemetry.enabled and client.trace_table == "unreadable":
            log.warning(
                "this worker's role may not read pgflow.run_trace_contexts: task spans start "
                "traces of their own instead of joining their run's (grant select on it)"
            )
        await client.track_worker_function(self.settings.function_name)
        await client.register_worker(self.worker_id, self.queue_name, self.settings.function_name)

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[Callable[[], None]]:
        if threading.current_thread() is not threading.main_thread():
            return []
        removers: list[Callable[[], None]] = []

        def on_signal(sig: signal.Signals) -> None:
            if self._stopping.is_set():
                log.warning("second %s: cancelling in-flight handlers now", sig.name)
                for task in list(self._in_flight):
                    task.cancel()
            else:
                log.info("%s received: stopping after in-flight tasks finish", sig.name)
                self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
            except (NotImplementedError, RuntimeError):
                continue
            removers.append(functools.partial(_remove_signal_handler, loop, sig))
        return removers

    async def _heartbeat(self, client: PgflowSqlClient) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                deprecated = await client.heartbeat(self.worker_id)
            except Exception as exc:  # a missed heartbeat is retried on the next tick
                log.warning("heartbeat failed: %s", _describe(exc))
                continue
            if deprecated:
                log.info("worker %s was deprecated: stopping", self.worker_id)
                self.stop()
                return

    async def _watch_cancellations(self, client: PgflowSqlClient) -> None:
        """While handlers run, ask every ``cancel_check_interval`` seconds whether their runs
        were cancelled, and tell their contexts. One indexed query per check, none when idle
        or on SQL that cannot cancel runs."""
        if not client.can_cancel_runs:
            return
        while True:
            await asyncio.sleep(self.settings.cancel_check_interval)
            if not self._running:
                continue
            try:
                cancelled = await client.cancelled_runs(list(self._running))
            except Exception as exc:  # checked again on the next tick
                log.warning("checking for cancelled runs failed: %s", _describe(exc))
                continue
            for run_id, reason in cancelled.items():
                for ctx in self._running.get(run_id, ()):
                    if not ctx.cancel_requested:
                        ctx.logger.info("the run was cancelled; its result will change nothing")
                    ctx._mark_cancelled(reason)

    async def _poll(
        self,
        client: PgflowSqlClient,
        reports: ReportBatcher,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        inputs: FlowInputCache,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        settings = self.settings
        backoff = 0.0
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                await self._slots.acquire()
                free = 1 + await self._more_slots(settings.batch_size - 1)
                poll = asyncio.create_task(
                    self._read_and_start(client, free, settings.max_poll_seconds)
                )
                done, _ = await asyncio.wait({poll, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if poll not in done:
                    poll.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await poll
                    self._release(free)
                    break
                try:
                    claimed = poll.result()
                except Exception as exc:
                    # Whatever broke this poll (the database, the network, a message that
                    # cannot be decoded) may be gone by the next one: log, back off, go on.
                    # Cancellation is no Exception and ends the loop.
                    self._release(free)
                    backoff = min(max(backoff * 2, 0.5), 10.0)
                    expected = isinstance(exc, (psycopg.Error, OSError))
                    log.warning(
                        "poll failed (%s); retrying in %.1fs",
                        _describe(exc),
                        backoff,
                        exc_info=None if expected else exc,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
                    continue
                backoff = 0.0
                self._release(free - len(claimed))
                for message, task in claimed:
                    ctx = self._context(task, message, pool, inputs, loop)
                    slot = _Slot(self._slots)
                    runner = asyncio.create_task(self._execute(reports, task, ctx, slot))
                    self._in_flight.add(runner)
                    runner.add_done_callback(functools.partial(self._finished, slot))
        finally:
            stop_wait.cancel()

    async def _more_slots(self, most: int) -> int:
        """Take up to ``most`` more free slots for the next poll; how many were taken.

        Takes every slot free now. When that is less than a batch while handlers are running,
        waits a moment (``_FILL_WAIT``) for more of them to finish: each poll costs two round
        trips and two calls on the server whatever it reads, so polling for a few messages each
        time handlers end spends far more of the database per task. The wait is bounded, so
        slow handlers never hold back a poll for long.
        """
        taken = 0
        batch = max(1, min(self.settings.batch_size, self.settings.max_concurrent))
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while taken < most:
            if not self._slots.locked():
                await self._slots.acquire()
                taken += 1
                continue
            if taken + 1 >= batch or not self._in_flight or self._stopping.is_set():
                break
            if deadline is None:
                deadline = loop.time() + _FILL_WAIT
            try:
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            except TimeoutError:
                break
            taken += 1
        return taken

    async def _read_and_start(
        self, client: PgflowSqlClient, qty: int, max_poll_seconds: int
    ) -> list[tuple[Message, StepTask]]:
        s = self.settings
        messages = await client.read_messages(
            self.queue_name, s.visibility_timeout, qty, max_poll_seconds, s.poll_interval_ms
        )
        if not messages:
            return []
        for message in messages:
            if message.decode_error is not None:
                log.warning(
                    "message %s of queue %r cannot be decoded (%s)",
                    message.msg_id,
                    self.queue_name,
                    message.decode_error,
                )
        tasks = await client.start_tasks(
            self.flow.slug,
            [m.msg_id for m in messages],
            self.worker_id,
            self.queue_name if client.has_queue_identity else None,
            self.step,
            trace_runs=self._untraced_runs(client, messages),
        )
        by_id = {m.msg_id: m for m in messages}
        return [(by_id[t.msg_id], t) for t in tasks]

    def _untraced_runs(self, client: PgflowSqlClient, messages: list[Message]) -> list[uuid.UUID]:
        """The runs of these messages whose trace context is still to be read: none unless
        tasks are traced and the SQL stores contexts."""
        if not self._telemetry.enabled or client.trace_table != "readable":
            return []
        run_ids: list[uuid.UUID] = []
        for message in messages:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                run_ids.append(uuid.UUID(str(message.message.get("run_id"))))
        return client.trace_contexts.missing(run_ids)

    def _release(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    def _finished(self, slot: _Slot, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        slot.release()

    def _context(
        self,
        task: StepTask,
        message: Message,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        inputs: FlowInputCache,
        loop: asyncio.AbstractEventLoop,
    ) -> StepContext:
        if task.has_flow_input:
            inputs.remember(task.run_id, task.flow_input)
        logger = _TaskLogger(
            log,
            {
                "run_id": str(task.run_id),
                "flow_slug": task.flow_slug,
                "step_slug": task.step_slug,
                "task_index": task.task_index,
                "worker_id": str(self.worker_id),
            },
        )
        return StepContext(
            task=task,
            raw_message=message.as_dict(),
            settings=self.settings,
            shutdown=self._shutdown,
            logger=logger,
            _pool=pool,
            _inputs=inputs,
            _loop=loop,
            _shutdown_flag=self._shutdown_flag,
        )

    # -- executing one task -------------------------------------------------------------------

    def _timeout_of(self, step: StepDefinition) -> float | None:
        if not self.settings.enforce_timeouts:
            return None
        return float(step.options.timeout or self.flow.options.timeout or _DEFAULT_TIMEOUT)

    async def _execute(
        self, reports: ReportBatcher, task: StepTask, ctx: StepContext, slot: _Slot
    ) -> None:
        running = self._running.setdefault(task.run_id, set())
        running.add(ctx)
        try:
            await self._execute_watched(reports, task, ctx, slot)
        finally:
            running.discard(ctx)
            if not running and self._running.get(task.run_id) is running:
                del self._running[task.run_id]

    async def _execute_watched(
        self, reports: ReportBatcher, task: StepTask, ctx: StepContext, slot: _Slot
    ) -> None:
        logger = ctx.logger
        step = self._runnable_step(task)
        if isinstance(step, str):
            error = step
            logger.warning("attempt %s failed: %s", task.attempt, error)
        else:
            logger.debug("starting attempt %s", task.attempt)
            error = None
            client = self._client
            trace_context = client.trace_contexts.get(task.run_id) if client else None
            enqueued_at = ctx.raw_message.get("enqueued_at")
            with self._telemetry.task(task, enqueued_at, trace_context) as record:
                try:
                    output = await self._invoke(step, task, ctx)
                except asyncio.CancelledError as exc:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        logger.warning("cancelled during shutdown; the task will be retried")
                        record.failed("cancelled during shutdown", exc)
                        raise
                    error = "CancelledError: the handler was cancelled"
                    record.failed(error, exc)
                    logger.warning("attempt %s failed: %s", task.attempt, error)
                except BaseException as exc:  # any handler failure, SystemExit included
                    error = _describe(exc)
                    record.failed(error, exc)
                    logger.warning("attempt %s failed: %s", task.attempt, error, exc_info=exc)
            if error is None:
                async with self._reporting(slot):
                    if await self._report(reports.complete, task, output, logger):
                        self.completed += 1
                        logger.debug("completed")
                return
        self.failed += 1
        async with self._reporting(slot):
            await self._report(reports.fail, task, error, logger)

    def _runnable_step(self, task: StepTask) -> StepDefinition | str:
        """The step whose handler runs this task, or why none can (an unknown step, an
        undecodable input)."""
        try:
            step = self.flow.get_step(task.step_slug)
        except Exception as exc:
            return (
                f"WorkerError: this worker's flow {self.flow.slug!r} has no step "
                f"{task.step_slug!r} ({exc})"
            )
        if task.decode_error is not None:
            return (
                f"WorkerError: the task of step {task.step_slug!r} of flow {self.flow.slug!r} "
                f"cannot be decoded: {task.decode_error}"
            )
        return step

    @contextlib.asynccontextmanager
    async def _reporting(self, slot: _Slot) -> AsyncIterator[None]:
        """Trade the task's handler slot for a report slot while its result is sent.

        The next poll need not wait for the database to take this result; the report slots
        bound how many finished tasks may wait for that.
        """
        async with self._report_slots:
            slot.release()
            yield

    async def _invoke(self, step: StepDefinition, task: StepTask, ctx: StepContext) -> Any:
        if step.is_map:
            raw = task.input
        elif step.is_root:
            raw = task.flow_input if task.has_flow_input else await ctx.get_flow_input()
        else:
            raw = task.input
        value = step.prepare_input(raw)
        args: tuple[Any, ...] = (value, ctx) if step.wants_context else (value,)
        timeout = self._timeout_of(step)
        try:
            if step.is_async:
                async with asyncio.timeout(timeout):
                    result = await step.handler(*args)
            else:
                # The handler sees this task's context variables: its span is the current one.
                context = contextvars.copy_context()
                future = self._threads.run(functools.partial(context.run, step.handler, *args))
                async with asyncio.timeout(timeout):  # cancels, so abandons, the call's future
                    result = await future
        except TimeoutError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            raise TimeoutError(
                f"step {step.slug!r} of flow {self.flow.slug!r} timed out after {timeout:g} s"
            ) from exc
        return step.serialize_output(result)

    async def _report(
        self,
        call: Callable[[StepTask, Any], Awaitable[None]],
        task: StepTask,
        value: Any,
        logger: logging.LoggerAdapter[logging.Logger],
    ) -> bool:
        """Send a result, retrying through connection errors for a while; True when accepted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _REPORT_RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                await call(task, value)
                return True
            except psycopg.OperationalError as exc:
                if loop.time() + delay > deadline:
                    logger.error("could not report the result, giving up: %s", exc)
                    return False
                logger.warning("reporting the result failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except psycopg.Error as exc:
                logger.warning("the database refused the result: %s", exc)
                return False
            except Exception as exc:
                logger.error(
                    "the result could not be sent; the task will be retried after its timeout",
                    exc_info=exc,
                )
                return False

    async def _drain(self) -> None:
        self._shutdown.set()
        self._shutdown_flag.set()
        if not self._in_flight:
            return
        log.info(
            "waiting up to %ss for %s in-flight task(s)",
            self.settings.shutdown_timeout,
            len(self._in_flight),
        )
        _, pending = await asyncio.wait(
            set(self._in_flight), timeout=self.settings.shutdown_timeout
        )
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.warning(
                "%s task(s) did not finish in time; they will be retried after their timeout",
                len(pending),
            )


def _remove_signal_handler(loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
    loop.remove_signal_handler(sig)


def run_worker(flow: Flow, dsn: str, **settings: Any) -> None:
    """Run a worker in the foreground until SIGTERM/SIGINT (for scripts and the CLI)."""
    asyncio.run(FlowWorker(flow, dsn, **settings).run())


class _Slot:
    """A claimed task's place under ``max_concurrent``, given back exactly once."""

    __slots__ = ("_semaphore",)

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore: asyncio.Semaphore | None = semaphore

    def release(self) -> None:
        if self._semaphore is not None:
            self._semaphore.release()
            self._semaphore = None

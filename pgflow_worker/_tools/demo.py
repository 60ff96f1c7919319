"""``pgflow demo``: pgflow end to end in one command, with nothing to set up.

It picks a stack (``--db``/``DATABASE_URL``, ``SUPABASE_URL`` for the client side, or else a
PostgreSQL server of its own kept in a cache folder), migrates it, runs a worker for two demo
flows in this process, starts runs through :class:`~pgflow_client.PgflowClient` and shows them
live, then prints their outputs and timings. Ctrl-C (or SIGTERM) stops the runs, the workers
and the server, and leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, Protocol, Self

import psycopg
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pgflow_client import FlowRun, PgflowClient, PgflowClientError, StatusUnreachable
from pgflow_client.dsn import describe_dsn, redact

from .._context import StepContext
from .._database import migrate
from .._flow import Flow
from .._worker import FlowWorker
from ..errors import (
    DashboardError,
    DatabaseSetupError,
    FlowShapeMismatch,
    PgflowError,
    PostgresNotFound,
    PostgresStartError,
)
from .demo_flows import CRAWL_SITE, GREET_USER, crawl_site_flow, greet_user_flow
from .embedded import EmbeddedPostgres

__all__ = ["DemoOptions", "run_demo"]

_NAMES = (
    ("Alice", "Smith"),
    ("Bob", "Jones"),
    ("Chidi", "Okafor"),
    ("Dana", "Kim"),
    ("Emil", "Novak"),
    ("Fatima", "Zahra"),
)
_SITES = ("example.org", "example.com", "example.net")
_PAGES = 6
_WORKER_SETTINGS: Mapping[str, Any] = {
    "max_concurrent": 8,
    "batch_size": 8,
    "max_pg_connections": 2,
    "max_poll_seconds": 1,
    "poll_interval_ms": 50,
    "shutdown_timeout": 3.0,
    "function_name": "pgflow-demo",
}
_CONNECT_TIMEOUT = 10
_SYMBOLS = {
    "created": ("·", "dim"),
    "started": ("▶", "yellow"),
    "completed": ("✓", "green"),
    "failed": ("✗", "red"),
    "skipped": ("↷", "magenta"),
}
#: Console width from which the live table has each run's steps on one line, and its output.
_WIDE_TABLE = 120


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    """What ``pgflow demo`` was asked to do.

    ``runs`` runs of each demo flow; ``live`` forces (True) or disables (False) the live
    table, ``None`` picks it when the console is a terminal; ``reset`` wipes the cached server
    first; ``db`` overrides ``DATABASE_URL``; ``directory`` overrides the cache folder;
    ``timeout`` bounds the wait for each run; ``dashboard_port``, when set, serves the
    dashboard on that port of 127.0.0.1 (0: any free port) from before the first run starts
    until interrupted, so the runs can be watched in it live.
    """

    runs: int = 3
    live: bool | None = None
    reset: bool = False
    db: str | None = None
    directory: Path | None = None
    timeout: float = 60.0
    dashboard_port: int | None = None


class _Abort(Exception):
    """Ends the demo with a message for the user and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while the demo ran synchronous code."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _exit_code(signum: int) -> int:
    return 128 + signum


# -- signals ----------------------------------------------------------------------------------


class _Signals:
    """SIGINT and SIGTERM as :class:`_Interrupted`, deferred while a server starts or stops.

    Deferring matters: a server half started or half stopped is exactly what would be left
    running. Only the main thread can handle signals; elsewhere this does nothing.
    """

    _WATCHED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._pending: int | None = None
        self._deferring = False

    def __enter__(self) -> Self:
        with contextlib.suppress(ValueError):  # not the main thread
            for sig in self._WATCHED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring:
            self._pending = self._pending or signum
            return
        raise _Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold signals until the block ends, then raise the first one that came."""
        outer = self._deferring
        self._deferring = True
        try:
            yield
        except Exception:
            # Ctrl-C at a terminal also reaches child processes (pg_ctl, initdb), so a
            # failure here is most likely the interruption itself: report that.
            if not outer and self._pending is not None:
                signum, self._pending = self._pending, None
                raise _Interrupted(signum) from None
            raise
        finally:
            self._deferring = outer
        if not outer and self._pending is not None:
            signum, self._pending = self._pending, None
            raise _Interrupted(signum)

    def reinstall(self) -> None:
        """Take the signals back after asyncio (whose handlers reset them) is done."""
        for sig in self._previous:
            signal.signal(sig, self._handle)


# -- the stack --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stack:
    """Where the worker (``dsn``) and the client (Postgres, or Supabase) connect."""

    dsn: str
    supabase: tuple[str, str] | None = None


def _choose(
    options: DemoOptions, environ: Mapping[str, str]
) -> tuple[str | None, tuple[str, str] | None]:
    """``(database_url, supabase)``: ``None`` as URL means the demo's own server."""
    database_url = options.db or environ.get("DATABASE_URL") or None
    supabase_url = environ.get("SUPABASE_URL") or None
    if supabase_url is None:
        return database_url, None
    if database_url is None:
        raise _Abort(
            "SUPABASE_URL is set, but the worker talks to PostgreSQL directly and needs the "
            "project's database URL too: set DATABASE_URL (Supabase dashboard → Connect → "
            "direct connection; for 'supabase start' it is "
            "postgresql://postgres:postgres@127.0.0.1:54322/postgres), or unset SUPABASE_URL "
            "to run the demo on a server of its own",
            2,
        )
    key = environ.get("SUPABASE_KEY")
    if not key:
        raise _Abort(
            "SUPABASE_URL is set but SUPABASE_KEY is not: set it to the project's anon or "
            "service-role key",
            2,
        )
    return database_url, (supabase_url, key)


def _prepare(dsn: str) -> str:
    """Migrate the database (``pgflow migrate`` semantics); return what was done."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT)
    except psycopg.OperationalError as exc:
        raise _Abort(f"cannot connect to {describe_dsn(dsn)}: {redact(str(exc)).strip()}") from None
    with conn:
        row = conn.execute(
            "select to_regclass('pgflow.flows') is not null,"
            " to_regclass('pgflow.migrations') is not null"
        ).fetchone()
        if row is not None and row[0] and not row[1]:
            return "pgflow schema found (installed by other tooling); nothing to migrate"
        report = migrate(conn)
    done = f"applied {len(report.applied)}" if report.applied else "up to date"
    return f"migrations {done} (pgmq: {report.pgmq}; realtime: {report.realtime})"


# -- what happens to each run -----------------------------------------------------------------


@dataclass(eq=False)
class _Entry:
    """One run of the demo and what was measured about it."""

    label: str
    flow: Flow
    input: Any
    run: FlowRun | None = None
    requested: float = 0.0
    first_event: float | None = None
    finished: float | None = None
    outcome: Literal["running", "completed", "failed", "timed out"] = "running"
    attempts: int = 0
    failures: int = 0

    @property
    def status(self) -> str:
        return self.run.status.value if self.run is not None else "starting"

    def step_statuses(self) -> list[tuple[str, str]]:
        if self.run is None:
            return [(step.slug, "created") for step in self.flow.steps]
        return [(step.slug, self.run.step(step.slug).status.value) for step in self.flow.steps]

    def elapsed(self, now: float) -> float:
        return (self.finished or now) - self.requested

    def database_seconds(self) -> float | None:
        run = self.run
        if run is None or run.started_at is None or run.completed_at is None:
            return None
        return (run.completed_at - run.started_at).total_seconds()


class _View(Protocol):
    def __enter__(self) -> Any: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any: ...

    def changed(self, entry: _Entry) -> None: ...

    def attempt_failed(self, entry: _Entry, ctx: StepContext, error: BaseException) -> None: ...

    def tick(self) -> None: ...


def _preview(value: Any, limit: int = 60) -> str:
    if value is None:
        return ""
    text = json.dumps(value, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.0f} ms"


class _LineView:
    """One line per change, for logs, pipes and CI (no terminal needed)."""

    def __init__(self, console: Console, origin: Callable[[], float]) -> None:
        self._console = console
        self._origin = origin
        self._seen: dict[int, dict[str, str]] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def _say(self, entry: _Entry, text: str) -> None:
        offset = f"+{time.monotonic() - self._origin():.3f}s"
        self._console.print(
            f"  {offset:>8}  {entry.label:<14} {text}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    def changed(self, entry: _Entry) -> None:
        if entry.run is None:
            return
        seen = self._seen.setdefault(id(entry), {})
        run_line = None
        if seen.get("\0run") != entry.status:
            seen["\0run"] = entry.status
            run_line = f"run {entry.status}"
            if entry.status == "started":
                run_line += f" with input {_preview(entry.input, 200)}"
            elif entry.status == "completed":
                run_line += f" → {_preview(entry.run.output, 200)}"
            elif entry.status == "failed":
                run_line += f": {entry.run.error_message}"
        if run_line is not None and entry.status == "started":
            self._say(entry, run_line)
            run_line = None
        for slug, status in entry.step_statuses():
            if seen.get(slug, "created") != status:
                seen[slug] = status
                self._say(entry, f"{slug} {status}")
        if run_line is not None:
            self._say(entry, run_line)

    def attempt_failed(self, entry: _Entry, ctx: StepContext, error: BaseException) -> None:
        self._say(
            entry,
            f"{ctx.step_slug}[{ctx.task_index}] attempt {ctx.attempt} failed: "
            f"{type(error).__name__}: {error} (pgflow will retry it)",
        )

    def tick(self) -> None:
        return None


class _LiveView:
    """A table of every run, redrawn on each event and a few times a second."""

    def __init__(self, console: Console, entries: list[_Entry], header: str) -> None:
        self._console = console
        self._entries = entries
        self._header = header
        self._notes: list[str] = []
        self._live = Live(self._render(), console=console, auto_refresh=False, transient=False)

    def __enter__(self) -> Self:
        self._live.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._live.update(self._render(), refresh=True)
        self._live.__exit__(*exc_info)
        if not self._console.is_terminal and not self._console.is_jupyter:
            # Rich ends the last line itself only on a terminal: elsewhere (a pipe, a file)
            # what is printed next would run on from the last note.
            self._console.line()

    def _render(self) -> RenderableType:
        now = time.monotonic()
        # A narrow console (80 columns, say) gets each run's steps one per line and no output
        # column (the summary that follows shows the outputs), so that no column is cut off.
        wide = self._console.width >= _WIDE_TABLE
        columns = ["run", "status", "steps", "attempts", "elapsed"] + (["output"] if wide else [])
        table = Table(title=Text(self._header), title_justify="left", expand=False)
        for column in columns:
            table.add_column(column, no_wrap=column != "output", overflow="fold")
        for entry in self._entries:
            steps = Text()
            for slug, status in entry.step_statuses():
                symbol, style = _SYMBOLS.get(status, ("?", ""))
                if steps:
                    steps.append("  " if wide else "\n")
                steps.append(f"{symbol} {slug}", style=style)
            symbol, style = _SYMBOLS.get(entry.status, ("…", "dim"))
            retries = f" ({entry.failures} retried)" if entry.failures else ""
            cells = [
                Text(entry.label),
                Text(entry.status, style=style),
                steps,
                Text(f"{entry.attempts}{retries}"),
                Text(f"{entry.elapsed(now):.2f} s"),
            ]
            if wide:
                cells.append(Text(_preview(entry.run.output if entry.run is not None else None)))
            table.add_row(*cells)
        notes = [Text(note, style="dim") for note in self._notes[-4:]]
        return Group(table, *notes)

    def changed(self, entry: _Entry) -> None:
        self._live.update(self._render(), refresh=True)

    def attempt_failed(self, entry: _Entry, ctx: StepContext, error: BaseException) -> None:
        self._notes.append(
            f"{entry.label}: {ctx.step_slug}[{ctx.task_index}] attempt {ctx.attempt} failed "
            f"({type(error).__name__}: {error}); pgflow retries it"
        )
        self.changed(entry)

    def tick(self) -> None:
        self._live.update(self._render(), refresh=True)


@dataclass(eq=False)
class _Attempts:
    """The demo flows' observer: counts attempts per run and reports failed ones."""

    entries: dict[str, _Entry] = field(default_factory=dict)
    view: _View | None = None

    def attempt_started(self, ctx: StepContext) -> None:
        entry = self.entries.get(str(ctx.run_id))
        if entry is not None:
            entry.attempts += 1
            if self.view is not None:
                self.view.changed(entry)

    def attempt_failed(self, ctx: StepContext, error: BaseException) -> None:
        entry = self.entries.get(str(ctx.run_id))
        if entry is not None:
            entry.failures += 1
            if self.view is not None:
                self.view.attempt_failed(entry, ctx, error)


# -- the session ------------------------------------------------------------------------------


class _Session:
    """Workers, a client, the runs and the view: everything of one demo's async part."""

    def __init__(self, stack: _Stack, options: DemoOptions, console: Console, live: bool) -> None:
        self.stack = stack
        self.options = options
        self.console = console
        self.live = live
        self.attempts = _Attempts()
        self.flows = [greet_user_flow(self.attempts), crawl_site_flow(self.attempts)]
        self.entries = self._plan()
        self.origin = 0.0

    def _plan(self) -> list[_Entry]:
        greet, crawl = self.flows
        entries: list[_Entry] = []
        for index in range(self.options.runs):
            first, last = _NAMES[index % len(_NAMES)]
            if index >= len(_NAMES):
                last = f"{last} {index // len(_NAMES) + 1}"
            entries.append(
                _Entry(
                    f"{GREET_USER} #{index + 1}", greet, {"first_name": first, "last_name": last}
                )
            )
            site = _SITES[index % len(_SITES)]
            entries.append(
                _Entry(f"{CRAWL_SITE} #{index + 1}", crawl, {"site": site, "pages": _PAGES})
            )
        return entries

    async def _client(self, stack: contextlib.AsyncExitStack) -> PgflowClient:
        if self.stack.supabase is None:
            try:
                client = await PgflowClient.connect(self.stack.dsn)
            except PgflowClientError as exc:
                raise _Abort(redact(str(exc))) from None
            stack.push_async_callback(client.aclose)
            return client
        try:
            from supabase import acreate_client
        except ImportError:
            raise _Abort(
                "SUPABASE_URL is set, but the supabase client library is not installed: "
                "pip install 'pgflow-py[supabase]'",
                2,
            ) from None
        url, key = self.stack.supabase
        supabase = await acreate_client(url, key)

        async def close_supabase() -> None:
            try:
                await supabase.remove_all_channels()
            finally:
                await supabase.postgrest.aclose()

        stack.push_async_callback(close_supabase)
        client = PgflowClient(supabase)
        stack.push_async_callback(client.aclose)
        return client

    async def _workers(self, stack: contextlib.AsyncExitStack) -> None:
        for flow in self.flows:
            worker = FlowWorker(flow, self.stack.dsn, **_WORKER_SETTINGS)
            try:
                await stack.enter_async_context(worker)
            except FlowShapeMismatch as exc:
                raise _Abort(
                    f"this database already holds a different flow {exc.flow_slug!r}, which "
                    "the demo will not replace (that would delete its runs); run the demo on "
                    "another database, or on its own server (unset DATABASE_URL):\n"
                    + "\n".join(f"  - {d}" for d in exc.differences)
                ) from None
            except PgflowError as exc:
                raise _Abort(redact(str(exc))) from None

    async def _start(self, client: PgflowClient, entry: _Entry, view: _View) -> None:
        run_id = str(uuid.uuid4())
        # Known before the run starts: the worker may begin its first task before
        # start_flow returns.
        self.attempts.entries[run_id] = entry
        entry.requested = time.monotonic()
        try:
            run = await client.start_flow(entry.flow.slug, entry.input, run_id=run_id)
        except PgflowClientError as exc:
            raise _Abort(f"{entry.label} could not start: {redact(str(exc))}") from None
        entry.run = run

        def on_event(event: object) -> None:
            now = time.monotonic()
            if entry.first_event is None:
                entry.first_event = now
            if run.status.is_terminal and entry.finished is None:
                entry.finished = now
            view.changed(entry)

        run.on("*", on_event)
        for step in entry.flow.steps:
            run.step(step.slug).on("*", on_event)
        view.changed(entry)

    async def _wait(self, entry: _Entry) -> None:
        assert entry.run is not None
        try:
            await entry.run.wait_for_status("completed", timeout=self.options.timeout)
            entry.outcome = "completed"
        except StatusUnreachable:
            entry.outcome = "failed"
        except TimeoutError:
            entry.outcome = "timed out"
        if entry.finished is None:
            entry.finished = time.monotonic()

    async def _ticker(self, view: _View) -> None:
        while True:
            await asyncio.sleep(0.25)
            view.tick()

    async def play(self, header: str) -> None:
        async with contextlib.AsyncExitStack() as stack:
            await self._workers(stack)
            client = await self._client(stack)
            view: _View
            if self.live:
                view = _LiveView(self.console, self.entries, header)
            else:
                self.console.print(header, markup=False, highlight=False, soft_wrap=True)
                view = _LineView(self.console, lambda: self.origin)
            self.attempts.view = view
            with view:
                ticker = asyncio.create_task(self._ticker(view))
                try:
                    self.origin = time.monotonic()
                    await asyncio.gather(*(self._start(client, e, view) for e in self.entries))
                    await asyncio.gather(*(self._wait(e) for e in self.entries))
                finally:
                    ticker.cancel()
                    self.attempts.view = None

    # -- the summary --------------------------------------------------------------------------

    def summary(self) -> None:
        entries = self.entries
        done = [e for e in entries if e.finished is not None]
        wall = max((e.finished or 0.0) for e in done) - self.origin if done else 0.0
        tasks = sum(e.attempts - e.failures for e in entries)
        retried = sum(e.failures for e in entries)
        latencies = [e.first_event - e.requested for e in entries if e.first_event is not None]
        rate = tasks / wall if wall > 0 else 0.0
        median = _ms(statistics.median(latencies)) if latencies else "–"
        totals = (
            f"{len(entries)} runs, {tasks} tasks ({retried} retried) in {wall:.2f} s: "
            f"{rate:.1f} tasks/s; first event after {median} (median)"
        )
        if self.live:
            results = Table(title="outputs and timings", title_justify="left")
            for column in ("run", "status", "output", "first event", "total", "in database"):
                results.add_column(column, overflow="fold")
            for e in entries:
                results.add_row(
                    *map(
                        Text,
                        (
                            e.label,
                            e.outcome,
                            _preview(e.run.output if e.run else None, 80) or self._problem(e),
                            _ms(e.first_event - e.requested if e.first_event else None),
                            _ms(e.elapsed(time.monotonic())),
                            _ms(e.database_seconds()),
                        ),
                    )
                )
            self.console.print(results)
            self.console.print(totals, markup=False, highlight=False)
            return

        def say(text: str) -> None:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

        say("outputs")
        for e in entries:
            output = _preview(e.run.output if e.run else None, 200) or self._problem(e)
            say(f"  {e.label:<14} {e.outcome:<10} {output}")
        say("timings (from the start_flow call: first event, total; in db: the run's own span)")
        for e in entries:
            first = _ms(e.first_event - e.requested if e.first_event else None)
            total = _ms(e.elapsed(time.monotonic()))
            database = _ms(e.database_seconds())
            say(f"  {e.label:<14} first event {first:>8}   total {total:>8}   in db {database:>8}")
        say(totals)

    @staticmethod
    def _problem(entry: _Entry) -> str:
        if entry.outcome == "failed" and entry.run is not None:
            return f"failed: {entry.run.error_message}"
        if entry.outcome == "timed out":
            return "did not finish in time"
        return ""


async def _play_guarded(session: _Session, header: str, errors: Console) -> int | None:
    """Run the session; SIGINT/SIGTERM cancel it cleanly and give the signal number back."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received:
            errors.print("still stopping…", highlight=False)
            return
        received.append(signum)
        errors.print("interrupted: stopping the runs, the workers and the server…", highlight=False)
        if main is not None:
            main.cancel()

    installed: list[int] = []
    for sig in (int(signal.SIGINT), int(signal.SIGTERM)):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        await session.play(header)
    except asyncio.CancelledError:
        if not received or main is None:
            raise
        main.uncancel()
        return received[0]
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return None


# -- entry point ------------------------------------------------------------------------------


def _start_server(server: EmbeddedPostgres, *, reset: bool) -> None:
    try:
        server.start(reset=reset)
    except FileNotFoundError as exc:
        missing = exc.filename or "a program"
        hint = " (util-linux: apt-get install util-linux)" if missing == "runuser" else ""
        raise PostgresStartError(
            f"cannot start the demo's server: {missing} is not installed{hint}"
        ) from exc
    except PostgresStartError as exc:
        if not exc.cluster_at_fault or reset:
            raise
        raise PostgresStartError(
            f"{exc}\n(the demo's server holds nothing of value: 'pgflow demo --reset' "
            "recreates it)",
            cluster_at_fault=True,
        ) from exc


@contextlib.contextmanager
def _quiet_attempt_warnings() -> Iterator[None]:
    """Hide the worker's per-attempt warnings (the demo shows failed attempts itself)."""
    logger = logging.getLogger("pgflow.worker")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _dashboard_alongside(dsn: str, port: int, errors: Console) -> Iterator[None]:
    """Serve the dashboard on the demo's database while the block runs, runs included."""
    try:
        from . import dashboard
    except ImportError as exc:
        raise _Abort(
            "--dashboard needs the dashboard extra (Starlette, uvicorn, Jinja2), which is not "
            f"installed: pip install 'pgflow-py[dashboard]' (missing: {exc.name})"
        ) from None
    try:
        with dashboard.serving_in_background(dsn, port=port) as url:
            errors.print(
                f"the demo's runs in the dashboard, live: {url}runs",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            yield
    except DashboardError as exc:
        raise _Abort(str(exc)) from None


def _until_interrupted(errors: Console) -> None:
    """Keep the process (and the dashboard's thread) up until a signal ends it."""
    errors.print("the runs are done; the dashboard stays up until Ctrl-C", highlight=False)
    while True:
        signal.pause()  # the handlers of _Signals raise _Interrupted


def run_demo(
    options: DemoOptions,
    *,
    console: Console | None = None,
    errors: Console | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the demo; return the process exit code (0 when every run completed)."""
    console = console or Console()
    errors = errors or Console(stderr=True)
    environ = os.environ if environ is None else environ
    if options.runs < 1:
        errors.print("[bold red]error:[/] --runs must be at least 1", highlight=False)
        return 2
    live = console.is_terminal if options.live is None else options.live
    server: EmbeddedPostgres | None = None
    with _Signals() as signals, _quiet_attempt_warnings():
        try:
            try:
                database_url, supabase = _choose(options, environ)
                if database_url is None:
                    started = time.monotonic()
                    with signals.deferred():
                        server = EmbeddedPostgres(options.directory)
                        _start_server(server, reset=options.reset)
                    dsn = server.dsn()
                    how = "reused" if server.reused else "created"
                    description = (
                        f"PostgreSQL {server.version} ({server.source} binaries) in "
                        f"{server.directory}: {how}, started in {time.monotonic() - started:.2f} s"
                    )
                else:
                    if options.reset:
                        errors.print(
                            "note: --reset only wipes the demo's own server; "
                            "it leaves the database given by --db or DATABASE_URL as it is",
                            markup=False,
                            highlight=False,
                        )
                    dsn = database_url
                    description = f"database {describe_dsn(dsn)}"
                    if supabase is not None:
                        description = f"Supabase {supabase[0]} (client), {description} (worker)"
                prepared = _prepare(dsn)
                session = _Session(_Stack(dsn, supabase), options, console, live)
                transport = "Supabase Realtime" if supabase else "Postgres LISTEN/NOTIFY"
                header = (
                    f"pgflow demo · {description}\n{prepared}\n"
                    f"workers for {GREET_USER} and {CRAWL_SITE} in this process; "
                    f"{options.runs} run(s) of each started through PgflowClient ({transport})"
                )
                with contextlib.ExitStack() as alongside:
                    if options.dashboard_port is not None:
                        alongside.enter_context(
                            _dashboard_alongside(dsn, options.dashboard_port, errors)
                        )
                    try:
                        signum = asyncio.run(_play_guarded(session, header, errors))
                    finally:
                        signals.reinstall()
                    if signum is not None:
                        return _exit_code(signum)
                    session.summary()
                    bad = [e for e in session.entries if e.outcome != "completed"]
                    if options.dashboard_port is not None:
                        _until_interrupted(errors)
                    return 1 if bad else 0
            except _Abort as exc:
                errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
                return exc.code
            except PostgresNotFound as exc:
                errors.print(
                    "[bold red]error:[/] no database is configured (--db, DATABASE_URL) and no "
                    f"PostgreSQL server can be started here: {escape(str(exc))}",
                    highlight=False,
                )
                return 1
            except DatabaseSetupError as exc:
                errors.print(f"[bold red]error:[/] {escape(redact(str(exc)))}", highlight=False)
                return 1
            finally:
                if server is not None:
                    with signals.deferred():
                        server.stop()
        except _Interrupted as exc:
            errors.print("interrupted: everything was stopped", highlight=False)
            return _exit_code(exc.signum)

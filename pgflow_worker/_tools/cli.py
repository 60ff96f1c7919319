"""The ``pgflow`` command line: migrate a database, compile flows, run workers, start and
watch runs.

Text that comes from flows, runs or the database (SQL, outputs, error messages, paths) never
goes through rich's markup: ``[true]`` or ``[/path]`` in it is data, printed as is. Output a
script reads (compiled SQL, a run id) is written plainly, without rich at all.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from pgflow_client.dsn import describe_dsn, redact, resolve_dsn

from .._compiler import compile_flow, migration_filename, render_migration
from .._database import migrate as run_migrations
from .._flow import Flow
from .._settings import WorkerSettings
from ..errors import PgflowError

__all__ = ["app", "load_flow", "main"]

app = typer.Typer(
    help="pgflow-py: Postgres-native workflows for Python.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="PostgreSQL URL (default: $DATABASE_URL).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _dsn(db: str | None) -> str:
    try:
        return resolve_dsn(db)
    except ValueError as exc:
        _fail(str(exc), 2)


def connection_problem(dsn: str, exc: BaseException) -> str:
    """A message for a failed connection: which server, what went wrong, no password."""
    return f"cannot connect to {describe_dsn(dsn)}: {redact(str(exc)).strip()}"


def load_flow(target: str) -> Flow:
    """Import ``module:attribute`` (or ``path/to/file.py:attribute``) and return the Flow.

    Without ``:attribute`` the module must hold exactly one Flow.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name:
        raise PgflowError(f"{target!r}: expected MODULE:FLOW, e.g. my_flows:greet_user")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name).resolve()
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise PgflowError(f"cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, OSError) as exc:
        raise PgflowError(f"cannot import {module_name!r}: {exc}") from exc
    held = {name: value for name, value in vars(module).items() if isinstance(value, Flow)}
    if attribute:
        if not hasattr(module, attribute):
            choices = ", ".join(f"{module_name}:{name}" for name in sorted(held)) or "none"
            raise PgflowError(
                f"module {module_name!r} has no attribute {attribute!r}; "
                f"the flows it holds: {choices}"
            )
        flow = getattr(module, attribute)
        if not isinstance(flow, Flow):
            raise PgflowError(
                f"{module_name}:{attribute} is not a Flow (got {type(flow).__name__})"
            )
        return flow
    flows = list(held.values())
    if len(flows) != 1:
        names = ", ".join(sorted(f.slug for f in flows)) or "none"
        raise PgflowError(
            f"{module_name} holds {len(flows)} flows ({names}); name one as {module_name}:NAME"
        )
    return flows[0]


def _load(target: str) -> Flow:
    try:
        return load_flow(target)
    except PgflowError as exc:
        _fail(str(exc), 2)


@app.command()
def migrate(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Install pgmq (if missing), the realtime stand-in (on plain Postgres) and pgflow's SQL.

    Safe to run again: applied migrations are recorded and skipped.
    """
    dsn = _dsn(db)
    try:
        report = run_migrations(dsn)
    except psycopg.OperationalError as exc:
        _fail(connection_problem(dsn, exc))
    except PgflowError as exc:
        _fail(str(exc))
    if as_json:
        console.print_json(
            data={
                "pgmq": report.pgmq,
                "realtime": report.realtime,
                "applied": report.applied,
                "already_applied": report.already_applied,
            }
        )
        return
    console.print(f"database: {describe_dsn(dsn)}", markup=False, highlight=False)
    console.print(f"pgmq: {report.pgmq}; realtime: {report.realtime}", markup=False)
    for name in report.applied:
        console.print(Text.assemble(("applied", "green"), " ", name))
    if not report.applied:
        console.print("already up to date")


@app.command()
def compile(
    target: Annotated[str, typer.Argument(help="MODULE:FLOW holding the Flow to compile.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write a timestamped migration file into this folder."),
    ] = None,
) -> None:
    """Print the SQL that creates a flow (pgflow.create_flow / pgflow.add_step)."""
    flow = _load(target)
    if out is None:
        # Plain text, exactly as compile_flow returns it: meant for files and pipes.
        for statement in compile_flow(flow):
            typer.echo(statement)
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / migration_filename(flow)
    path.write_text(render_migration(flow), encoding="utf-8")
    console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)


#: The worker's option defaults are WorkerSettings' own (pgflow's), so the two cannot drift.
_WORKER_DEFAULTS = WorkerSettings()


@app.command()
def worker(
    target: Annotated[str, typer.Argument(help="MODULE:FLOW whose steps this worker runs.")],
    db: DbOption = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Handlers running at once.")
    ] = _WORKER_DEFAULTS.max_concurrent,
    batch_size: Annotated[
        int, typer.Option(help="Messages read per poll.")
    ] = _WORKER_DEFAULTS.batch_size,
    max_pg_connections: Annotated[
        int, typer.Option(help="Size of the connection pool.")
    ] = _WORKER_DEFAULTS.max_pg_connections,
    visibility_timeout: Annotated[
        int, typer.Option(help="Seconds a read message stays hidden before start_tasks.")
    ] = _WORKER_DEFAULTS.visibility_timeout,
    max_poll_seconds: Annotated[
        int, typer.Option(help="Longest server-side poll.")
    ] = _WORKER_DEFAULTS.max_poll_seconds,
    poll_interval_ms: Annotated[
        int, typer.Option(help="Pause between server polls.")
    ] = _WORKER_DEFAULTS.poll_interval_ms,
    shutdown_timeout: Annotated[
        float, typer.Option(help="Seconds to let in-flight handlers finish on SIGTERM.")
    ] = _WORKER_DEFAULTS.shutdown_timeout,
    recompile: Annotated[
        bool,
        typer.Option(help="Replace a differing stored flow definition (deletes its runs)."),
    ] = False,
    step: Annotated[
        str | None,
        typer.Option(help="Serve only this step's queue (a flow with step_queues=True)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    otel: Annotated[
        bool,
        typer.Option(
            "--otel", help="Send spans and metrics through the OpenTelemetry SDK (OTEL_* vars)."
        ),
    ] = False,
) -> None:
    """Run a worker for one flow until SIGTERM or SIGINT (then drain and stop)."""
    from .._worker import run_worker

    flow = _load(target)
    dsn = _dsn(db)
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    telemetry: dict[str, Any] = {}
    shutdown_otel: Callable[[], None] | None = None
    if otel:
        from .otel import configure_otel

        try:
            tracer_provider, meter_provider, shutdown_otel = configure_otel()
        except PgflowError as exc:
            _fail(str(exc))
        telemetry = {"tracer_provider": tracer_provider, "meter_provider": meter_provider}
    try:
        run_worker(
            flow,
            dsn,
            **telemetry,
            max_concurrent=concurrency,
            batch_size=batch_size,
            max_pg_connections=max_pg_connections,
            visibility_timeout=visibility_timeout,
            max_poll_seconds=max_poll_seconds,
            poll_interval_ms=poll_interval_ms,
            shutdown_timeout=shutdown_timeout,
            recompile=recompile,
            step=step,
        )
    except psycopg.OperationalError as exc:
        _fail(connection_problem(dsn, exc))
    except PgflowError as exc:
        _fail(redact(str(exc)))
    finally:
        if shutdown_otel is not None:
            shutdown_otel()


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        _fail(f"{what} is not valid JSON: {exc}", 2)


async def _flow_slugs(dsn: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("select flow_slug from pgflow.flows order by flow_slug")
        return [row[0] for row in await cur.fetchall()]


def _run_async(coro: Any) -> Any:
    import asyncio

    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _step_table(run: Any) -> Any:
    from rich.table import Table

    status = run.status.value + (" (cancelled)" if getattr(run, "cancelled", False) else "")
    table = Table(title=Text(f"{run.flow_slug} · {run.run_id} · {status}"))
    for column in ("step", "status", "started", "finished", "output / error"):
        table.add_column(column, overflow="fold")
    for step in run.steps.values():
        finished = step.completed_at or step.failed_at or step.skipped_at
        detail = step.error_message if step.error_message else _preview(step.output)
        # Text cells: outputs like [true, false] and messages like "[/tmp] missing" are data.
        table.add_row(
            Text(step.step_slug),
            Text(step.status.value),
            Text(step.started_at.strftime("%H:%M:%S.%f")[:-3] if step.started_at else ""),
            Text(finished.strftime("%H:%M:%S.%f")[:-3] if finished else ""),
            Text(detail),
        )
    return table


def _preview(value: Any, limit: int = 80) -> str:
    if value is None:
        return ""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _run_dict(run: Any) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "flow_slug": run.flow_slug,
        "status": run.status.value,
        "input": run.input,
        "output": run.output,
        "error_message": run.error_message,
        "started_at": run.started_at,
        "completed_at": run.completed_at,
        "failed_at": run.failed_at,
        "remaining_steps": run.remaining_steps,
        "cancelled": run.cancelled,
        "cancelled_at": run.cancelled_at,
        "cancel_reason": run.cancel_reason,
        "restart_of_run_id": run.restart_of_run_id,
        "steps": {
            slug: {
                "status": step.status.value,
                "output": step.output,
                "error_message": step.error_message,
                "started_at": step.started_at,
                "completed_at": step.completed_at,
                "failed_at": step.failed_at,
                "skipped_at": step.skipped_at,
                "skip_reason": step.skip_reason.value if step.skip_reason else None,
            }
            for slug, step in run.steps.items()
        },
    }


_LIVE_WORKER_SECONDS = 30


async def _live_workers(dsn: str, queue_name: str) -> int:
    """How many workers of ``queue_name`` sent a heartbeat lately (``pgflow.workers``)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select count(*) from pgflow.workers where queue_name = %s"
            " and last_heartbeat_at > now() - make_interval(secs => %s)",
            (queue_name, _LIVE_WORKER_SECONDS),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


@app.command()
def start(
    slug: Annotated[str, typer.Argument(help="The flow to start.")],
    input: Annotated[str, typer.Option("--input", "-i", help="The flow input, as JSON.")] = "{}",
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the run to end.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 300.0,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a run and print its id; with --wait, print its output (exit 1 if it fails)."""
    from pgflow_client import FlowNotFound, PgflowClient, PgflowClientError, StatusUnreachable

    dsn = _dsn(db)
    payload = _parse_json(input, "--input")

    async def go() -> int:
        try:
            client = await PgflowClient.connect(dsn)
        except PgflowClientError as exc:
            _fail(redact(str(exc)))
        async with client:
            try:
                run = await client.start_flow(slug, payload)
            except FlowNotFound:
                known = ", ".join(await _flow_slugs(dsn)) or "none yet"
                _fail(f"flow {slug!r} does not exist; flows in this database: {known}")
            except PgflowClientError as exc:
                _fail(str(exc))
            if not wait:
                if as_json:
                    console.print_json(dump_json({"run_id": run.run_id, "status": run.status}))
                else:
                    typer.echo(str(run.run_id))  # nothing else on stdout: $(pgflow start ...)
                return 0
            if not as_json:
                errors.print(f"run {run.run_id} started; waiting…", highlight=False)
            if not await _live_workers(dsn, slug):
                errors.print(
                    f"no live worker polls flow {slug!r}: no worker of its queue has sent a "
                    f"heartbeat in the last {_LIVE_WORKER_SECONDS} s (see pgflow.workers). Start "
                    f"one with 'pgflow worker MODULE:FLOW'; still waiting up to {timeout:g} s…",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
            try:
                await run.wait_for_status("completed", timeout=timeout)
            except StatusUnreachable:
                pass
            except TimeoutError:
                _fail(f"run {run.run_id} did not finish within {timeout:g} s", 3)
            if as_json:
                console.print_json(dump_json(_run_dict(run)))
            elif run.status.value == "completed":
                console.print_json(dump_json(run.output))
            else:
                errors.print(
                    f"[bold red]run {run.run_id} failed:[/] {escape(run.error_message or '')}",
                    highlight=False,
                    soft_wrap=True,
                )
            return 0 if run.status.value == "completed" else 1

    raise typer.Exit(_run_async(go()))


@app.command()
def status(
    run_id: Annotated[str, typer.Argument(help="The run to show.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a run and a table of its steps."""
    from pgflow_client import PgflowClient, PgflowClientError

    dsn = _dsn(db)

    async def go() -> None:
        try:
            client = await PgflowClient.connect(dsn)
        except PgflowClientError as exc:
            _fail(redact(str(exc)))
        async with client:
            try:
                run = await client.get_run(run_id)
            except ValueError as exc:
                _fail(str(exc), 2)
            if run is None:
                _fail(f"no run {run_id}")
            if as_json:
                console.print_json(dump_json(_run_dict(run)))
            else:
                console.print(_step_table(run))
                for step_slug, queue in await _queues_without_worker(dsn, run.run_id):
                    console.print(
                        Text(
                            f"step {step_slug} waits: no live worker polls its queue {queue}"
                            " (start one: pgflow worker MODULE:FLOW"
                            + (f" --step {step_slug})" if "__" in queue else ")")
                        )
                    )

    _run_async(go())


#: A worker whose last heartbeat is older than this is taken for gone.
_WORKER_ALIVE_SECONDS = 30


async def _queues_without_worker(dsn: str, run_id: Any) -> list[tuple[str, str]]:
    """The steps of a run with queued tasks whose queue no live worker polls, with that queue
    (SQL without pgflow 0.17's queue identity records no queue per task: nothing to say)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select exists (select 1 from pg_attribute"
            " where attrelid = to_regclass('pgflow.step_tasks')"
            " and attname = 'queue_name' and not attisdropped)"
        )
        row = await cur.fetchone()
        if not (row and row[0]):
            return []
        cur = await conn.execute(
            "select distinct t.step_slug, t.queue_name from pgflow.step_tasks as t"
            " join pgflow.runs as r on r.run_id = t.run_id and r.status = 'started'"
            " where t.run_id = %s and t.status = 'queued'"
            " and not exists (select 1 from pgflow.workers as w"
            "  where w.queue_name = t.queue_name and w.stopped_at is null"
            "  and w.deprecated_at is null"
            "  and w.last_heartbeat_at > now() - make_interval(secs => %s))"
            " order by 1",
            (run_id, _WORKER_ALIVE_SECONDS),
        )
        return [(r[0], r[1]) for r in await cur.fetchall()]


@app.command()
def watch(
    run_id: Annotated[str, typer.Argument(help="The run to follow.")],
    db: DbOption = None,
) -> None:
    """Follow a run live until it ends (exit 1 if it fails)."""
    from rich.live import Live

    from pgflow_client import PgflowClient, PgflowClientError

    dsn = _dsn(db)

    async def go() -> int:
        try:
            client = await PgflowClient.connect(dsn)
        except PgflowClientError as exc:
            _fail(redact(str(exc)))
        async with client:
            run = await client.get_run(run_id)
            if run is None:
                _fail(f"no run {run_id}")
            with Live(_step_table(run), console=console, auto_refresh=False) as live:
                async for _ in run.events():
                    live.update(_step_table(run), refresh=True)
                live.update(_step_table(run), refresh=True)
            if not console.is_terminal:
                console.line()  # a live display off a terminal leaves its last line open
            return 0 if run.status.value == "completed" else 1

    raise typer.Exit(_run_async(go()))


_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO 8601 time (UTC unless it names its zone) or an age such as ``90s``,
    ``15m``, ``2h``, ``7d``, ``1w`` counted back from now."""
    now = now or datetime.now(UTC)
    value = text.strip()
    unit = _SINCE_UNITS.get(value[-1:].lower())
    if unit is not None and value[:-1].isdigit():
        return now - timedelta(seconds=int(value[:-1]) * unit)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither an ISO 8601 time (2026-12-05T10:00:00+00:00) nor an "
            "age (90s, 15m, 2h, 7d, 1w)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def _client(dsn: str) -> Any:
    from pgflow_client import PgflowClient, PgflowClientError

    try:
        return await PgflowClient.connect(dsn)
    except PgflowClientError as exc:
        _fail(redact(str(exc)))


def _check_run_id(run_id: str) -> str:
    from pgflow_client import InvalidRunId
    from pgflow_client._events import canonical_run_id

    try:
        return canonical_run_id(run_id)
    except InvalidRunId as exc:
        _fail(str(exc), 2)


def _runs_table(records: list[Any]) -> Any:
    from rich.table import Table

    retries = any(r.restart_of_run_id for r in records)
    table = Table()
    columns = ["run", "flow", "status", "started", "ended"] + (["retry of"] if retries else [])
    for column in columns:
        table.add_column(column, overflow="fold")
    for r in records:
        ended = r.completed_at or r.failed_at
        cells = [
            Text(r.run_id),
            Text(r.flow_slug),
            # A cancelled run is failed; "cancelled" is also what --status takes for them.
            Text("cancelled" if r.cancelled else r.status.value),
            Text(r.started_at.strftime("%Y-%m-%d %H:%M:%S") if r.started_at else ""),
            Text(ended.strftime("%Y-%m-%d %H:%M:%S") if ended else ""),
        ]
        table.add_row(*cells, *([Text(r.restart_of_run_id or "")] if retries else []))
    return table


@app.command()
def runs(
    flow: Annotated[
        str | None, typer.Option("--flow", help="Only the runs of this flow.", show_default=False)
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only runs with this status: started, completed, failed or cancelled.",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only runs started since WHEN: an ISO 8601 time (UTC unless it has a zone) "
            "or an age such as 15m, 2h, 7d.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many runs.")] = 50,
    before: Annotated[
        str | None,
        typer.Option(
            "--before",
            help="The next page: runs listed after this run id (the last of the previous page).",
            show_default=False,
        ),
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List runs, newest first."""
    from pgflow_client import InvalidRunFilter, PgflowClientError

    dsn = _dsn(db)
    try:
        when = parse_since(since) if since is not None else None
    except ValueError as exc:
        _fail(str(exc), 2)
    cursor = _check_run_id(before) if before is not None else None

    async def go() -> None:
        async with await _client(dsn) as client:
            try:
                records = await client.list_runs(
                    flow_slug=flow, status=status, since=when, limit=limit, before=cursor
                )
            except InvalidRunFilter as exc:
                _fail(str(exc), 2)
            except PgflowClientError as exc:
                _fail(str(exc))
            if as_json:
                console.print_json(dump_json([r.model_dump(mode="json") for r in records]))
            elif records:
                console.print(_runs_table(records))
            else:
                errors.print("no runs", highlight=False)

    _run_async(go())


@app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(help="The run to cancel.")],
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="Why, recorded with the run.", show_default=False),
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a started run: it ends failed, marked cancelled; its tasks never start."""
    from pgflow_client import PgflowClientError

    dsn = _dsn(db)
    rid = _check_run_id(run_id)

    async def go() -> None:
        async with await _client(dsn) as client:
            try:
                run = await client.cancel_run(rid, reason=reason)
            except PgflowClientError as exc:
                _fail(str(exc))
            if as_json:
                console.print_json(dump_json(_run_dict(run)))
            else:
                typer.echo(f"run {run.run_id} cancelled")

    _run_async(go())


@app.command()
def retry(
    run_id: Annotated[str, typer.Argument(help="The failed or cancelled run to retry.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the new run to end.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 300.0,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a new run of a failed run's flow with its input and print its id; with --wait,
    print its output (exit 1 if it fails)."""
    from pgflow_client import PgflowClientError, StatusUnreachable

    dsn = _dsn(db)
    rid = _check_run_id(run_id)

    async def go() -> int:
        async with await _client(dsn) as client:
            try:
                run = await client.retry_run(rid)
            except PgflowClientError as exc:
                _fail(str(exc))
            if wait:
                if not as_json:
                    errors.print(f"run {run.run_id} started; waiting…", highlight=False)
                try:
                    await run.wait_for_status("completed", timeout=timeout)
                except StatusUnreachable:
                    pass
                except TimeoutError:
                    _fail(f"run {run.run_id} did not finish within {timeout:g} s", 3)
            if as_json:
                console.print_json(dump_json(_run_dict(run)))
            elif not wait:
                typer.echo(str(run.run_id))  # nothing else on stdout: $(pgflow retry ...)
            elif run.status.value == "completed":
                console.print_json(dump_json(run.output))
            else:
                errors.print(
                    f"[bold red]run {run.run_id} failed:[/] {escape(run.error_message or '')}",
                    highlight=False,
                    soft_wrap=True,
                )
            return 1 if wait and run.status.value != "completed" else 0

    raise typer.Exit(_run_async(go()))


DASHBOARD_EXTRA_MISSING = (
    "pgflow dashboard needs the dashboard extra (Starlette, uvicorn, Jinja2), which is not "
    "installed: pip install 'pgflow-py[dashboard]'"
)


def _dashboard_module() -> Any:
    try:
        return importlib.import_module(f"{__package__}.dashboard")
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] in {"starlette", "uvicorn", "jinja2"}:
            _fail(f"{DASHBOARD_EXTRA_MISSING} (missing: {exc.name})")
        raise


@app.command()
def dashboard(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="The address to listen on. Any address but a loopback one needs --token.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The port to listen on.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="PGFLOW_DASHBOARD_TOKEN",
            help="A secret every request must carry (a Bearer header, or open a page once "
            "with ?token=TOKEN). Required to listen beyond 127.0.0.1.",
            show_default=False,
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Serve a web UI of the flows and runs: DAGs, live runs, cancel and retry."""
    module = _dashboard_module()
    from ..errors import DashboardError

    dsn = _dsn(db)
    try:
        module.check_bind(host, token)
    except DashboardError as exc:
        _fail(str(exc), 2)

    def announce(url: str) -> None:
        errors.print(
            f"pgflow dashboard on {url} for {describe_dsn(dsn)} (Ctrl-C stops it)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    try:
        module.serve(dsn, host=host, port=port, token=token, announce=announce)
    except DashboardError as exc:
        _fail(str(exc))


@app.command()
def demo(
    runs: Annotated[
        int, typer.Option("--runs", "-n", min=1, max=50, help="Runs of each demo flow.")
    ] = 3,
    live: Annotated[
        bool | None,
        typer.Option(
            "--live/--no-live",
            help="Live table, or one line per event (default: live on a terminal).",
            show_default=False,
        ),
    ] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Wipe the demo's cached server and start afresh.")
    ] = False,
    db: DbOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each run.")] = 60.0,
    with_dashboard: Annotated[
        bool,
        typer.Option(
            "--dashboard",
            help="Serve the dashboard on the demo's database (127.0.0.1) from the first run "
            "on, until Ctrl-C.",
        ),
    ] = False,
    dashboard_port: Annotated[
        int, typer.Option("--dashboard-port", help="The dashboard's port, with --dashboard.")
    ] = 8765,
) -> None:
    """Run pgflow end to end: a worker, live runs of two flows, their outputs and timings.

    Uses --db or DATABASE_URL (and SUPABASE_URL with SUPABASE_KEY for the client) when set;
    otherwise a PostgreSQL server of its own, kept in a cache folder (PGFLOW_DEMO_DIR) and
    reused next time.
    """
    from .demo import DemoOptions, run_demo

    if with_dashboard:
        _dashboard_module()  # without the extra, say so before the demo starts
    options = DemoOptions(
        runs=runs,
        live=live,
        reset=reset,
        db=db,
        timeout=timeout,
        dashboard_port=dashboard_port if with_dashboard else None,
    )
    raise typer.Exit(run_demo(options, console=console, errors=errors))


db_app = typer.Typer(
    help="A local PostgreSQL server with pgmq and pgflow migrated, kept running between "
    "commands: for the Quickstart and for development.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="The server's folder (default: $PGFLOW_DB_DIR, else a folder of this user's).",
        show_default=False,
    ),
]
#: ``pgflow db status``'s exit status when no server runs (as ``pg_ctl status``'s).
NOT_RUNNING = 3


def _db_error(exc: PgflowError) -> NoReturn:
    from ..errors import PostgresStartError

    message = str(exc)
    if isinstance(exc, PostgresStartError) and exc.cluster_at_fault:
        message += (
            "\n(the cluster's data is what fails: start PostgreSQL binaries of the version "
            "that made it (PGFLOW_PG_BINDIR), or move the folder away to start afresh)"
        )
    _fail(message)


@db_app.command("start")
def db_start(
    directory: DirOption = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            min=1,
            max=65535,
            help="Listen on this port (default: the last one used, if free, else a free one).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start the server (if it is not running), migrate it, and print its DATABASE_URL.

    It keeps running after this command exits, until 'pgflow db stop'.
    """
    from .localdb import PersistentPostgres

    try:
        server = PersistentPostgres(directory)
        server.start(port=port)
    except FileNotFoundError as exc:
        _fail(f"cannot start the server: {exc.filename or 'a program'} is not installed")
    except PgflowError as exc:
        _db_error(exc)
    if server.already_running:
        state = "already running"
    else:
        state = f"started ({'reused' if server.reused else 'created'})"
    errors.print(
        f"PostgreSQL {server.version} ({server.source} binaries) in {server.directory}: {state}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    typer.echo(server.dsn())  # nothing else on stdout: $(pgflow db start)


@db_app.command("stop")
def db_stop(directory: DirOption = None) -> None:
    """Stop the server; its data stays for the next start."""
    from .localdb import PersistentPostgres, db_status

    status = db_status(directory)
    if not status.running:
        errors.print(f"no server is running in {status.directory}", markup=False)
        return
    try:
        PersistentPostgres(directory).stop()
    except PgflowError as exc:
        _db_error(exc)
    errors.print(f"stopped the server in {status.directory}", markup=False, soft_wrap=True)


@db_app.command("status")
def db_status_command(directory: DirOption = None) -> None:
    """Say whether the server runs (exit status 0) or not (3), where, and from which binaries."""
    from .localdb import db_status

    status = db_status(directory)
    lines = [
        f"running: {status.url}" if status.running else "not running",
        f"folder: {status.directory}",
    ]
    if status.bindir is not None:
        lines.append(f"binaries: PostgreSQL {status.version} ({status.source}) in {status.bindir}")
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if status.running else NOT_RUNNING)


@db_app.command("url")
def db_url(directory: DirOption = None) -> None:
    """Print the server's DATABASE_URL; fail when it is not running."""
    from .localdb import db_status

    try:
        url = db_status(directory).require_url()
    except PgflowError as exc:
        _fail(str(exc))
    typer.echo(url)


def _json_default(value: Any) -> str:
    return str(value)


def dump_json(data: Any) -> str:
    """JSON for ``--json`` output (UUIDs and timestamps as strings)."""
    return json.dumps(data, default=_json_default, indent=2)


def main() -> None:
    """Entry point of the ``pgflow`` console script."""
    app()

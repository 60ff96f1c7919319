"""The ``pgflow`` command line: migrate a database, compile flows, run workers, start and
watch runs."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import psycopg
import typer
from rich.console import Console

from pgflow_client._dsn import describe_dsn, redact, resolve_dsn

from ._compiler import compile_flow, migration_filename, render_migration
from ._database import migrate as run_migrations
from ._flow import Flow
from .errors import PgflowError

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
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
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
    if attribute:
        flow = getattr(module, attribute, None)
        if not isinstance(flow, Flow):
            raise PgflowError(
                f"{module_name}:{attribute} is not a Flow (got {type(flow).__name__})"
            )
        return flow
    flows = [value for value in vars(module).values() if isinstance(value, Flow)]
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
    console.print(f"database: {describe_dsn(dsn)}")
    console.print(f"pgmq: {report.pgmq}; realtime: {report.realtime}")
    for name in report.applied:
        console.print(f"[green]applied[/] {name}")
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
        for statement in compile_flow(flow):
            console.print(statement, highlight=False, soft_wrap=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / migration_filename(flow)
    path.write_text(render_migration(flow), encoding="utf-8")
    console.print(f"wrote {path}")


@app.command()
def worker(
    target: Annotated[str, typer.Argument(help="MODULE:FLOW whose steps this worker runs.")],
    db: DbOption = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Handlers running at once.")
    ] = 10,
    batch_size: Annotated[int, typer.Option(help="Messages read per poll.")] = 10,
    max_pg_connections: Annotated[int, typer.Option(help="Size of the connection pool.")] = 4,
    visibility_timeout: Annotated[
        int, typer.Option(help="Seconds a read message stays hidden before start_tasks.")
    ] = 5,
    max_poll_seconds: Annotated[int, typer.Option(help="Longest server-side poll.")] = 2,
    poll_interval_ms: Annotated[int, typer.Option(help="Pause between server polls.")] = 100,
    shutdown_timeout: Annotated[
        float, typer.Option(help="Seconds to let in-flight handlers finish on SIGTERM.")
    ] = 30.0,
    recompile: Annotated[
        bool,
        typer.Option(help="Replace a differing stored flow definition (deletes its runs)."),
    ] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run a worker for one flow until SIGTERM or SIGINT (then drain and stop)."""
    from ._worker import run_worker

    flow = _load(target)
    dsn = _dsn(db)
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        run_worker(
            flow,
            dsn,
            max_concurrent=concurrency,
            batch_size=batch_size,
            max_pg_connections=max_pg_connections,
            visibility_timeout=visibility_timeout,
            max_poll_seconds=max_poll_seconds,
            poll_interval_ms=poll_interval_ms,
            shutdown_timeout=shutdown_timeout,
            recompile=recompile,
        )
    except psycopg.OperationalError as exc:
        _fail(connection_problem(dsn, exc))
    except PgflowError as exc:
        _fail(redact(str(exc)))


def _json_default(value: Any) -> str:
    return str(value)


def dump_json(data: Any) -> str:
    """JSON for ``--json`` output (UUIDs and timestamps as strings)."""
    return json.dumps(data, default=_json_default, indent=2)


def main() -> None:
    """Entry point of the ``pgflow`` console script."""
    app()

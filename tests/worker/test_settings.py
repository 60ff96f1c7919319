"""WorkerSettings' defaults are pgflow's flow worker defaults, and the CLI's are the same."""

from __future__ import annotations

import dataclasses

import pytest
import typer

from pgflow_worker import WorkerError, WorkerSettings
from pgflow_worker._tools.cli import app

#: createFlowWorker's defaults and the heartbeat throttle of pgflow's Edge Worker.
PGFLOW_DEFAULTS = {
    "max_concurrent": 10,
    "max_pg_connections": 4,
    "batch_size": 10,
    "visibility_timeout": 5,
    "max_poll_seconds": 2,
    "poll_interval_ms": 100,
    "heartbeat_interval": 5.0,
}


def test_defaults_are_pgflows() -> None:
    settings = WorkerSettings()
    assert {name: getattr(settings, name) for name in PGFLOW_DEFAULTS} == PGFLOW_DEFAULTS
    fields = {f.name: f.default for f in dataclasses.fields(WorkerSettings)}
    assert {name: fields[name] for name in PGFLOW_DEFAULTS} == PGFLOW_DEFAULTS


def test_the_worker_command_defaults_to_the_same_settings() -> None:
    command = typer.main.get_command(app).commands["worker"]  # type: ignore[attr-defined]
    defaults = {param.name: param.default for param in command.params}
    settings = WorkerSettings()
    assert defaults["concurrency"] == settings.max_concurrent
    for name in (
        "batch_size",
        "max_pg_connections",
        "visibility_timeout",
        "max_poll_seconds",
        "poll_interval_ms",
        "shutdown_timeout",
    ):
        assert defaults[name] == getattr(settings, name), name
    assert defaults["recompile"] is False


def test_statements_are_never_prepared_by_default() -> None:
    """The default works through a transaction-mode pooler; a bad value is refused by name."""
    assert WorkerSettings().prepare_threshold is None
    assert WorkerSettings(prepare_threshold=5).prepare_threshold == 5
    for bad in (-1, True):
        with pytest.raises(WorkerError, match=r"prepare_threshold .* got"):
            WorkerSettings(prepare_threshold=bad)

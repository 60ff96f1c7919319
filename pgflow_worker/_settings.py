"""The worker's settings, validated once and frozen so handlers can read but not change them."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import WorkerError

__all__ = ["WorkerSettings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    """How a :class:`FlowWorker` polls, runs and stops; defaults follow pgflow's flow worker.

    ``visibility_timeout`` hides a message between the read and ``start_tasks`` (which then
    hides it for the step's timeout + 2 s); ``max_poll_seconds`` and ``poll_interval_ms`` shape
    the server-side poll; ``shutdown_timeout`` bounds how long a graceful stop waits for
    in-flight handlers before cancelling them; ``cancel_check_interval`` is how often, while
    handlers run, the worker asks whether their runs were cancelled. ``prepare_threshold`` is
    psycopg's: the default ``None`` never prepares statements, which a transaction-mode pooler
    needs (the next transaction may run in a server session that never saw the statement
    prepared).
    """

    max_concurrent: int = 10
    max_pg_connections: int = 4
    batch_size: int = 10
    visibility_timeout: int = 5
    max_poll_seconds: int = 2
    poll_interval_ms: int = 100
    heartbeat_interval: float = 5.0
    cancel_check_interval: float = 1.0
    shutdown_timeout: float = 30.0
    enforce_timeouts: bool = True
    recompile: bool = False
    function_name: str = "pgflow-py"
    prepare_threshold: int | None = None

    def __post_init__(self) -> None:
        positive = {
            "max_concurrent": self.max_concurrent,
            "max_pg_connections": self.max_pg_connections,
            "batch_size": self.batch_size,
            "visibility_timeout": self.visibility_timeout,
            "poll_interval_ms": self.poll_interval_ms,
            "heartbeat_interval": self.heartbeat_interval,
            "cancel_check_interval": self.cancel_check_interval,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or value <= 0:
                raise WorkerError(f"worker setting {name} must be a positive number, got {value!r}")
        if self.max_poll_seconds < 0 or self.shutdown_timeout < 0:
            raise WorkerError(
                "worker settings max_poll_seconds and shutdown_timeout cannot be negative "
                f"(got {self.max_poll_seconds!r}, {self.shutdown_timeout!r})"
            )
        if self.prepare_threshold is not None and (
            isinstance(self.prepare_threshold, bool) or self.prepare_threshold < 0
        ):
            raise WorkerError(
                "worker setting prepare_threshold must be None (never prepare, what a "
                "transaction-mode pooler needs) or a count of runs of zero or more, got "
                f"{self.prepare_threshold!r}"
            )
        if self.max_pg_connections < 2:
            raise WorkerError(
                "worker setting max_pg_connections must be at least 2: one connection polls "
                "while another reports results"
            )

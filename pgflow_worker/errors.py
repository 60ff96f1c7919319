"""Every exception the worker package raises, named for what went wrong."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "DashboardError",
    "DatabaseSetupError",
    "FlowDefinitionError",
    "FlowRunTimeout",
    "FlowShapeMismatch",
    "HandlerContextError",
    "HandlerInputError",
    "HandlerOutputError",
    "MigrationError",
    "PgflowError",
    "PgmqUnavailable",
    "PostgresNotFound",
    "PostgresStartError",
    "ServerFolderInUse",
    "ServerNotRunning",
    "StepNotFound",
    "WorkerError",
]


class PgflowError(Exception):
    """Base class of every error raised by ``pgflow_worker``."""


class FlowDefinitionError(PgflowError, ValueError):
    """A flow or step definition breaks one of pgflow's rules.

    The message names the flow, the step (when there is one) and the rule.
    """

    def __init__(self, message: str, *, flow_slug: str, step_slug: str | None = None) -> None:
        super().__init__(message)
        self.flow_slug = flow_slug
        self.step_slug = step_slug


class FlowShapeMismatch(PgflowError):
    """The flow stored in the database differs from the one the worker was given."""

    def __init__(
        self, flow_slug: str, differences: Sequence[str], *, mismatch_kind: str = "shape"
    ) -> None:
        self.flow_slug = flow_slug
        self.differences = list(differences)
        self.mismatch_kind = mismatch_kind
        """pgflow's ``mismatchKind``: ``shape`` (steps, dependencies, conditions) or
        ``routing`` (queues, with pgflow 0.17's per-step queues)."""
        listing = "\n".join(f"  - {d}" for d in self.differences)
        super().__init__(
            f"flow {flow_slug!r} in the database differs from the definition:\n{listing}\n"
            "Nothing was changed. Start the worker with recompile=True (CLI: --recompile) to "
            "replace the stored definition; this deletes the flow's runs."
        )


class HandlerOutputError(PgflowError, TypeError):
    """A step handler returned a value that cannot be stored as JSON."""


class WorkerError(PgflowError):
    """The worker cannot run (bad configuration, lost database, ...)."""


class HandlerContextError(WorkerError, RuntimeError):
    """A handler used its context in a way that cannot work, such as a blocking call
    (``ctx.flow_input``, ``ctx.execute``) from an async handler, which would stall the
    worker's event loop; the message names the async way to do it."""


class DatabaseSetupError(PgflowError):
    """Base class for problems preparing a database for pgflow."""


class PostgresNotFound(DatabaseSetupError):
    """No PostgreSQL server binaries could be found to start a local server."""


class PostgresStartError(DatabaseSetupError):
    """A local PostgreSQL server was found but could not be initialised or started.

    ``cluster_at_fault`` is true when the server's existing data is what failed (written by
    another major version, damaged), so that a new cluster in its place would start.
    """

    def __init__(self, message: str, *, cluster_at_fault: bool = False) -> None:
        super().__init__(message)
        self.cluster_at_fault = cluster_at_fault


class ServerFolderInUse(PostgresStartError):
    """Another process is using the local server's folder (a demo running, say)."""

    def __init__(self, message: str, *, holder: int | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class ServerNotRunning(DatabaseSetupError):
    """The persistent local server (``pgflow db``) is not running."""


class PgmqUnavailable(DatabaseSetupError):
    """The pgmq extension is missing and cannot be installed."""


class MigrationError(DatabaseSetupError):
    """A migration could not be applied, or the database holds an unknown pgflow schema."""


class DashboardError(PgflowError):
    """``pgflow dashboard`` cannot start: its extra is not installed, or it was asked to listen
    beyond this machine without a token, or on an address it cannot use."""


class StepNotFound(PgflowError, KeyError):
    """A flow was asked for a step it does not define."""

    def __init__(self, flow_slug: str, step_slug: str) -> None:
        super().__init__(f"flow {flow_slug!r} has no step {step_slug!r}")
        self.flow_slug = flow_slug
        self.step_slug = step_slug

    def __str__(self) -> str:
        # KeyError would show the message in quotes; show it as written.
        return str(self.args[0])


class HandlerInputError(PgflowError, ValueError):
    """A step's input does not match the pydantic model its handler is annotated with."""

    def __init__(self, message: str, *, flow_slug: str, step_slug: str) -> None:
        super().__init__(message)
        self.flow_slug = flow_slug
        self.step_slug = step_slug


class FlowRunTimeout(PgflowError, TimeoutError):
    """A flow run by the testing helpers had not ended when its time ran out.

    ``result`` is the run as it stood then; the message names the steps that had not ended.
    """

    def __init__(self, result: Any, timeout: float) -> None:
        self.result = result
        self.timeout = timeout
        pending = [
            f"{step.step_slug!r} {step.status}"
            + (f" (attempt {step.attempts}: {step.error_message})" if step.error_message else "")
            for step in result.steps.values()
            if step.status in ("created", "started")
        ]
        super().__init__(
            f"run {result.run_id} of flow {result.flow_slug!r} had not ended after {timeout:g} s;"
            f" steps not ended: {', '.join(pending) or 'none'}"
        )

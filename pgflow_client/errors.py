"""Every exception the client package raises, named for what went wrong."""

from __future__ import annotations

__all__ = [
    "ClientClosed",
    "FlowNotFound",
    "InvalidFlowInput",
    "InvalidRunData",
    "InvalidRunFilter",
    "InvalidRunId",
    "ListenUnavailable",
    "PgflowClientError",
    "RpcError",
    "RunAlreadyExists",
    "RunAlreadyFinished",
    "RunNotFailed",
    "RunNotFound",
    "StatusUnreachable",
    "SubscriptionError",
    "TransportError",
    "WaitCancelled",
    "WaitTimeout",
]


class PgflowClientError(Exception):
    """Base class of every error raised by ``pgflow_client``."""


class WaitTimeout(PgflowClientError, TimeoutError):
    """``wait_for_status`` gave up after its timeout; the run or step never reached the status."""

    def __init__(self, message: str, *, target: str, timeout: float) -> None:
        super().__init__(message)
        self.target = target
        self.timeout = timeout


class WaitCancelled(PgflowClientError):
    """``wait_for_status`` ended early: its ``cancel`` event was set or the run was disposed."""

    def __init__(self, message: str, *, target: str) -> None:
        super().__init__(message)
        self.target = target


class StatusUnreachable(PgflowClientError):
    """The run or step reached a terminal status, so the awaited status can never come.

    ``status`` is the terminal status reached, ``target`` the awaited one, and
    ``error_message`` the failure message when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: str,
        target: str,
        error_message: str | None,
        run_id: str,
        step_slug: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.target = target
        self.error_message = error_message
        self.run_id = run_id
        self.step_slug = step_slug


class InvalidRunData(PgflowClientError, ValueError):
    """A run or step-state snapshot from the server is missing fields or holds invalid values."""


class InvalidRunId(PgflowClientError, ValueError):
    """A run id is not a UUID; it is refused before anything is sent or subscribed."""

    def __init__(self, message: str, *, run_id: object) -> None:
        super().__init__(message)
        self.run_id = run_id


class InvalidRunFilter(PgflowClientError, ValueError):
    """A ``list_runs`` filter is out of range (an unknown status, a limit below 1); refused
    before anything is sent."""


class TransportError(PgflowClientError):
    """Base class for failures talking to the server (RPC calls, realtime subscriptions)."""


class RpcError(TransportError):
    """The server refused a call; ``code`` is the SQLSTATE (or PostgREST code) it gave."""

    def __init__(
        self, message: str, *, code: str | None = None, function: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.function = function


class FlowNotFound(RpcError, LookupError):
    """``start_flow`` named a flow that does not exist in the database."""

    def __init__(self, message: str, *, flow_slug: str, code: str | None = None) -> None:
        super().__init__(message, code=code, function="start_flow_with_states")
        self.flow_slug = flow_slug


class InvalidFlowInput(RpcError, ValueError):
    """The flow input was refused: not JSON, or not an array for a flow with a root map step."""

    def __init__(self, message: str, *, flow_slug: str, code: str | None = None) -> None:
        super().__init__(message, code=code, function="start_flow_with_states")
        self.flow_slug = flow_slug


class RunAlreadyExists(RpcError):
    """``start_flow`` was given a ``run_id`` that another run already has."""


class RunNotFound(RpcError, LookupError):
    """``cancel_run``, ``retry_run`` or ``list_runs`` (its ``before``) named a run that does not
    exist (SQLSTATE P0002)."""

    def __init__(
        self, message: str, *, run_id: str, code: str | None = None, function: str | None = None
    ) -> None:
        super().__init__(message, code=code, function=function)
        self.run_id = run_id


class RunAlreadyFinished(RpcError):
    """``cancel_run`` was given a run that has already completed, failed or been cancelled;
    nothing changed (SQLSTATE 55000)."""

    def __init__(self, message: str, *, run_id: str, code: str | None = None) -> None:
        super().__init__(message, code=code, function="cancel_run")
        self.run_id = run_id


class RunNotFailed(RpcError):
    """``retry_run`` was given a run that has not failed (it is started or completed); only a
    failed or cancelled run can be retried (SQLSTATE 55000)."""

    def __init__(self, message: str, *, run_id: str, code: str | None = None) -> None:
        super().__init__(message, code=code, function="retry_run")
        self.run_id = run_id


class SubscriptionError(TransportError):
    """The realtime subscription for a run could not be established."""


class ListenUnavailable(TransportError):
    """Notifications do not reach this connection, so runs cannot be watched over it.

    Raised by ``PgflowClient.connect(dsn)`` when a test notification, sent through a second
    connection, never arrives: what a transaction-mode pooler (Supabase's port 6543, pgbouncer
    with ``pool_mode = transaction``) does, since ``LISTEN`` belongs to a server session the
    client does not keep. Connect directly or through a session-mode pooler instead.
    """


class ClientClosed(PgflowClientError):
    """The client was closed; create a new one to keep working."""

"""Every exception the client package raises, named for what went wrong."""

from __future__ import annotations

__all__ = [
    "InvalidRunData",
    "PgflowClientError",
    "StatusUnreachable",
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


class TransportError(PgflowClientError):
    """Base class for failures talking to the server (RPC calls, realtime subscriptions)."""

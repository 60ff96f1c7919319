"""What the client needs from a transport, whichever way it reaches the database.

A transport makes the two RPC calls (``start_flow_with_states`` and ``get_run_with_states``),
calls the functions that operate runs (``list_runs``, ``cancel_run``, ``retry_run``) and
delivers each run's raw broadcast events. It calls back into the client with
:class:`TransportHooks`: ``deliver`` for every raw event of a subscribed run, ``resync`` when
events may have been missed (a reconnect, a rejoin, the first moments of a subscription), so
the client refetches the snapshot and replays what it missed.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from .errors import (
    FlowNotFound,
    InvalidFlowInput,
    RpcError,
    RunAlreadyExists,
    RunAlreadyFinished,
    RunNotFailed,
    RunNotFound,
)

__all__ = [
    "TRACED_START",
    "Transport",
    "TransportHooks",
    "check_json",
    "json_params",
    "nothing",
    "rpc_error",
    "subject_run",
    "tracing_unavailable",
]

#: The SQL function that starts a run and stores its trace context (pgflow-py's SQL, 0006+).
TRACED_START = "start_flow_with_states_traced"


@dataclass(frozen=True, slots=True)
class TransportHooks:
    """Callbacks a transport uses to hand events and resync requests to the client."""

    deliver: Callable[[str, str, Any], None]
    """``deliver(run_id, event_name, payload)`` for every raw broadcast of a subscribed run."""

    resync: Callable[[str], Coroutine[Any, Any, None]]
    """``await resync(run_id)``: refetch the run's snapshot and replay missed transitions."""


class Transport(Protocol):
    """The two RPCs and one event subscription per run."""

    async def subscribe(self, run_id: str) -> None:
        """Start receiving the run's events; returns once the subscription is confirmed."""

    def unsubscribe(self, run_id: str) -> Coroutine[Any, Any, None]:
        """Stop receiving the run's events at once (``subscribed()`` no longer lists it);
        awaiting the result releases what the server holds for it. Safe for unknown or
        repeated ids."""
        ...

    def subscribed(self) -> frozenset[str]:
        """The run ids currently subscribed."""
        ...

    async def start_flow_with_states(
        self, flow_slug: str, input: Any, run_id: str, *, trace: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Start a run; return ``{"run": ..., "steps": [...]}``.

        ``trace``, W3C trace context headers (``traceparent``, ``tracestate``), is stored
        with the run (``start_flow_with_states_traced``) where the database has that
        function and the role may call it; elsewhere the run starts without it.
        """
        ...

    async def get_run_with_states(self, run_id: str) -> dict[str, Any] | None:
        """The run's snapshot, or None when there is no such run."""
        ...

    async def call_rows(self, function: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Call ``pgflow.<function>`` with named arguments (None ones left to their default);
        return the rows it returned, as JSON objects."""
        ...

    def after_start(self, run_id: str) -> None:
        """Called once a run's first snapshot is applied, by ``start_flow`` and ``get_run``,
        so a transport whose subscriptions take a moment to route events can check again."""

    async def close(self) -> None:
        """Release every resource the transport opened."""


async def nothing() -> None:
    """An awaitable that does nothing: what ``unsubscribe`` returns when there is nothing to
    release."""


#: ``\\u0000`` as JSON writes a NUL character: an odd run of backslashes before ``u0000``.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def check_json(flow_slug: str, value: Any) -> None:
    """Refuse a flow input JSON cannot carry, before anything is sent or created.

    Beyond what ``json`` refuses (non-JSON types, NaN, Infinity), Postgres ``jsonb`` also
    refuses lone surrogates (not encodable as UTF-8) and the ``\\u0000`` escape, and nesting
    too deep to serialize would only fail later, inside the transport.
    """
    reason: str | None = None
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except RecursionError:
        reason = "it is nested too deeply"
    except (TypeError, ValueError) as exc:
        reason = str(exc)
        if isinstance(exc, ValueError) and "compliant" in reason:
            reason = "NaN and Infinity have no JSON form"
    else:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            reason = "it holds a lone surrogate, which UTF-8 cannot encode"
        else:
            if _NUL_ESCAPE.search(text):
                reason = "it holds a NUL character (\\u0000), which Postgres jsonb refuses"
    if reason is not None:
        raise InvalidFlowInput(
            f"the input for flow {flow_slug!r} is not JSON-serializable: {reason}",
            flow_slug=flow_slug,
        ) from None


def rpc_error(
    function: str,
    code: str | None,
    message: str,
    *,
    flow_slug: str | None,
    run_id: str | None = None,
) -> RpcError:
    """The specific exception for a refused RPC, from its SQLSTATE and message."""
    if run_id is not None and function in ("cancel_run", "retry_run", "list_runs"):
        if code == "P0002":
            return RunNotFound(message, run_id=run_id, code=code, function=function)
        if code == "55000" and function == "cancel_run":
            return RunAlreadyFinished(message, run_id=run_id, code=code)
        if code == "55000" and function == "retry_run":
            return RunNotFailed(message, run_id=run_id, code=code)
        if code == "23505":
            return RunAlreadyExists(message, code=code, function=function)
    if function in ("start_flow_with_states", TRACED_START) and flow_slug is not None:
        if code == "23503" and "does not exist" in message:
            return FlowNotFound(message, flow_slug=flow_slug, code=code)
        if code in ("P0001", "23502") and "input" in message:
            return InvalidFlowInput(message, flow_slug=flow_slug, code=code)
        if code == "23505":
            return RunAlreadyExists(message, code=code, function=function)
    return RpcError(f"{function} failed: {message}", code=code, function=function)


def tracing_unavailable(code: str | None) -> bool:
    """Whether a refused ``start_flow_with_states_traced`` call means it cannot be used here
    (no such function, as in pgflow's own SQL, or no EXECUTE on it), before anything ran:
    the run is then started without its trace context."""
    return code in ("42883", "42501", "PGRST202")


def subject_run(params: dict[str, Any]) -> str | None:
    """The run an operation's arguments name (``run_id``, else ``before_run_id``), as text."""
    value = params.get("run_id") or params.get("before_run_id")
    return None if value is None else str(value)


def json_params(params: dict[str, Any]) -> dict[str, Any]:
    """Named arguments as JSON values for an RPC body, None ones left out (to their default)."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        out[name] = value
    return out

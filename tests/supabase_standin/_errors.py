"""PostgREST-shaped errors: the JSON body, the HTTP status, and the mapping from SQLSTATE codes.

postgrest-py turns any non-2xx answer whose body has ``code``/``message``/``details``/``hint``
into ``APIError``; the statuses follow PostgREST's table so callers see what a real stack sends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import psycopg


class RestError(Exception):
    """An error answer in PostgREST's shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: str | None = None,
        hint: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.hint = hint
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "details": self.details,
            "hint": self.hint,
            "message": self.message,
        }


def query_param_error(message: str, details: str | None = None) -> RestError:
    """PGRST100: the query string could not be understood."""
    return RestError(400, "PGRST100", message, details=details)


def http_status_for(sqlstate: str, message: str, *, authenticated: bool) -> int:
    """The HTTP status PostgREST answers with for a database error."""
    exact = {
        "23503": 409,
        "23505": 409,
        "25006": 405,
        "53400": 500,
        "57P01": 503,
        "P0001": 400,
        "42883": 404,
        "42P01": 404,
        "42P17": 500,
    }
    if sqlstate in exact:
        return exact[sqlstate]
    if sqlstate == "42501":
        return 403 if authenticated else 401
    if sqlstate == "22023":
        return 401 if message.startswith("role") and message.endswith("does not exist") else 400
    if sqlstate == "21000":
        return 400 if message.endswith("requires a WHERE clause") else 500
    if sqlstate.startswith("PT") and sqlstate[2:].isdigit():
        return int(sqlstate[2:])
    by_class = {
        "08": 503,
        "09": 500,
        "0L": 403,
        "0P": 403,
        "25": 500,
        "28": 403,
        "2D": 500,
        "38": 500,
        "39": 500,
        "3B": 500,
        "40": 500,
        "53": 503,
        "54": 500,
        "55": 500,
        "57": 500,
        "58": 500,
        "F0": 500,
        "HV": 500,
        "P0": 500,
        "XX": 500,
    }
    return by_class.get(sqlstate[:2], 400)


def from_database_error(exc: psycopg.Error, *, authenticated: bool) -> RestError:
    """Translate a psycopg error into the answer PostgREST would give for it."""
    diag = exc.diag
    sqlstate = exc.sqlstate
    if sqlstate is None:
        return RestError(503, "PGRST001", "Database client error. Retrying the connection.")
    message = diag.message_primary or str(exc)
    if sqlstate == "PGRST":
        return _custom_raise(message, diag.message_detail)
    return RestError(
        http_status_for(sqlstate, message, authenticated=authenticated),
        sqlstate,
        message,
        details=diag.message_detail,
        hint=diag.message_hint,
    )


def _custom_raise(message: str, detail: str | None) -> RestError:
    """``RAISE SQLSTATE 'PGRST'``: message and detail carry the whole answer as JSON."""
    try:
        body = json.loads(message)
        code, text = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        return RestError(
            500,
            "PGRST121",
            "Could not parse JSON in the \"RAISE SQLSTATE 'PGRST'\" error",
            details=f"Invalid JSON value for MESSAGE: '{message}'",
        )
    try:
        extra = json.loads(detail or "")
        status = int(extra["status"])
        headers = {str(k): str(v) for k, v in dict(extra.get("headers") or {}).items()}
    except (ValueError, KeyError, TypeError):
        return RestError(
            500,
            "PGRST121",
            "Could not parse JSON in the \"RAISE SQLSTATE 'PGRST'\" error",
            details="DETAIL is missing in the RAISE statement"
            if detail is None
            else f"Invalid JSON value for DETAIL: '{detail}'",
        )
    return RestError(
        status,
        code,
        text,
        details=body.get("details"),
        hint=body.get("hint"),
        headers=headers,
    )

"""Unsigned JSON Web Tokens: enough to carry a ``role`` claim the way Supabase keys do.

The stand-in never checks signatures; it only reads claims, so tokens made here have
``alg: none`` and an empty signature.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_jwt(claims: Mapping[str, Any]) -> str:
    """A token carrying ``claims``, in the three-part JWT form, without a signature."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = _b64(json.dumps(dict(claims), separators=(",", ":")).encode())
    return f"{header}.{body}."


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT-shaped token, or None when the token is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    padded = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError):
        return None
    return claims if isinstance(claims, dict) else None

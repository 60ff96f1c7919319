"""Who may use the dashboard: the token, the Host header, and cross-site POSTs.

Bound to a loopback address, the dashboard accepts only requests naming a loopback host, so a
web page that rebinds its own name to 127.0.0.1 cannot read it. Bound elsewhere, every request
must carry the token: an ``Authorization: Bearer`` header, or the cookie set when a page is
opened once with ``?token=`` (the token then leaves the address bar at once). Cancel and retry
are POSTs that must come from the dashboard's own pages: the browser's ``Origin`` and
``Sec-Fetch-Site`` headers must say so when sent, and the form must carry the same random value
as a SameSite=Strict cookie (double submit).
"""

from __future__ import annotations

import secrets
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import URL
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CSRF_COOKIE", "CSRF_FIELD", "LOOPBACK_HOSTS", "TOKEN_COOKIE", "Guard", "same_origin"]

CSRF_COOKIE = "pgflow_csrf"
CSRF_FIELD = "csrf"
TOKEN_COOKIE = "pgflow_token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


def host_name(host_header: str) -> str:
    """The host of a ``Host`` header, without port or IPv6 brackets, lower case."""
    return (urlsplit("//" + host_header).hostname or "").lower()


def same_origin(request: Request) -> bool:
    """Whether the browser says the request comes from a page of this very origin.

    Browsers send ``Sec-Fetch-Site`` and ``Origin`` with every POST; a client that sends
    neither (curl, a script) is judged by the CSRF token alone.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return origin.lower() == own.lower()


class Guard:
    """ASGI middleware: the Host check, the token check, and security headers on every
    response."""

    def __init__(
        self, app: ASGIApp, *, token: str | None, allowed_hosts: frozenset[str] | None
    ) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        if self.allowed_hosts is not None:
            host = host_name(conn.headers.get("host", ""))
            if host not in self.allowed_hosts:
                response = PlainTextResponse(
                    f"Host {host!r} is not served here: open the dashboard as "
                    f"http://127.0.0.1:PORT/ or http://localhost:PORT/",
                    status_code=421,
                )
                await response(scope, receive, send)
                return
        if self.token is not None:
            offered = conn.query_params.get("token")
            if offered is not None and self._matches(offered):
                await self._adopt(conn)(scope, receive, send)
                return
            if not self._authorized(conn):
                response = PlainTextResponse(
                    "This dashboard needs its token: open it once with ?token=TOKEN in the "
                    "address, or send the header 'Authorization: Bearer TOKEN'.",
                    status_code=401,
                )
                await response(scope, receive, send)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _matches(self, offered: str) -> bool:
        assert self.token is not None
        return secrets.compare_digest(offered.encode(), self.token.encode())

    def _authorized(self, conn: HTTPConnection) -> bool:
        scheme, _, credential = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(credential.strip()):
            return True
        cookie = conn.cookies.get(TOKEN_COOKIE)
        return cookie is not None and self._matches(cookie)

    def _adopt(self, conn: HTTPConnection) -> RedirectResponse:
        """Move the token from the address into a cookie, and the browser to the clean URL."""
        rest = [(k, v) for k, v in conn.query_params.multi_items() if k != "token"]
        url: URL = conn.url.replace(query=urlencode(rest))
        target = url.path + (f"?{url.query}" if url.query else "")
        response = RedirectResponse(target, status_code=303)
        assert self.token is not None
        response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict", path="/")
        for name, value in _HEADERS:
            response.headers[name.decode()] = value.decode()
        return response

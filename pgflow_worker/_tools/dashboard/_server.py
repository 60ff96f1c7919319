"""Running the dashboard: the bind address rules, and uvicorn."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from ...errors import DashboardError
from ._app import create_app
from ._security import LOOPBACK_HOSTS

__all__ = ["check_bind", "is_loopback", "serve", "server"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> frozenset[str] | None:
    """Refuse a non-loopback bind without a token; return the Host names to accept (None: any).

    A loopback bind accepts only loopback names in ``Host``, which keeps pages of other sites
    from reaching it through DNS rebinding; elsewhere the token guards every request.
    """
    if token is not None and not token.strip():
        raise DashboardError("--token is empty: give a long random value")
    if is_loopback(host):
        return LOOPBACK_HOSTS | {host.strip("[]").lower()}
    if token is None:
        raise DashboardError(
            f"binding to {host} makes the dashboard reachable from other machines: give "
            "--token TOKEN (or PGFLOW_DASHBOARD_TOKEN), which every request must then carry, "
            "or bind to 127.0.0.1"
        )
    return None


def server(
    dsn: str, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None, **config: Any
) -> uvicorn.Server:
    """A uvicorn server for the dashboard (not started), after the bind address is checked."""
    allowed = check_bind(host, token)
    app = create_app(dsn, token=token, allowed_hosts=allowed)
    settings = {"log_level": "warning", "timeout_graceful_shutdown": 2, **config}
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, **settings))


def serve(
    dsn: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard until interrupted; ``announce`` gets its address once it listens
    (with ``port=0``, the port the system chose)."""
    s = server(dsn, host=host, port=port, token=token)
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise DashboardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    if announce is not None:
        shown = f"[{host.strip('[]')}]" if family == socket.AF_INET6 else host
        announce(f"http://{shown}:{sock.getsockname()[1]}/")
    s.run(sockets=[sock])

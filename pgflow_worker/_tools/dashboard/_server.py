"""Running the dashboard: the bind address rules, and uvicorn."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from ...errors import DashboardError
from ._app import create_app
from ._security import LOOPBACK_HOSTS

__all__ = ["check_bind", "is_loopback", "listen", "serve", "server", "serving_in_background"]


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


def listen(host: str, port: int) -> tuple[socket.socket, str]:
    """A listening socket on ``host:port`` and the dashboard's address on it.

    Binding before uvicorn starts gives the caller the port the system chose for ``port=0``
    and a clear error for a port in use, before anything else has started.
    """
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise DashboardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    shown = f"[{host.strip('[]')}]" if family == socket.AF_INET6 else host
    return sock, f"http://{shown}:{sock.getsockname()[1]}/"


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
    sock, url = listen(host, port)
    if announce is not None:
        announce(url)
    s.run(sockets=[sock])


@contextlib.contextmanager
def serving_in_background(dsn: str, *, port: int = 8765) -> Iterator[str]:
    """Serve the dashboard on 127.0.0.1 from a thread of its own while the block runs.

    Yields the dashboard's address, already listening. The server runs its own event loop in
    its thread, apart from the caller's, and leaves signals to the main thread; leaving the
    block stops it, and a server that failed meanwhile raises :class:`DashboardError` there.
    """
    s = server(dsn, port=port)
    sock, url = listen("127.0.0.1", port)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            s.run(sockets=[sock])
        except BaseException as exc:  # SystemExit included: uvicorn exits on a failed startup
            failure.append(exc)

    thread = threading.Thread(target=run, name="pgflow-dashboard", daemon=True)
    thread.start()
    try:
        yield url
    finally:
        s.should_exit = True
        thread.join()
        sock.close()
    if failure or not s.started:
        reason = repr(failure[0]) if failure else "it did not start"
        raise DashboardError(f"the dashboard on {url} stopped: {reason}")

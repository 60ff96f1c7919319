"""``pgflow dashboard``: a small web UI for flows and runs, served from this package alone.

It needs the ``dashboard`` extra (Starlette, uvicorn, Jinja2); :func:`serve` runs it with
uvicorn, :func:`create_app` gives the ASGI application for tests or another server.
"""

from __future__ import annotations

from ._app import create_app
from ._server import check_bind, serve, server, serving_in_background

__all__ = ["check_bind", "create_app", "serve", "server", "serving_in_background"]

"""The dashboard's web application: pages, the live event stream, cancel and retry.

Every page is rendered on the server from Jinja2 templates with autoescaping on, so whatever a
flow put in the database (slugs, outputs, error messages) is shown as text. The only script is
our own ``live.js``, served from the package like the stylesheet; the Content-Security-Policy
allows nothing else. Access control is in :mod:`._security`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

import psycopg
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pgflow_client.dsn import redact

from ._dag import render_dag
from ._live import LiveRuns
from ._queries import MAX_JSON_CHARS, MAX_TASKS_PER_STEP, Database, RunDetail, canonical
from ._security import CSRF_COOKIE, CSRF_FIELD, Guard, same_origin

__all__ = ["RUN_STATUSES", "create_app"]

PACKAGE = "pgflow_worker._tools.dashboard"
#: The statuses ``/runs`` filters on (``cancelled`` is among the failed).
RUN_STATUSES = ("started", "completed", "failed", "cancelled")
PAGE_SIZES = (20, 50, 100, 200)
_MAX_FORM_BYTES = 16_384
_KEEPALIVE_SECONDS = 15.0


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _size(chars: int) -> str:
    return f"{chars:,} characters"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader(PACKAGE, "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["iso"] = _iso
    env.filters["size"] = _size
    env.globals["duration"] = _duration
    env.globals["MAX_JSON_CHARS"] = MAX_JSON_CHARS
    env.globals["MAX_TASKS_PER_STEP"] = MAX_TASKS_PER_STEP
    return env


def _version(html: str) -> str:
    """A short fingerprint of a rendered run body."""
    return hashlib.sha256(html.encode()).hexdigest()[:16]


def _csrf_token(request: Request) -> str:
    """The request's CSRF value: its cookie's, or a new one the response will set."""
    token = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "csrf", None)
    if token is None:
        token = request.state.csrf = secrets.token_urlsafe(24)
    return str(token)


class _Dashboard:
    """The application's state: the database, live notifications, templates."""

    def __init__(self, dsn: str) -> None:
        self.db = Database(dsn)
        self.live = LiveRuns(dsn)
        self.env = _environment()

    # -- rendering ----------------------------------------------------------------------------

    def render(
        self, request: Request, template: str, context: Mapping[str, Any], status: int = 200
    ) -> HTMLResponse:
        token = _csrf_token(request)
        html = self.env.get_template(template).render(
            request=request, csrf=token, csrf_field=CSRF_FIELD, **context
        )
        response = HTMLResponse(html, status_code=status)
        if request.cookies.get(CSRF_COOKIE) != token:
            response.set_cookie(
                CSRF_COOKIE, token, httponly=True, samesite="strict", path="/", max_age=None
            )
        return response

    def problem(self, request: Request, status: int, title: str, message: str) -> HTMLResponse:
        return self.render(
            request, "problem.html", {"status": status, "title": title, "message": message}, status
        )

    def run_body(self, request: Request, run: RunDetail, notice: str | None = None) -> str:
        statuses = {s.shape.slug: s.status for s in run.steps}
        dag = render_dag([s.shape for s in run.steps], statuses, link_prefix="#step-")
        return self.env.get_template("_run_body.html").render(
            request=request,
            run=run,
            dag=dag,
            notice=notice,
            csrf=_csrf_token(request),
            csrf_field=CSRF_FIELD,
            live_problem=self.live.problem,
        )

    # -- pages --------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        flows = await self.db.flows()
        recent = await self.db.list_runs(flow_slug=None, status=None, limit=10, before=None)
        dags = {f.slug: render_dag(f.steps) for f in flows}
        return self.render(request, "index.html", {"flows": flows, "dags": dags, "recent": recent})

    async def runs(self, request: Request) -> Response:
        q = request.query_params
        flow = q.get("flow") or None
        status = q.get("status") or None
        before_text = q.get("before") or None
        limit_text = q.get("limit") or "50"
        if status is not None and status not in RUN_STATUSES:
            return self.problem(
                request,
                400,
                "Unknown status",
                f"The status {status!r} is not one of {', '.join(RUN_STATUSES)}.",
            )
        if not limit_text.isdigit() or int(limit_text) not in PAGE_SIZES:
            return self.problem(
                request,
                400,
                "Unknown page size",
                f"The page size {limit_text!r} is not one of {', '.join(map(str, PAGE_SIZES))}.",
            )
        limit = int(limit_text)
        before = None
        if before_text is not None:
            before = canonical(before_text)
            if before is None:
                return self.problem(
                    request, 400, "Not a run id", f"{before_text!r} is not a run id (a UUID)."
                )
        try:
            rows = await self.db.list_runs(
                flow_slug=flow, status=status, limit=limit + 1, before=before
            )
        except psycopg.errors.NoDataFound:
            return self.problem(
                request,
                400,
                "Unknown run",
                f"The page starts after run {before}, which does not exist.",
            )
        more = len(rows) > limit
        rows = rows[:limit]
        filters = {k: v for k, v in (("flow", flow), ("status", status)) if v}
        if limit != 50:
            filters["limit"] = str(limit)
        older = None
        if more:
            older = "/runs?" + urlencode({**filters, "before": str(rows[-1]["run_id"])})
        newest = "/runs" + ("?" + urlencode(filters) if filters else "")
        return self.render(
            request,
            "runs.html",
            {
                "runs": rows,
                "flows": await self.db.flow_slugs(),
                "statuses": RUN_STATUSES,
                "page_sizes": PAGE_SIZES,
                "flow": flow,
                "status": status,
                "limit": limit,
                "paged": before is not None,
                "older": older,
                "newest": newest,
            },
        )

    async def _run_or_404(self, request: Request) -> RunDetail | Response:
        text = request.path_params["run_id"]
        run_id = canonical(text)
        if run_id is None:
            return self.problem(
                request, 404, "Not a run id", f"{text!r} is not a run id: run ids are UUIDs."
            )
        run = await self.db.run(run_id)
        if run is None:
            return self.problem(request, 404, "No such run", f"There is no run {run_id}.")
        return run

    async def run(self, request: Request) -> Response:
        found = await self._run_or_404(request)
        if not isinstance(found, RunDetail):
            return found
        notice = _NOTICES.get(request.query_params.get("notice") or "")
        body = self.run_body(request, found, notice)
        # The stream's first update is usually this very body: the script skips an update
        # whose version it already shows, so a form being filled in is left alone.
        version = _version(self.run_body(request, found)) if notice else _version(body)
        return self.render(
            request, "run.html", {"run": found, "body": Markup(body), "version": version}
        )

    async def events(self, request: Request) -> Response:
        run_id = canonical(request.path_params["run_id"])
        if run_id is None or not await self.db.run_exists(run_id):
            return Response("no such run", status_code=404, media_type="text/plain")
        return StreamingResponse(
            self._stream(request, run_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, request: Request, run_id: str) -> AsyncIterator[str]:
        async with self.live.watch(run_id) as watch:
            while True:
                watch.changed.clear()
                run = await self.db.run(run_id)
                if run is None:
                    yield "event: end\ndata: {}\n\n"
                    return
                html = self.run_body(request, run)
                data = {"status": run.shown_status, "html": html, "version": _version(html)}
                yield f"event: update\ndata: {json.dumps(data)}\n\n"
                if run.status != "started" or not self.live.available:
                    yield "event: end\ndata: {}\n\n"
                    return
                while not watch.changed.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_KEEPALIVE_SECONDS):
                            await watch.changed.wait()
                    if not watch.changed.is_set():
                        yield ": keepalive\n\n"

    # -- operations ---------------------------------------------------------------------------

    async def _form(self, request: Request) -> dict[str, str] | Response:
        """The POSTed form, once the request is known to come from our own page."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                return self.problem(request, 413, "Form too large", "The form sent is too large.")
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        cookie = request.cookies.get(CSRF_COOKIE, "")
        sent = form.get(CSRF_FIELD, "")
        if (
            not same_origin(request)
            or not cookie
            or not secrets.compare_digest(cookie.encode(), sent.encode())
        ):
            return self.problem(
                request,
                403,
                "Cross-site request refused",
                "This request did not come from a page of this dashboard, so it was refused. "
                "Reload the page and try again.",
            )
        return form

    async def cancel(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        found = await self._run_or_404(request)
        if not isinstance(found, RunDetail):
            return found
        reason = (form.get("reason") or "").strip() or None
        try:
            await self.db.cancel_run(found.run_id, reason)
        except psycopg.Error as exc:
            return self._refused(request, found, "cancel", exc)
        return RedirectResponse(f"/runs/{found.run_id}?notice=cancelled", status_code=303)

    async def retry(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        found = await self._run_or_404(request)
        if not isinstance(found, RunDetail):
            return found
        try:
            new_run = await self.db.retry_run(found.run_id)
        except psycopg.Error as exc:
            return self._refused(request, found, "retry", exc)
        return RedirectResponse(f"/runs/{new_run}?notice=retried", status_code=303)

    def _refused(self, request: Request, run: RunDetail, what: str, exc: psycopg.Error) -> Response:
        if exc.sqlstate in ("55000", "P0002"):
            message = exc.diag.message_primary or str(exc)
            return self.problem(request, 409, f"Cannot {what} this run", message)
        raise exc

    async def database_error(self, request: Request, exc: Exception) -> Response:
        """A query the database refused (a missing grant, say) or a lost connection."""
        message = redact(str(exc)).strip() or type(exc).__name__
        return self.problem(request, 500, "The database query failed", message)

    async def not_found(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code != 404:
            return self.problem(request, exc.status_code, "Error", str(exc.detail))
        return self.problem(
            request, 404, "Page not found", f"There is no page at {request.url.path}."
        )


_NOTICES = {
    "cancelled": "The run was cancelled.",
    "retried": "This run was started as a retry.",
}


def create_app(
    dsn: str, *, token: str | None = None, allowed_hosts: frozenset[str] | None = None
) -> Starlette:
    """The dashboard for the database at ``dsn``.

    With ``token``, every request must carry it (a header, or a cookie set by visiting any page
    with ``?token=``). With ``allowed_hosts``, requests naming another host in their ``Host``
    header are refused (against DNS rebinding when bound to a loopback address).
    """
    dash = _Dashboard(dsn)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await dash.db.open()
        try:
            await dash.live.open()
            try:
                yield
            finally:
                await dash.live.close()
        finally:
            await dash.db.close()

    return Starlette(
        routes=[
            Route("/", dash.index),
            Route("/runs", dash.runs),
            Route("/runs/{run_id}", dash.run),
            Route("/runs/{run_id}/events", dash.events),
            Route("/runs/{run_id}/cancel", dash.cancel, methods=["POST"]),
            Route("/runs/{run_id}/retry", dash.retry, methods=["POST"]),
            Mount("/static", StaticFiles(packages=[(PACKAGE, "static")]), name="static"),
        ],
        exception_handlers={
            404: dash.not_found,
            405: dash.not_found,
            psycopg.Error: dash.database_error,
        },
        middleware=[Middleware(Guard, token=token, allowed_hosts=allowed_hosts)],
        lifespan=lifespan,
    )

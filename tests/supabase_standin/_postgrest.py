"""A PostgREST subset over aiohttp: ``/rpc/<fn>`` calls and plain table reads.

Each request runs in one short transaction on a pooled connection, with PostgREST's
transaction settings (``search_path``, ``request.jwt.claims``, ``request.method`` ...), read-only
for GET, and optionally under the JWT's ``role``. Answers and errors have PostgREST's shapes and
statuses, which is all postgrest-py looks at.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from aiohttp import web
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from ._errors import RestError, from_database_error
from ._jwt import jwt_claims
from ._reads import RESERVED, ReadPlan, plan_read
from ._routines import Call, Routine, build_call, choose_routine, find_routines

_JSON = "application/json; charset=utf-8"
_OBJECT = "application/vnd.pgrst.object+json; charset=utf-8"

_RELATION_EXISTS = """
select exists (
  select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace
  where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'v', 'm', 'f', 'p')
)
"""


@dataclass(frozen=True)
class _Request:
    """What every endpoint needs to know about the HTTP request."""

    schema: str
    singular: bool
    strip_nulls: bool
    count: bool
    claims: dict[str, Any]
    role: str | None
    authenticated: bool
    read_only: bool


@dataclass(frozen=True)
class _Result:
    """JSON texts of the rows (or values) a query produced, in order."""

    rows: list[str]
    total: int | None = None


class PostgrestEndpoints:
    """The ``/rest/v1`` routes, served from a connection pool on the test database."""

    def __init__(
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        *,
        use_jwt_role: bool,
        schemas: Sequence[str] | None,
        anon_role: str,
    ) -> None:
        self._pool = pool
        self._use_jwt_role = use_jwt_role
        self._schemas = list(schemas) if schemas is not None else None
        self._anon_role = anon_role

    def routes(self, prefix: str = "/rest/v1") -> list[web.AbstractRouteDef]:
        return [
            web.post(f"{prefix}/rpc/{{fn}}", self._rpc),
            web.get(f"{prefix}/rpc/{{fn}}", self._rpc),
            web.route("*", f"{prefix}/rpc/{{fn}}", self._unsupported_rpc_method),
            web.get(f"{prefix}/{{table}}", self._read),
            web.route("*", f"{prefix}/{{table}}", self._unsupported_table_method),
        ]

    # -- endpoints ------------------------------------------------------------------------------

    async def _rpc(self, request: web.Request) -> web.StreamResponse:
        try:
            ctx = self._context(request)
            name = request.match_info["fn"]
            query = list(request.query.items())
            posted = await _json_body(request) if request.method == "POST" else None
            async with self._transaction(request, ctx) as conn:
                routines = await find_routines(conn, ctx.schema, name)
                if posted is not None:
                    arguments, filters = posted, query
                else:
                    known = {n for r in routines for n in r.names if n}
                    arguments = {k: v for k, v in query if k in known and k not in RESERVED}
                    filters = [(k, v) for k, v in query if k not in arguments]
                routine = choose_routine(routines, ctx.schema, name, set(arguments))
                call = build_call(routine, set(arguments), json.dumps(arguments))
                if routine.kind == "void":
                    await conn.execute(
                        sql.SQL("SELECT {}{}").format(call.expression, call.scalar_from_clause()),
                        call.params,
                    )
                    return web.Response(status=204)
                if routine.kind == "scalar":
                    result = await _scalar_rows(conn, call)
                else:
                    result = await _composite_rows(conn, call, plan_read(filters, "_r"), ctx)
            return _respond(ctx, result, plural=routine.returns_set, routine=routine)
        except RestError as exc:
            return _error_response(exc)

    async def _read(self, request: web.Request) -> web.StreamResponse:
        try:
            ctx = self._context(request)
            table = request.match_info["table"]
            plan = plan_read(request.query.items(), "_r")
            async with self._transaction(request, ctx) as conn:
                cur = await conn.execute(_RELATION_EXISTS, (ctx.schema, table))
                row = await cur.fetchone()
                if not row or not row[0]:
                    raise RestError(
                        404,
                        "PGRST205",
                        f"Could not find the table '{ctx.schema}.{table}' in the schema cache",
                    )
                source = sql.SQL(" FROM {} AS _r").format(sql.Identifier(ctx.schema, table))
                result = await _select_rows(conn, source, [], plan, ctx)
            return _respond(ctx, result, plural=True, routine=None)
        except RestError as exc:
            return _error_response(exc)

    async def _unsupported_rpc_method(self, request: web.Request) -> web.StreamResponse:
        return _error_response(
            RestError(405, "PGRST101", f"Cannot use the {request.method} method on RPC")
        )

    async def _unsupported_table_method(self, request: web.Request) -> web.StreamResponse:
        return _error_response(
            RestError(
                405,
                "PGRST117",
                f"Unsupported HTTP method: {request.method}",
                details="the Supabase stand-in serves table reads only",
            )
        )

    # -- request context ------------------------------------------------------------------------

    def _context(self, request: web.Request) -> _Request:
        read_only = request.method in ("GET", "HEAD")
        header = "Accept-Profile" if read_only else "Content-Profile"
        schema = request.headers.get(header) or "public"
        if self._schemas is not None and schema not in self._schemas:
            raise RestError(
                406,
                "PGRST106",
                f"Invalid schema: {schema}",
                hint="Only the following schemas are exposed: " + ", ".join(self._schemas),
            )
        singular, strip_nulls = _negotiate(request.headers.get("Accept"))
        prefer = request.headers.get("Prefer", "")
        count = any(p.strip().startswith("count=") for p in prefer.split(","))
        claims: dict[str, Any] = {}
        authorization = request.headers.get("Authorization", "")
        if authorization.lower().startswith("bearer "):
            claims = jwt_claims(authorization[7:].strip()) or {}
        claimed_role = claims.get("role") if isinstance(claims.get("role"), str) else None
        return _Request(
            schema=schema,
            singular=singular,
            strip_nulls=strip_nulls,
            count=count,
            claims=claims,
            role=claimed_role if self._use_jwt_role else None,
            authenticated=claimed_role is not None and claimed_role != self._anon_role,
            read_only=read_only,
        )

    def _transaction(
        self, request: web.Request, ctx: _Request
    ) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        return _transaction(self._pool, request, ctx)


@asynccontextmanager
async def _transaction(
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]], request: web.Request, ctx: _Request
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """One pooled connection inside one transaction, with PostgREST's per-request settings.

    The connection is in pipeline mode: the transaction's opening statements travel with the
    block's first query instead of one round trip each, as PostgREST, whose schema cache and
    prepared statements spare it most of them, has no such round trips to make either.
    Database errors leaving the block (commit included) become RestError in PostgREST's shape.
    """
    try:
        async with pool.connection() as conn, conn.pipeline(), conn.transaction():
            if ctx.read_only:
                await conn.execute("SET TRANSACTION READ ONLY")
            if ctx.role is not None:
                await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(ctx.role)))
            search_path = sql.SQL(", ").join(
                sql.Identifier(s) for s in dict.fromkeys([ctx.schema, "public"])
            )
            headers = {k.lower(): v for k, v in request.headers.items()}
            await conn.execute(
                "select set_config('search_path', %s, true),"
                " set_config('request.jwt.claims', %s, true),"
                " set_config('request.method', %s, true),"
                " set_config('request.path', %s, true),"
                " set_config('request.headers', %s, true)",
                (
                    search_path.as_string(conn),
                    json.dumps(ctx.claims),
                    request.method,
                    request.path,
                    json.dumps(headers),
                ),
            )
            yield conn
    except psycopg.Error as exc:
        raise from_database_error(exc, authenticated=ctx.authenticated) from exc


# -- queries ------------------------------------------------------------------------------------


async def _scalar_rows(conn: psycopg.AsyncConnection[Any], call: Call) -> _Result:
    query = sql.SQL("SELECT to_json({})::text{}").format(call.expression, call.scalar_from_clause())
    cur = await conn.execute(query, call.params)
    return _Result([row[0] if row[0] is not None else "null" for row in await cur.fetchall()])


async def _composite_rows(
    conn: psycopg.AsyncConnection[Any], call: Call, plan: ReadPlan, ctx: _Request
) -> _Result:
    return await _select_rows(conn, call.from_clause("_r"), call.params, plan, ctx)


async def _select_rows(
    conn: psycopg.AsyncConnection[Any],
    source: sql.Composable,
    source_params: list[str],
    plan: ReadPlan,
    ctx: _Request,
) -> _Result:
    to_json = sql.SQL("json_strip_nulls(to_json(_q))" if ctx.strip_nulls else "to_json(_q)")
    inner = sql.SQL("SELECT {}{}{}{}").format(plan.columns, source, plan.where(), plan.tail())
    query = sql.SQL("SELECT {}::text FROM ({}) AS _q").format(to_json, inner)
    cur = await conn.execute(query, [*source_params, *plan.params])
    rows = [row[0] for row in await cur.fetchall()]
    total = None
    if ctx.count:
        counted = sql.SQL("SELECT count(*) FROM (SELECT 1{}{}) AS _c").format(source, plan.where())
        cur = await conn.execute(counted, [*source_params, *plan.params])
        found = await cur.fetchone()
        total = int(found[0]) if found else 0
    return _Result(rows, total)


# -- responses ----------------------------------------------------------------------------------


def _respond(
    ctx: _Request, result: _Result, *, plural: bool, routine: Routine | None
) -> web.Response:
    rows = result.rows
    if ctx.singular:
        if len(rows) != 1:
            return _error_response(
                RestError(
                    406,
                    "PGRST116",
                    "Cannot coerce the result to a single JSON object",
                    details=f"The result contains {len(rows)} rows",
                )
            )
        return web.Response(text=rows[0], content_type=None, headers={"Content-Type": _OBJECT})
    if plural:
        body = "[" + ",".join(rows) + "]"
    elif rows:
        body = rows[0]
    else:
        body = "null"
    headers = {"Content-Type": _JSON}
    if routine is None or routine.returns_set:
        end = f"0-{len(rows) - 1}" if rows else "*"
        total = "*" if result.total is None else str(result.total)
        headers["Content-Range"] = f"{end}/{total}"
    return web.Response(text=body, content_type=None, headers=headers)


def _error_response(exc: RestError) -> web.Response:
    headers = {"Content-Type": _JSON, "Proxy-Status": f"PostgREST; error={exc.code}"}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    headers.update(exc.headers)
    return web.Response(
        status=exc.status, text=json.dumps(exc.body()), content_type=None, headers=headers
    )


def _negotiate(accept: str | None) -> tuple[bool, bool]:
    """(singular, strip nulls) from the Accept header; 406 PGRST107 when nothing fits."""
    if not accept:
        return False, False
    offered = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        offered.append(media)
        strip = "nulls=stripped" in params
        if media in ("*/*", "application/*", "application/json"):
            return False, False
        if media == "application/vnd.pgrst.array+json":
            return False, strip
        if media == "application/vnd.pgrst.object+json":
            return True, strip
    raise RestError(
        406, "PGRST107", "None of these media types are available: " + ", ".join(offered)
    )


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise RestError(400, "PGRST102", "Empty or invalid json") from None
    if not isinstance(body, dict):
        raise RestError(
            400,
            "PGRST102",
            "Empty or invalid json",
            details="the Supabase stand-in accepts a JSON object of named arguments",
        )
    return body

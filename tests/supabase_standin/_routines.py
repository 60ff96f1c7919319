"""Finding the function an RPC names, and the SQL that calls it the way PostgREST does.

PostgREST resolves ``/rpc/<fn>`` by schema, name and the argument names in the body, then calls
the function with named arguments read from the JSON body through ``jsonb_to_record`` (so JSON
values are converted to the declared parameter types by PostgreSQL itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from ._errors import RestError

ReturnKind = Literal["void", "scalar", "composite"]

_LOOKUP = """
select
  coalesce(p.proargnames, array[]::text[]) as names,
  coalesce(p.proargmodes::text[], array[]::text[]) as modes,
  array(
    select format_type(t.oid, null)
    from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) with ordinality as a(oid, i)
    join pg_type t on t.oid = a.oid
    order by a.i
  ) as types,
  p.pronargdefaults,
  p.proretset,
  case
    when p.prorettype = 'void'::regtype then 'void'
    when p.prorettype = 'record'::regtype or rt.typtype = 'c' then 'composite'
    when rt.typtype = 'd' and bt.typtype = 'c' then 'composite'
    else 'scalar'
  end as kind
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_type rt on rt.oid = p.prorettype
left join pg_type bt on bt.oid = rt.typbasetype
where n.nspname = %s and p.proname = %s and p.prokind = 'f'
order by p.oid
"""


@dataclass(frozen=True)
class Param:
    """One input parameter: its name ('' when unnamed), SQL type text and whether it is variadic."""

    name: str
    type_sql: str
    variadic: bool
    has_default: bool


@dataclass(frozen=True)
class Routine:
    """A function as PostgREST sees it: schema, name, input parameters and return shape."""

    schema: str
    name: str
    params: tuple[Param, ...]
    returns_set: bool
    kind: ReturnKind

    @property
    def required(self) -> set[str]:
        return {p.name for p in self.params if not p.has_default}

    @property
    def names(self) -> set[str]:
        return {p.name for p in self.params}

    def accepts(self, keys: set[str]) -> bool:
        """Whether a body with exactly these keys can call this overload by name."""
        return keys <= self.names and self.required <= keys and "" not in self.required

    def takes_whole_body(self) -> bool:
        """A single unnamed json/jsonb parameter receives the whole body."""
        return (
            len(self.params) == 1
            and self.params[0].name == ""
            and self.params[0].type_sql in ("json", "jsonb")
        )

    def describe(self) -> str:
        inner = ", ".join(f"{p.name} => {p.type_sql}" for p in self.params)
        return f"{self.schema}.{self.name}({inner})"


async def find_routines(
    conn: psycopg.AsyncConnection[Any], schema: str, name: str
) -> list[Routine]:
    """Every plain function ``schema.name`` (procedures and aggregates are not callable)."""
    cur = await conn.execute(_LOOKUP, (schema, name))
    routines = []
    for names, modes, types, n_defaults, returns_set, kind in await cur.fetchall():
        modes = list(modes) or ["i"] * len(types)
        inputs = [
            (names[i] if i < len(names) else "", types[i], modes[i] == "v")
            for i in range(len(types))
            if modes[i] in ("i", "b", "v")
        ]
        first_default = len(inputs) - n_defaults
        params = tuple(
            Param(name=n, type_sql=t, variadic=v, has_default=i >= first_default)
            for i, (n, t, v) in enumerate(inputs)
        )
        routines.append(Routine(schema, name, params, returns_set, kind))
    return routines


def choose_routine(routines: Sequence[Routine], schema: str, name: str, keys: set[str]) -> Routine:
    """Pick the overload a body with ``keys`` calls, or answer PGRST202/PGRST203 as PostgREST."""
    candidates = [r for r in routines if r.accepts(keys)]
    if len(candidates) > 1:
        exact = [r for r in candidates if r.names == keys]
        candidates = exact if len(exact) == 1 else candidates
    if not candidates:
        candidates = [r for r in routines if r.takes_whole_body()]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise RestError(
            300,
            "PGRST203",
            "Could not choose the best candidate function between: "
            + ", ".join(r.describe() for r in candidates),
            hint="Try renaming the parameters or the function itself in the database so "
            "function overloading can be resolved",
        )
    ordered = sorted(keys)
    listed = f"({', '.join(ordered)})" if ordered else " without parameters"
    with_params = (
        f" with parameter{'s' if len(ordered) > 1 else ''} {', '.join(ordered)}"
        if ordered
        else " without parameters"
    )
    raise RestError(
        404,
        "PGRST202",
        f"Could not find the function {schema}.{name}{listed} in the schema cache",
        details=f"Searched for the function {schema}.{name}{with_params} or with a single "
        "unnamed json/jsonb parameter, but no matches were found in the schema cache.",
    )


@dataclass(frozen=True)
class Call:
    """The call expression, the FROM item providing its arguments (``_args``), and parameters."""

    expression: sql.Composable
    arguments_source: sql.Composable | None
    params: list[str]

    def from_clause(self, alias: str) -> sql.Composable:
        """A FROM clause exposing the function's rows as ``alias`` (for composite results)."""
        item = sql.SQL("{} AS {}").format(self.expression, sql.Identifier(alias))
        if self.arguments_source is None:
            return sql.SQL(" FROM {}").format(item)
        return sql.SQL(" FROM {} CROSS JOIN LATERAL {}").format(self.arguments_source, item)

    def scalar_from_clause(self) -> sql.Composable:
        if self.arguments_source is None:
            return sql.SQL("")
        return sql.SQL(" FROM {}").format(self.arguments_source)


def build_call(routine: Routine, keys: set[str], body_json: str) -> Call:
    """How to call the routine with the body's named arguments.

    Type names come from ``format_type`` in the catalog (already quoted by PostgreSQL), never from
    the request.
    """
    function = sql.Identifier(routine.schema, routine.name)
    if routine.takes_whole_body() and not routine.accepts(keys):
        expression = sql.SQL("{}(%s::{})").format(function, sql.SQL(routine.params[0].type_sql))
        return Call(expression, None, [body_json])
    used = [p for p in routine.params if p.name in keys]
    if not used:
        return Call(sql.SQL("{}()").format(function), None, [])
    arguments = sql.SQL(", ").join(
        sql.SQL("{}{} => {}").format(
            sql.SQL("VARIADIC ") if p.variadic else sql.SQL(""),
            sql.Identifier(p.name),
            sql.Identifier("_args", p.name),
        )
        for p in used
    )
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(p.name), sql.SQL(p.type_sql)) for p in used
    )
    return Call(
        sql.SQL("{}({})").format(function, arguments),
        sql.SQL("jsonb_to_record(%s::jsonb) AS _args({})").format(columns),
        [body_json],
    )

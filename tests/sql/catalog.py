"""What a database's ``pgflow`` schema is made of, read from the catalogs, for comparing two builds.

Everything is keyed by name, never by OID, so two databases built in different ways compare
equal exactly when their schemas are the same: functions (full definition, owner-independent
ACL, comment), tables and composite types (columns in order, with types, defaults, nullability,
ACLs), constraints, indexes, views, triggers, sequences, policies, schema privileges and default
privileges.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import psycopg

from pgflow_worker._database import ensure_pgmq, list_schema_files, realtime_compat_sql
from pgflow_worker._database.migrate import ensure_tracking_table

__all__ = ["Catalog", "build_from_schema", "catalog_diff", "read_catalog"]

#: Each query yields rows of text; its name is the kind of object they describe.
_QUERIES: dict[str, str] = {
    "schema": """
        select n.nspname, coalesce(n.nspacl::text, ''), coalesce(d.description, '')
          from pg_namespace as n
          left join pg_description as d
            on d.objoid = n.oid and d.classoid = 'pg_namespace'::regclass
         where n.nspname = %(schema)s
    """,
    "default privileges": """
        select a.defaclobjtype::text, coalesce(a.defaclacl::text, '')
          from pg_default_acl as a
          join pg_namespace as n on n.oid = a.defaclnamespace
         where n.nspname = %(schema)s
         order by 1, 2
    """,
    "functions": """
        select p.oid::regprocedure::text,
               pg_get_functiondef(p.oid),
               coalesce(p.proacl::text, ''),
               coalesce(obj_description(p.oid, 'pg_proc'), '')
          from pg_proc as p
          join pg_namespace as n on n.oid = p.pronamespace
         where n.nspname = %(schema)s
         order by 1
    """,
    "relations": """
        select c.relname, c.relkind::text, c.relpersistence::text,
               coalesce(c.relacl::text, ''), coalesce(c.reloptions::text, ''),
               c.relrowsecurity::text, c.relforcerowsecurity::text,
               coalesce(obj_description(c.oid, 'pg_class'), '')
          from pg_class as c
          join pg_namespace as n on n.oid = c.relnamespace
         where n.nspname = %(schema)s and c.relkind in ('r', 'p', 'v', 'm', 'c', 'S', 'f')
         order by 1
    """,
    "columns": """
        select c.relname,
               row_number() over (partition by c.oid order by a.attnum)::text,
               a.attname,
               format_type(a.atttypid, a.atttypmod),
               a.attnotnull::text,
               coalesce(pg_get_expr(ad.adbin, ad.adrelid), ''),
               a.attidentity::text, a.attgenerated::text,
               coalesce(co.collname, ''),
               coalesce(a.attacl::text, ''),
               coalesce(col_description(c.oid, a.attnum), '')
          from pg_attribute as a
          join pg_class as c on c.oid = a.attrelid
          join pg_namespace as n on n.oid = c.relnamespace
          left join pg_attrdef as ad on ad.adrelid = a.attrelid and ad.adnum = a.attnum
          left join pg_collation as co
            on co.oid = a.attcollation and a.attcollation <> 0
           and co.collname <> 'default'
         where n.nspname = %(schema)s
           and c.relkind in ('r', 'p', 'v', 'm', 'c', 'f')
           and a.attnum > 0 and not a.attisdropped
         order by 1, 2
    """,
    "constraints": """
        select coalesce(c.relname, t.typname), k.conname, pg_get_constraintdef(k.oid),
               k.condeferrable::text, k.condeferred::text, k.convalidated::text,
               coalesce(obj_description(k.oid, 'pg_constraint'), '')
          from pg_constraint as k
          join pg_namespace as n on n.oid = k.connamespace
          left join pg_class as c on c.oid = k.conrelid
          left join pg_type as t on t.oid = k.contypid
         where n.nspname = %(schema)s
         order by 1, 2
    """,
    "indexes": """
        select i.tablename, i.indexname, i.indexdef,
               coalesce(obj_description(format('%%I.%%I', i.schemaname, i.indexname)::regclass,
                                        'pg_class'), '')
          from pg_indexes as i
         where i.schemaname = %(schema)s
         order by 1, 2
    """,
    "views": """
        select c.relname, pg_get_viewdef(c.oid)
          from pg_class as c
          join pg_namespace as n on n.oid = c.relnamespace
         where n.nspname = %(schema)s and c.relkind in ('v', 'm')
         order by 1
    """,
    "triggers": """
        select c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text,
               coalesce(obj_description(t.oid, 'pg_trigger'), '')
          from pg_trigger as t
          join pg_class as c on c.oid = t.tgrelid
          join pg_namespace as n on n.oid = c.relnamespace
         where n.nspname = %(schema)s and not t.tgisinternal
         order by 1, 2
    """,
    "policies": """
        select p.tablename, p.policyname, p.permissive, p.roles::text, p.cmd,
               coalesce(p.qual, ''), coalesce(p.with_check, '')
          from pg_policies as p
         where p.schemaname = %(schema)s
         order by 1, 2
    """,
    "types": """
        select t.typname, t.typtype::text, coalesce(t.typacl::text, ''),
               coalesce(format_type(t.typbasetype, t.typtypmod), ''),
               coalesce((select string_agg(e.enumlabel, ',' order by e.enumsortorder)
                           from pg_enum as e where e.enumtypid = t.oid), ''),
               coalesce(obj_description(t.oid, 'pg_type'), '')
          from pg_type as t
          join pg_namespace as n on n.oid = t.typnamespace
         where n.nspname = %(schema)s
           and t.typtype in ('c', 'd', 'e', 'r', 'm')
           and (t.typrelid = 0
                or (select c.relkind from pg_class as c where c.oid = t.typrelid) = 'c')
         order by 1
    """,
}

#: How many leading columns of each query name the object (the rest describe it).
_KEY_COLUMNS = {"columns": 3, "constraints": 2, "indexes": 2, "triggers": 2, "policies": 2}

#: For each kind of object, each object's name and its description as text.
Catalog = dict[str, dict[str, str]]


def read_catalog(conn: psycopg.Connection[Any], schema: str = "pgflow") -> Catalog:
    """The objects of ``schema`` by kind, each as its name and a text describing it."""
    catalog: Catalog = {}
    for kind, query in _QUERIES.items():
        width = _KEY_COLUMNS.get(kind, 1)
        objects: dict[str, str] = {}
        for row in conn.execute(query.encode(), {"schema": schema}):
            values = [str(v) for v in row]
            name = " ".join(values[:width])
            if kind == "columns":
                name = f"{values[0]}.{values[2]} (column {values[1]})"
            objects[name] = "\n".join(values[width:])
        catalog[kind] = objects
    return catalog


def catalog_diff(expected: Catalog, actual: Catalog) -> str:
    """What differs between two catalogs, object by object; empty when they are the same."""
    parts: list[str] = []
    for kind in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(kind, {}), actual.get(kind, {})
        for name in sorted(want.keys() | got.keys()):
            if name not in got:
                parts.append(f"{kind}: {name} is missing")
            elif name not in want:
                parts.append(f"{kind}: {name} is extra")
            elif want[name] != got[name]:
                lines = difflib.unified_diff(
                    want[name].splitlines(),
                    got[name].splitlines(),
                    fromfile="expected",
                    tofile="actual",
                    lineterm="",
                )
                parts.append(f"{kind}: {name} differs\n" + "\n".join(lines))
    return "\n\n".join(parts)


def build_from_schema(url: str, root: Path | None = None) -> None:
    """Build pgflow in an empty database from the schema files, with what migrate() adds: pgmq,
    the realtime stand-in and the (empty) table recording applied migrations."""
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_pgmq(conn)
        conn.execute(realtime_compat_sql(root).encode())
        ensure_tracking_table(conn)
        with conn.transaction():
            for path in list_schema_files(root):
                conn.execute(path.read_bytes())

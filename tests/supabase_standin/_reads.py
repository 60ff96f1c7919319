"""PostgREST's read query string (``select``, filters, ``order``, ``limit``, ``offset``) as SQL.

Columns become quoted identifiers qualified by the relation's alias and every value is a query
parameter, so nothing from the request is spliced into SQL text. Only the forms supabase-py's
builders produce for plain columns are understood; embedding, JSON paths, casts and ``or``/``and``
trees answer PGRST100 instead of guessing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from psycopg import sql

from ._errors import RestError, query_param_error

RESERVED = frozenset({"select", "order", "limit", "offset", "columns", "on_conflict"})

_COMPARISONS = {
    "eq": "=",
    "neq": "<>",
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
    "like": "LIKE",
    "ilike": "ILIKE",
    "match": "~",
    "imatch": "~*",
    "cs": "@>",
    "cd": "<@",
    "ov": "&&",
    "isdistinct": "IS DISTINCT FROM",
}
_IS_VALUES = {"null": "NULL", "true": "TRUE", "false": "FALSE", "unknown": "UNKNOWN"}


@dataclass
class ReadPlan:
    """The pieces of one read: select list, conditions with their parameters, and ordering."""

    columns: sql.Composable
    conditions: list[sql.Composable] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    order: list[sql.Composable] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None

    def where(self) -> sql.Composable:
        if not self.conditions:
            return sql.SQL("")
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(self.conditions)

    def tail(self) -> sql.Composable:
        """ORDER BY, LIMIT and OFFSET (limit and offset are validated integers)."""
        parts: list[sql.Composable] = []
        if self.order:
            parts.append(sql.SQL(" ORDER BY ") + sql.SQL(", ").join(self.order))
        if self.limit is not None:
            parts.append(sql.SQL(" LIMIT {}").format(sql.Literal(self.limit)))
        if self.offset is not None:
            parts.append(sql.SQL(" OFFSET {}").format(sql.Literal(self.offset)))
        return sql.Composed(parts)


def plan_read(query: Iterable[tuple[str, str]], alias: str) -> ReadPlan:
    """Parse a read query string; column references are qualified by ``alias``."""
    items = list(query)
    select = next((v for k, v in items if k == "select"), "*")
    plan = ReadPlan(columns=_select_list(select, alias))
    for key, value in items:
        if key == "order":
            plan.order.extend(_order_terms(value, alias))
        elif key in ("limit", "offset"):
            setattr(plan, key, _non_negative(key, value))
        elif key in RESERVED:
            continue
        else:
            condition, params = _filter(key, value, alias)
            plan.conditions.append(condition)
            plan.params.extend(params)
    return plan


def _split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split on ``separator`` outside double quotes and parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == separator:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return name


def _column_name(raw: str, context: str) -> str:
    name = _unquote(raw)
    if not raw.strip().startswith('"') and any(token in name for token in ("->", "::", "(")):
        raise query_param_error(
            f"Unsupported {context} '{raw}'",
            "the Supabase stand-in understands plain column names only "
            "(no JSON paths, casts or embedded resources)",
        )
    if not name:
        raise query_param_error(f"Empty column name in {context}")
    return name


def _select_list(select: str, alias: str) -> sql.Composable:
    entries: list[sql.Composable] = []
    for item in _split_top_level(select):
        item = item.strip()
        if item in ("", "*"):
            entries.append(sql.SQL("{}.*").format(sql.Identifier(alias)))
            continue
        label, sep, column = item.partition(":")
        if sep and not column.startswith(":") and not label.startswith('"'):
            name = _column_name(column, "select")
            entries.append(
                sql.SQL("{} AS {}").format(
                    sql.Identifier(alias, name), sql.Identifier(_unquote(label))
                )
            )
        else:
            name = _column_name(item, "select")
            entries.append(
                sql.SQL("{} AS {}").format(sql.Identifier(alias, name), sql.Identifier(name))
            )
    return sql.SQL(", ").join(entries)


def _order_terms(value: str, alias: str) -> list[sql.Composable]:
    terms: list[sql.Composable] = []
    for term in _split_top_level(value):
        term = term.strip()
        if not term:
            continue
        if term.startswith('"'):
            end = term.index('"', 1)
            column, modifiers = term[: end + 1], term[end + 1 :].lstrip(".").split(".")
        else:
            column, *modifiers = term.split(".")
        parts: list[sql.Composable] = [sql.Identifier(alias, _column_name(column, "order"))]
        for modifier in filter(None, modifiers):
            keyword = {
                "asc": "ASC",
                "desc": "DESC",
                "nullsfirst": "NULLS FIRST",
                "nullslast": "NULLS LAST",
            }.get(modifier)
            if keyword is None:
                raise query_param_error(
                    f"failed to parse order ({value})", f"unexpected modifier '{modifier}'"
                )
            parts.append(sql.SQL(keyword))
        terms.append(sql.SQL(" ").join(parts))
    return terms


def _non_negative(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise query_param_error(f"failed to parse {key} ({value})") from None
    if number < 0:
        raise RestError(416, "PGRST103", "Requested range not satisfiable")
    return number


def _filter(key: str, value: str, alias: str) -> tuple[sql.Composable, list[str]]:
    if key in ("or", "and", "not.or", "not.and"):
        raise query_param_error(
            f"failed to parse logic tree ({value})",
            "the Supabase stand-in does not support or/and filters",
        )
    column = sql.Identifier(alias, _column_name(key, "filter"))
    operator, _, operand = value.partition(".")
    negate = operator == "not"
    if negate:
        operator, _, operand = operand.partition(".")
    condition, params = _condition(column, operator, operand, f"{key}={value}")
    if negate:
        condition = sql.SQL("NOT ({})").format(condition)
    return condition, params


def _condition(
    column: sql.Identifier, operator: str, operand: str, source: str
) -> tuple[sql.Composable, list[str]]:
    if operator in _COMPARISONS:
        if operator in ("like", "ilike"):
            operand = operand.replace("*", "%")
        return sql.SQL("{} {} %s").format(column, sql.SQL(_COMPARISONS[operator])), [operand]
    if operator == "is":
        keyword = _IS_VALUES.get(operand.lower())
        if keyword is None:
            raise query_param_error(f"failed to parse filter ({source})")
        return sql.SQL("{} IS {}").format(column, sql.SQL(keyword)), []
    if operator == "in":
        values = _in_list(operand, source)
        if not values:
            return sql.SQL("FALSE"), []
        placeholders = sql.SQL(", ").join(sql.Placeholder() for _ in values)
        return sql.SQL("{} IN ({})").format(column, placeholders), values
    raise query_param_error(
        f"failed to parse filter ({source})",
        f"the Supabase stand-in does not support the '{operator}' operator",
    )


def _in_list(operand: str, source: str) -> list[str]:
    if not (operand.startswith("(") and operand.endswith(")")):
        raise query_param_error(f"failed to parse filter ({source})")
    inner = operand[1:-1]
    if not inner:
        return []
    return [_unquote(item) for item in _split_top_level(inner)]

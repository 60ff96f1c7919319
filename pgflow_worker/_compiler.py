"""Compile a :class:`Flow` into the SQL that registers it, statement for statement as pgflow does.

The output matches pgflow's ``compileFlow``: one ``pgflow.create_flow`` call, then one
``pgflow.add_step`` call per step in declaration order, with options passed by name and only
when set. Condition patterns are written as ``JSON.stringify`` writes them. Migrations written
from it are interchangeable with those of pgflow's CLI.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from pydantic import JsonValue

from ._flow import Flow, FlowOptions, StepDefinition

__all__ = ["compile_flow", "migration_filename", "render_migration"]

_Argument = tuple[str, Callable[[StepDefinition], str | None]]


def compile_flow(flow: Flow) -> list[str]:
    """The SQL statements that create ``flow`` and its steps, in the order to run them.

    A flow with per-step queues cannot be built step by step (``add_step`` refuses it, as in
    pgflow 0.17): it compiles to the one call pgflow's 0.17 workers make at startup,
    ``ensure_flow_compiled(slug, shape, 'step', route_map)``.
    """
    flow_slug = _text(flow.slug)
    if flow.step_queues:
        from ._shape import flow_shape  # _shape builds on this module

        shape = json.dumps(flow_shape(flow), separators=(",", ":"))
        routes = json.dumps(flow.route_map(), separators=(",", ":"))
        return [
            f"SELECT pgflow.ensure_flow_compiled({flow_slug}, {_text(shape)}::jsonb, 'step', "
            f"{_text(routes)}::jsonb);"
        ]
    statements = [f"SELECT pgflow.create_flow({flow_slug}{_named(_flow_arguments(flow.options))});"]
    for step in flow.steps:
        positional = [flow_slug, _text(step.slug)]
        if step.dependencies:
            positional.append(f"ARRAY[{', '.join(_text(dep) for dep in step.dependencies)}]")
        named = [(name, v) for name, render in _STEP_ARGUMENTS if (v := render(step)) is not None]
        statements.append(f"SELECT pgflow.add_step({', '.join(positional)}{_named(named)});")
    return statements


def migration_filename(flow: Flow, now: datetime | None = None) -> str:
    """``<UTC yyyymmddHHMMSS>_create_<slug>_flow.sql``, the name pgflow's CLI gives migrations.

    ``now`` defaults to the current time; a naive datetime is taken to be UTC.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return f"{now.astimezone(UTC):%Y%m%d%H%M%S}_create_{flow.slug}_flow.sql"


def render_migration(flow: Flow) -> str:
    """The migration file's contents: the compiled statements, one per line."""
    return "\n".join(compile_flow(flow)) + "\n"


def _flow_arguments(options: FlowOptions) -> list[tuple[str, str]]:
    values = (
        ("max_attempts", options.max_attempts),
        ("base_delay", options.base_delay),
        ("timeout", options.timeout),
    )
    return [(name, str(value)) for name, value in values if value is not None]


def _int(value: int | None) -> str | None:
    return None if value is None else str(value)


def _pattern(value: JsonValue | None) -> str | None:
    return None if value is None else _text(stringify(value))


def _mode(value: str | None) -> str | None:
    return None if value is None else _text(value)


# Named add_step arguments, in the order pgflow writes them.
_STEP_ARGUMENTS: tuple[_Argument, ...] = (
    ("max_attempts", lambda step: _int(step.options.max_attempts)),
    ("base_delay", lambda step: _int(step.options.base_delay)),
    ("timeout", lambda step: _int(step.options.timeout)),
    ("start_delay", lambda step: _int(step.options.start_delay)),
    ("required_input_pattern", lambda step: _pattern(step.options.if_)),
    ("forbidden_input_pattern", lambda step: _pattern(step.options.if_not)),
    ("when_unmet", lambda step: _mode(step.options.when_unmet)),
    ("when_exhausted", lambda step: _mode(step.options.when_exhausted)),
    ("step_type", lambda step: _text("map") if step.is_map else None),
)


def _named(arguments: list[tuple[str, str]]) -> str:
    return "".join(f", {name} => {value}" for name, value in arguments)


def _text(value: str) -> str:
    """A SQL string literal (standard-conforming: only single quotes need doubling)."""
    return "'" + value.replace("'", "''") + "'"


# -- JSON as JavaScript's JSON.stringify writes it ---------------------------------------------

_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def stringify(value: JsonValue) -> str:
    """``value`` as ``JSON.stringify`` writes it: no spaces, non-ASCII kept, and JavaScript's
    number formatting and key order (integer-like keys first, in numeric order).

    Integers are written in full, as jsonb stores them.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _js_number(value)
    if isinstance(value, str):
        return _js_string(value)
    if isinstance(value, list):
        return "[" + ",".join(stringify(item) for item in value) + "]"
    keys = sorted((k for k in value if _is_array_index(k)), key=int)
    keys += [k for k in value if not _is_array_index(k)]
    return "{" + ",".join(f"{_js_string(k)}:{stringify(value[k])}" for k in keys) + "}"


def _is_array_index(key: str) -> bool:
    return _ARRAY_INDEX.fullmatch(key) is not None and int(key) < 2**32 - 1


def _js_string(text: str) -> str:
    quoted = json.dumps(text, ensure_ascii=False)
    # JSON.stringify escapes lone surrogates (json.dumps would leave them unencodable).
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


def _js_number(number: float) -> str:
    """ECMAScript's Number::toString: the shortest round-trip digits, in its notation."""
    if not math.isfinite(number):
        return "null"
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    exact = Decimal(repr(abs(number))).normalize()
    digits = "".join(map(str, exact.as_tuple().digits))
    k = len(digits)
    n = int(exact.as_tuple().exponent) + k  # number == 0.<digits> * 10**n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    exponent = n - 1
    mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"

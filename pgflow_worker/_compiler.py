"""Compile a :class:`Flow` into the SQL that registers it, statement for statement as pgflow does.

The output matches pgflow's ``compileFlow``: one ``pgflow.create_flow`` call, then one
``pgflow.add_step`` call per step in declaration order, with options passed by name and only
when set. Migrations written from it are interchangeable with those of pgflow's CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from ._flow import Flow, FlowOptions, StepDefinition

__all__ = ["compile_flow", "migration_filename", "render_migration"]

_Argument = tuple[str, Callable[[StepDefinition], str | None]]


def compile_flow(flow: Flow) -> list[str]:
    """The SQL statements that create ``flow`` and its steps, in the order to run them."""
    flow_slug = _text(flow.slug)
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


# Named add_step arguments, in the order pgflow writes them. Step conditions
# (required_input_pattern, forbidden_input_pattern, when_unmet, when_exhausted) go
# between start_delay and step_type when the DSL gains them.
_STEP_ARGUMENTS: tuple[_Argument, ...] = (
    ("max_attempts", lambda step: _int(step.options.max_attempts)),
    ("base_delay", lambda step: _int(step.options.base_delay)),
    ("timeout", lambda step: _int(step.options.timeout)),
    ("start_delay", lambda step: _int(step.options.start_delay)),
    ("step_type", lambda step: _text("map") if step.is_map else None),
)


def _named(arguments: list[tuple[str, str]]) -> str:
    return "".join(f", {name} => {value}" for name, value in arguments)


def _text(value: str) -> str:
    """A SQL string literal (standard-conforming: only single quotes need doubling)."""
    return "'" + value.replace("'", "''") + "'"

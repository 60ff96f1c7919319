"""HTML tables for Jupyter: a run with one row per step, or a single step."""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING, Any

from ._events import brief_repr

if TYPE_CHECKING:
    from ._run import FlowRun
    from ._step import FlowStep

__all__ = ["render_run", "render_step"]

PREVIEW_CHARS = 80

_COLORS = {
    "created": "#6b7280",
    "started": "#2563eb",
    "completed": "#16a34a",
    "failed": "#dc2626",
    "skipped": "#a16207",
}

_CELL = "padding:2px 8px;text-align:left;vertical-align:top"
_STEP_HEADER = ("step", "status", "started", "finished", "output", "error")


def _preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """A one-line JSON rendering of ``value``, cut to ``limit`` characters."""
    if value is None:
        return ""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):  # circular or very deep structures
        text = brief_repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _time(moment: datetime | None) -> str:
    return moment.isoformat(sep=" ", timespec="seconds") if moment is not None else ""


def _status(status: str) -> str:
    color = _COLORS.get(status, "inherit")
    return f'<span style="color:{color};font-weight:bold">{escape(status)}</span>'


def _cells(tag: str, values: tuple[str, ...]) -> str:
    return "".join(f'<{tag} style="{_CELL}">{value}</{tag}>' for value in values)


def _step_row(step: FlowStep) -> str:
    finished = step.completed_at or step.failed_at or step.skipped_at
    error = step.error_message or ""
    if step.skip_reason is not None:
        error = f"skipped: {step.skip_reason.value}" + (f" ({error})" if error else "")
    values = (
        f"<code>{escape(step.step_slug)}</code>",
        _status(step.status.value),
        escape(_time(step.started_at)),
        escape(_time(finished)),
        f"<code>{escape(_preview(step.output))}</code>" if step.output is not None else "",
        escape(error),
    )
    return f"<tr>{_cells('td', values)}</tr>"


def _table(caption: str, rows: list[str]) -> str:
    header = f"<thead><tr>{_cells('th', _STEP_HEADER)}</tr></thead>"
    body = "".join(rows) or (
        f'<tr><td colspan="{len(_STEP_HEADER)}" style="{_CELL}"><em>no steps yet</em></td></tr>'
    )
    return (
        '<table class="pgflow" style="border-collapse:collapse">'
        f'<caption style="text-align:left;padding:2px 8px">{caption}</caption>'
        f"{header}<tbody>{body}</tbody></table>"
    )


def render_run(run: FlowRun) -> str:
    """The run's header (flow, id, status, times, output or error) above its steps."""
    lines = [
        f"<strong>{escape(run.flow_slug)}</strong> run <code>{escape(run.run_id)}</code> "
        f"{_status(run.status.value)}"
    ]
    times = [
        f"{label} {escape(_time(moment))}"
        for label, moment in (
            ("started", run.started_at),
            ("completed", run.completed_at),
            ("failed", run.failed_at),
        )
        if moment is not None
    ]
    if times:
        lines.append(", ".join(times))
    if run.output is not None:
        lines.append(f"output <code>{escape(_preview(run.output))}</code>")
    if run.error_message:
        lines.append(f"error: {escape(run.error_message)}")
    rows = [_step_row(step) for step in run.steps.values()]
    return _table("<br>".join(lines), rows)


def render_step(step: FlowStep) -> str:
    """A one-row version of the run table, for a single step."""
    caption = f"step of run <code>{escape(step.run_id)}</code>"
    return _table(caption, [_step_row(step)])

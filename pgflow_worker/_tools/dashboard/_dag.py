"""A flow's DAG as inline SVG, drawn on the server: no script, no CDN, works offline.

Steps are placed in columns by their longest path from a root (their dependencies are always
to the left) and in rows by their order in the flow. Each step is a box whose CSS class names
its status, so one stylesheet colours every page and a live update only swaps the markup.
Map steps are drawn as a stack of boxes, conditional steps with a dashed border and a
diamond; the condition itself is in the box's tooltip. Every string is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

from ._queries import StepShape

__all__ = ["render_dag"]

_BOX_W = 168
_BOX_H = 44
_COL_GAP = 56
_ROW_GAP = 18
_PAD = 12
_MAX_LABEL = 20


def _columns(steps: Sequence[StepShape]) -> dict[str, int]:
    column: dict[str, int] = {}
    # Steps come in step_index order, which puts every dependency before its dependents.
    for step in sorted(steps, key=lambda s: s.index):
        column[step.slug] = 1 + max((column.get(d, 0) for d in step.depends_on), default=-1)
    return column


def _label(slug: str) -> str:
    return slug if len(slug) <= _MAX_LABEL else slug[: _MAX_LABEL - 1] + "…"


def _tooltip(step: StepShape, status: str | None) -> str:
    lines = [f"{step.slug} ({'map' if step.step_type == 'map' else 'step'})"]
    if status is not None:
        lines.append(f"status: {status}")
    if step.depends_on:
        lines.append("depends on: " + ", ".join(step.depends_on))
    if step.if_ is not None:
        lines.append(f"runs if its input contains {step.if_}")
    if step.if_not is not None:
        lines.append(f"runs unless its input contains {step.if_not}")
    if step.conditional:
        lines.append(f"when unmet: {step.when_unmet}")
    return "\n".join(lines)


def render_dag(
    steps: Sequence[StepShape],
    statuses: Mapping[str, str] | None = None,
    *,
    link_prefix: str | None = None,
) -> Markup:
    """The SVG of a flow's steps; with ``statuses``, each box is coloured by its step's status
    and, with ``link_prefix``, links to ``link_prefix + slug`` (an anchor on the run's page)."""
    if not steps:
        return Markup('<p class="muted">This flow has no steps.</p>')
    column = _columns(steps)
    rows: dict[int, int] = {}
    place: dict[str, tuple[int, int]] = {}
    for step in sorted(steps, key=lambda s: s.index):
        c = column[step.slug]
        place[step.slug] = (c, rows.get(c, 0))
        rows[c] = rows.get(c, 0) + 1
    width = _PAD * 2 + (max(column.values()) + 1) * (_BOX_W + _COL_GAP) - _COL_GAP
    height = _PAD * 2 + max(rows.values()) * (_BOX_H + _ROW_GAP) - _ROW_GAP + 6

    def xy(slug: str) -> tuple[int, int]:
        c, r = place[slug]
        return _PAD + c * (_BOX_W + _COL_GAP), _PAD + r * (_BOX_H + _ROW_GAP)

    parts: list[str] = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead"/></marker></defs>',
    ]
    for step in steps:
        x2, y2 = xy(step.slug)
        for dep in step.depends_on:
            if dep not in place:
                continue
            x1, y1 = xy(dep)
            sx, sy, ex, ey = x1 + _BOX_W, y1 + _BOX_H // 2, x2 - 2, y2 + _BOX_H // 2
            # An edge skipping columns runs along its source's row, then bends into its target
            # in the last gap, instead of cutting across the boxes in between.
            bend = max(sx, ex - _COL_GAP)
            mid = (bend + ex) // 2
            parts.append(
                f'<path class="edge" marker-end="url(#arrow)" '
                f'd="M {sx} {sy} L {bend} {sy} C {mid} {sy}, {mid} {ey}, {ex} {ey}"/>'
            )
    for step in steps:
        x, y = xy(step.slug)
        status = None if statuses is None else statuses.get(step.slug, "created")
        classes = ["node", f"status-{status or 'none'}"]
        if step.step_type == "map":
            classes.append("map")
        if step.conditional:
            classes.append("conditional")
        node = [
            f'<g class="{escape(" ".join(classes))}" data-step="{escape(step.slug)}">',
            f"<title>{escape(_tooltip(step, status))}</title>",
        ]
        if step.step_type == "map":
            node.append(
                f'<rect class="stack" x="{x + 6}" y="{y + 6}" width="{_BOX_W}" '
                f'height="{_BOX_H}" rx="8"/>'
            )
        node.append(
            f'<rect class="box" x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="8"/>'
        )
        node.append(
            f'<text class="slug" x="{x + 12}" y="{y + 19}">{escape(_label(step.slug))}</text>'
        )
        kind = "map" if step.step_type == "map" else "step"
        if step.conditional:
            kind += " · if" if step.if_ is not None else " · unless"
        detail = kind if status is None else f"{kind} · {status}"
        node.append(f'<text class="kind" x="{x + 12}" y="{y + 35}">{escape(detail)}</text>')
        if step.conditional:
            cx, cy = x + _BOX_W - 14, y + 14
            node.append(
                f'<path class="diamond" d="M {cx} {cy - 7} L {cx + 7} {cy} L {cx} {cy + 7} '
                f'L {cx - 7} {cy} z"/>'
            )
        node.append("</g>")
        if link_prefix is not None:
            href = escape(link_prefix + step.slug)
            node = [f'<a href="{href}">', *node, "</a>"]
        parts.extend(node)
    parts.append("</svg>")
    return Markup("".join(parts))

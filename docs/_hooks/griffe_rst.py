"""A griffe extension: show the packages' reST docstring markup as Markdown in the API pages.

The docstrings use a few reST idioms (``:class:`Name``` roles, ``::`` literal blocks). In the
Markdown rendering they become inline code and fenced Python blocks.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|exc|data|obj|mod):`~?([^`]+)`")


def rst_to_markdown(text: str) -> str:
    """``text`` with reST roles as inline code and ``::`` literal blocks as fenced code."""
    text = _ROLE.sub(r"`\1`", text)
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::"):
            out.append(line)
            i += 1
            continue
        head = line.rstrip()[:-2].rstrip()
        if head:
            out.append(head + ":")
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        code = [b[4:] if b.startswith("    ") else "" for b in block]
        while code and not code[0]:
            code.pop(0)
        out += ["", "```python", *code, "```", ""]
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrites every docstring of the loaded package once it is fully loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        self._walk(pkg, seen)

    def _walk(self, obj: griffe.Object, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)  # type: ignore[arg-type]

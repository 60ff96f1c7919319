"""Code blocks of the documentation, and what the tests do with each.

Every fenced block in a language the tests know (python, bash, sql, mermaid) carries a marker,
an HTML comment on the line before its opening fence, which says what to do with it:

``<!-- test: run -->``
    python: execute it, in order, in a namespace shared by the page's blocks (like notebook
    cells: top-level ``await`` works, an event loop is running).
``<!-- test: file NAME -->``
    python: write it to ``NAME`` in the page's scratch folder (the working directory of the
    page's commands, and on ``sys.path`` while its blocks run).
``<!-- test: shell -->``
    bash: run it with ``bash -e`` in the scratch folder; it must exit with status 0. With
    ``exports=NAME,...``, the variables it exports carry over to the following blocks, as
    they would in the reader's terminal (``DATABASE_URL`` becomes the page's database).
``<!-- test: background ready=REGEX -->``
    bash: start it and wait until its output matches ``REGEX``; it receives SIGTERM when the
    page is done and must then exit on its own.
``<!-- test: sql -->``
    sql: execute it on the page's database.
``<!-- test: mermaid EXPR -->``
    mermaid: the diagram must equal ``EXPR.to_mermaid()``; ``EXPR`` is a Python expression in
    the page's namespace, or ``module:attribute`` for a module written by a ``file`` block.
``<!-- test: output -->``
    text: the standard output of the previous ``run`` or ``shell`` block; ``...`` in a line
    matches anything.
``<!-- test: skip REASON -->``
    any language: shown, never run; the reason says why.

A page may also carry ``<!-- test-page: supabase roles=a,b -->``: the page then runs with a
Supabase stand-in (``SUPABASE_URL`` / ``SUPABASE_KEY``) serving the page's database, requests
running under the API key's role, after the listed roles are created.

Every page runs on a fresh database migrated with pgflow-py's SQL, named by ``DATABASE_URL``.
``pgflow db`` keeps its server in a scratch folder of the page (``PGFLOW_DB_DIR``), stopped
when the page is done.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

CHECKED_LANGUAGES = frozenset({"python", "py", "bash", "sh", "shell", "console", "sql", "mermaid"})
ACTIONS = {
    "run": {"python"},
    "file": {"python"},
    "shell": {"bash"},
    "background": {"bash"},
    "sql": {"sql"},
    "mermaid": {"mermaid"},
    "output": {"text"},
    "skip": None,  # any language
}
_ALIASES = {"py": "python", "sh": "bash", "shell": "bash", "console": "bash"}

_MARKER = re.compile(r"^\s*<!--\s*test:\s*(?P<action>[a-z-]+)(?P<args>.*?)\s*-->\s*$")
_PAGE_MARKER = re.compile(r"^\s*<!--\s*test-page:\s*(?P<args>.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block and the marker before it."""

    path: Path
    line: int
    """1-based line of the opening fence."""
    language: str
    code: str
    action: str | None
    args: str

    @property
    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"

    def option(self, name: str) -> str | None:
        """The value of ``name=value`` in the marker's arguments."""
        for word in shlex.split(self.args):
            key, sep, value = word.partition("=")
            if sep and key == name:
                return value
        return None


@dataclass
class Page:
    """A Markdown file's code blocks, in order, and its page-level options."""

    path: Path
    blocks: list[Block]
    options: dict[str, str] = field(default_factory=dict)

    @property
    def runnable(self) -> bool:
        return any(b.action not in (None, "skip") for b in self.blocks)


def _language(info: str) -> str:
    word = info.strip().split(maxsplit=1)[0] if info.strip() else ""
    word = word.lstrip("{").lstrip(".").rstrip("}").lower()
    return _ALIASES.get(word, word)


def parse(path: Path) -> Page:
    """Every fenced block of ``path`` with its marker (``None`` when it has none)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    options: dict[str, str] = {}
    i = 0
    last_text = ""  # the last non-blank line outside blocks
    while i < len(lines):
        line = lines[i]
        page = _PAGE_MARKER.match(line)
        if page:
            for word in shlex.split(page["args"]):
                key, _, value = word.partition("=")
                options[key] = value
        fence = _FENCE.match(line)
        if not fence:
            if line.strip():
                last_text = line
            i += 1
            continue
        indent, mark = fence["indent"], fence["fence"]
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = lines[i].strip()
            if close.startswith(mark[0] * len(mark)) and not close.strip(mark[0]):
                break
            text = lines[i]
            body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
            i += 1
        i += 1
        marker = _MARKER.match(last_text)
        blocks.append(
            Block(
                path=path,
                line=start + 1,
                language=_language(fence["info"]),
                code="\n".join(body) + "\n",
                action=marker["action"] if marker else None,
                args=marker["args"].strip() if marker else "",
            )
        )
        last_text = ""
    return Page(path, blocks, options)


# Pages whose commands are not run by these tests: the benchmarks take minutes. Their
# commands are still checked, against the benchmarks' argument parsers, by
# test_benchmark_commands.py.
NOT_RUN = frozenset({DOCS / "benchmarks.md"})


def documentation_files() -> list[Path]:
    """The README and every Markdown page of the site whose code these tests run."""
    return [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if p not in NOT_RUN)]


def marker_problems(block: Block) -> str | None:
    """Why a block's marker is missing or wrong, or ``None`` when it is fine."""
    if block.action is None:
        if block.language in CHECKED_LANGUAGES or block.language in _ALIASES.values():
            return f"{block.where}: a {block.language} block without a <!-- test: ... --> marker"
        return None
    if block.action not in ACTIONS:
        return f"{block.where}: unknown marker action {block.action!r}"
    allowed = ACTIONS[block.action]
    if allowed is not None and block.language not in allowed:
        return (
            f"{block.where}: marker {block.action!r} does not apply to a {block.language!r} block"
        )
    if block.action == "skip" and not block.args:
        return f"{block.where}: a skip marker must say why the block is not run"
    if block.action == "file" and not block.args:
        return f"{block.where}: a file marker must name the file"
    if block.action == "mermaid" and not block.args:
        return f"{block.where}: a mermaid marker must name the flow"
    return None

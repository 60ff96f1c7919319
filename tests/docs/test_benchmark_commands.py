"""The benchmark commands the documentation shows are accepted by the benchmarks as written.

The benchmarks take minutes, so the snippet tests do not run docs/benchmarks.md (see
``snippets.NOT_RUN``). These tests run nothing either: they find every
``python -m benchmarks.NAME ...`` command in the pages that document the benchmarks, import the
module and hand the command's arguments to its argument parser, ``parse_args(argv)``. They also
check that the defaults a page lists next to a command are the parser's defaults.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from tests.docs.snippets import ROOT, parse

PAGES = [ROOT / "docs" / "benchmarks.md", ROOT / "benchmarks" / "README.md"]

_MODULE = re.compile(r"^benchmarks\.(?P<name>[a-z_][a-z0-9_]*)$")
_INLINE_CODE = re.compile(r"`([^`]+)`")
_DEFAULTS = re.compile(r"\(defaults:(?P<text>.*?);", re.S)

Parser = Callable[[Sequence[str] | None], argparse.Namespace]


@dataclass(frozen=True)
class Command:
    """One ``python -m benchmarks.NAME ARGS`` command of a page."""

    where: str
    line: int
    module: str
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: python -m {self.module} {shlex.join(self.argv)}".rstrip()


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _command_in(words: list[str]) -> tuple[str, tuple[str, ...]] | None:
    """``(module, argv)`` when ``words`` run ``python -m benchmarks.NAME``."""
    for i, word in enumerate(words[:-1]):
        if word == "-m" and _MODULE.match(words[i + 1]) and i > 0 and "python" in words[i - 1]:
            return words[i + 1], tuple(words[i + 2 :])
    return None


def _logical_lines(code: str) -> list[tuple[int, str]]:
    """The lines of a shell block, continuation lines joined, with their 0-based offsets."""
    joined: list[tuple[int, str]] = []
    start, parts = 0, list[str]()
    for offset, line in enumerate(code.splitlines()):
        if not parts:
            start = offset
        parts.append(line.removesuffix("\\"))
        if not line.endswith("\\"):
            joined.append((start, " ".join(parts)))
            parts = []
    if parts:
        joined.append((start, " ".join(parts)))
    return joined


def commands(path: Path) -> list[Command]:
    """Every benchmark command of a page: in its shell blocks and in its inline code."""
    found: list[Command] = []
    for block in parse(path).blocks:
        if block.language != "bash":
            continue
        for offset, line in _logical_lines(block.code):
            words = shlex.split(line, comments=True)
            if (command := _command_in(words)) is not None:
                line_number = block.line + 1 + offset
                where = f"{_relative(path)}:{line_number}"
                found.append(Command(where, line_number, *command))
    # Inline code (`uv run python -m benchmarks.x --flag`), outside the fenced blocks.
    in_fence = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for span in _INLINE_CODE.findall(line):
            if (command := _command_in(shlex.split(span))) is not None:
                found.append(Command(f"{_relative(path)}:{number}", number, *command))
    return sorted(found, key=lambda c: c.line)


COMMANDS = [command for page in PAGES for command in commands(page)]


def parser_of(module_name: str) -> Parser:
    """The module's ``parse_args(argv)``, failing the test when it has none."""
    module = importlib.import_module(module_name)
    parse_args = getattr(module, "parse_args", None)
    if not callable(parse_args):
        pytest.fail(
            f"{module_name} has no separable argument parser: the documented commands cannot "
            "be checked without running it (give it parse_args(argv) -> argparse.Namespace)"
        )
    return cast(Parser, parse_args)


def test_every_page_shows_benchmark_commands() -> None:
    for page in PAGES:
        assert any(c.where.startswith(_relative(page) + ":") for c in COMMANDS), page
    modules = {c.module for c in COMMANDS}
    assert {"benchmarks.sql_loop", "benchmarks.worker_throughput"} <= modules


@pytest.mark.parametrize("command", COMMANDS, ids=[str(c) for c in COMMANDS])
def test_documented_command_parses(command: Command, capsys: pytest.CaptureFixture[str]) -> None:
    parse_args = parser_of(command.module)
    if "--help" in command.argv or "-h" in command.argv:
        with pytest.raises(SystemExit) as exited:
            parse_args(list(command.argv))
        assert exited.value.code == 0
        assert f"usage: python -m {command.module}" in capsys.readouterr().out
        return
    try:
        parse_args(list(command.argv))
    except SystemExit as exc:
        pytest.fail(f"{command} is refused: {capsys.readouterr().err.strip()} (exit {exc.code})")


def documented_defaults(path: Path) -> list[tuple[Command, list[str]]]:
    """Each "(defaults: `--flag value ...` ...;" of a page, with the command it follows."""
    text = path.read_text(encoding="utf-8")
    page_commands = commands(path)
    found: list[tuple[Command, list[str]]] = []
    for match in _DEFAULTS.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = [c for c in page_commands if c.line < line]
        assert before, f"{_relative(path)}:{line}: defaults listed before any command"
        argv = [word for span in _INLINE_CODE.findall(match["text"]) for word in span.split()]
        found.append((before[-1], argv))
    return found


DEFAULTS = [entry for page in PAGES for entry in documented_defaults(page)]


def test_some_defaults_are_documented() -> None:
    assert DEFAULTS


@pytest.mark.parametrize(
    ("command", "argv"), DEFAULTS, ids=[f"{c.where} {c.module}" for c, _ in DEFAULTS]
)
def test_documented_defaults_are_the_defaults(command: Command, argv: list[str]) -> None:
    parse_args = parser_of(command.module)
    assert argv, f"no options in the defaults listed after {command}"
    documented = vars(parse_args(argv))
    actual = vars(parse_args([]))
    differences = {
        key: (documented[key], actual[key]) for key in actual if documented[key] != actual[key]
    }
    assert differences == {}, f"documented (given, real) defaults differ after {command}"

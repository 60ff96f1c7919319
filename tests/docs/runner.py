"""Runs one documentation page's code blocks against a database, as a reader would."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib
import inspect
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from tests.docs.snippets import Block, Page

BLOCK_TIMEOUT = 60.0
_EXPORTS_MARK = "@@pgflow-docs-exports@@"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 40.0

# `uv run X` runs X inside the project's environment; here that is the running interpreter's.
_SHELL_PREAMBLE = """\
uv() {
  if [ "$1" = run ]; then shift; "$@"; else command uv "$@"; fi
}
"""


def _environment(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("COLUMNS", "120")
    return env


def _psql() -> Path | None:
    """The psql next to the PostgreSQL server binaries, if there is one."""
    from pgflow_worker._tools import find_bindir
    from pgflow_worker.errors import PostgresNotFound

    try:
        psql = find_bindir() / "psql"
    except PostgresNotFound:
        return None
    return psql if psql.is_file() else None


def output_matches(want: list[str], got: list[str]) -> bool:
    """Whether ``got`` matches the documented lines ``want``: ``...`` inside a line matches
    any text, and a line that is only ``...`` any number of lines."""
    if not want:
        return not got
    head, rest = want[0], want[1:]
    if head.strip() == "...":
        return any(output_matches(rest, got[i:]) for i in range(len(got) + 1))
    if not got:
        return False
    pattern = ".*".join(re.escape(part) for part in head.split("..."))
    return re.fullmatch(pattern, got[0]) is not None and output_matches(rest, got[1:])


class Background:
    """A command started by a ``background`` block, with its output collected."""

    def __init__(self, block: Block, cwd: Path, env: dict[str, str]) -> None:
        self.block = block
        ready = block.option("ready")
        self._ready = re.compile(ready) if ready else None
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            ["bash", "-e", "-c", _SHELL_PREAMBLE + block.code],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if self._ready is None:
            self.ready.set()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if self._ready is not None and self._ready.search(line):
                self.ready.set()
        self.ready.set()  # the process ended: nobody waits for readiness any longer

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def wait_ready(self) -> None:
        if not await asyncio.to_thread(self.ready.wait, READY_TIMEOUT):
            raise AssertionError(
                f"{self.block.where}: not ready within {READY_TIMEOUT:g} s:\n{self.output}"
            )
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.block.where}: exited with status {self.process.returncode} before it "
                f"was ready:\n{self.output}"
            )

    async def stop(self) -> None:
        """SIGTERM, as a service manager would send; the command must exit by itself."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise AssertionError(
                    f"{self.block.where}: did not stop within {STOP_TIMEOUT:g} s of SIGTERM:\n"
                    f"{self.output}"
                ) from None
        await asyncio.to_thread(self._reader.join, 5)


class PageRunner:
    """Executes the blocks of a :class:`Page` in order, then cleans up after them."""

    def __init__(self, page: Page, db_url: str, workdir: Path) -> None:
        self.page = page
        self.db_url = db_url
        self.workdir = workdir
        # A folder the OS user running PostgreSQL can enter (pytest's folders are private).
        self.db_dir = Path(tempfile.mkdtemp(prefix="pgflow-docs-db-", dir="/tmp"))
        self.env: dict[str, str] = {"DATABASE_URL": db_url, "PGFLOW_DB_DIR": str(self.db_dir)}
        self._environ_before: dict[str, str | None] = {}
        self.namespace: dict[str, Any] = {"__name__": "__docs__"}
        self.last_output: str | None = None
        self._processes: list[Background] = []
        self._path_added = False
        self._modules_before = set(sys.modules)

    async def __aenter__(self) -> PageRunner:
        sys.path.insert(0, str(self.workdir))
        self._path_added = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._close_objects()
            for process in reversed(self._processes):
                await process.stop()
        finally:
            await self._stop_db_server()
            for name, value in self._environ_before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            if self._path_added:
                sys.path.remove(str(self.workdir))
            for name in set(sys.modules) - self._modules_before:
                module_file = getattr(sys.modules[name], "__file__", None) or ""
                if module_file.startswith(str(self.workdir)):
                    del sys.modules[name]
            importlib.invalidate_caches()

    async def run(self) -> None:
        for block in self.page.blocks:
            await self.run_block(block)

    async def run_block(self, block: Block) -> None:
        action = block.action
        if action in (None, "skip"):
            return
        handler = getattr(self, "_" + action.replace("-", "_"))
        await handler(block)

    # -- actions ------------------------------------------------------------------------------

    async def _run(self, block: Block) -> None:
        code = compile(
            block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            result = eval(code, self.namespace)
            if inspect.isawaitable(result):
                try:
                    async with asyncio.timeout(BLOCK_TIMEOUT):
                        await result
                except TimeoutError:
                    raise AssertionError(
                        f"{block.where}: did not finish within {BLOCK_TIMEOUT:g} s"
                    ) from None
        self.last_output = captured.getvalue()

    async def _file(self, block: Block) -> None:
        target = self.workdir / block.args
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.code, encoding="utf-8")
        importlib.invalidate_caches()

    async def _shell(self, block: Block) -> None:
        exports = [name for name in (block.option("exports") or "").split(",") if name]
        code = block.code
        if exports:
            code += f"\nprintf '\\n%s\\n' {_EXPORTS_MARK}\n"
            code += "".join(f"printf '%s=%s\\n' {name} \"${{{name}-}}\"\n" for name in exports)
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-e",
            "-c",
            _SHELL_PREAMBLE + code,
            cwd=self.workdir,
            env=_environment(self.env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(BLOCK_TIMEOUT):
                out, err = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(
                f"{block.where}: did not finish within {BLOCK_TIMEOUT:g} s"
            ) from None
        stdout, stderr = out.decode(), err.decode()
        if process.returncode != 0:
            raise AssertionError(
                f"{block.where}: exited with status {process.returncode}\n"
                f"--- stdout\n{stdout}\n--- stderr\n{stderr}"
            )
        if exports:
            stdout, _, exported = stdout.rpartition(f"\n{_EXPORTS_MARK}\n")
            for line in exported.splitlines():
                name, _, value = line.partition("=")
                self._export(name, value)
        self.last_output = stdout

    def _export(self, name: str, value: str) -> None:
        """Carry a variable a block exported into the blocks after it, in-process ones too."""
        self.env[name] = value
        self._environ_before.setdefault(name, os.environ.get(name))
        os.environ[name] = value
        if name == "DATABASE_URL":
            self.db_url = value

    async def _background(self, block: Block) -> None:
        process = Background(block, self.workdir, _environment(self.env))
        self._processes.append(process)
        await process.wait_ready()

    async def _sql(self, block: Block) -> None:
        """Through psql, as a reader would run it; its output can be checked."""
        psql = _psql()
        if psql is None:
            async with await psycopg.AsyncConnection.connect(self.db_url, autocommit=True) as conn:
                try:
                    await conn.execute(block.code.encode())
                except psycopg.Error as exc:
                    raise AssertionError(f"{block.where}: {exc}") from exc
            self.last_output = None
            return
        process = await asyncio.create_subprocess_exec(
            str(psql),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            self.db_url,
            "-f",
            "-",
            env=_environment(self.env),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(BLOCK_TIMEOUT):
            out, err = await process.communicate(block.code.encode())
        if process.returncode != 0:
            raise AssertionError(f"{block.where}: psql failed:\n{err.decode()}")
        self.last_output = out.decode()

    async def _mermaid(self, block: Block) -> None:
        expression = block.args
        if ":" in expression:
            module_name, _, attribute = expression.partition(":")
            flow = getattr(importlib.import_module(module_name), attribute)
        else:
            flow = eval(expression, self.namespace)
        expected = flow.to_mermaid().strip()
        assert block.code.strip() == expected, (
            f"{block.where}: the diagram is not {expression}.to_mermaid(); it should be:\n"
            f"{expected}"
        )

    async def _output(self, block: Block) -> None:
        assert self.last_output is not None, f"{block.where}: no output to compare with"
        got = [line.rstrip() for line in self.last_output.strip().splitlines()]
        want = [line.rstrip() for line in block.code.strip().splitlines()]
        assert output_matches(want, got), (
            f"{block.where}: the output differs.\n--- documented\n"
            + "\n".join(want)
            + "\n--- actual\n"
            + "\n".join(got)
        )

    # -- cleanup ------------------------------------------------------------------------------

    async def _stop_db_server(self) -> None:
        """Stop the server a ``pgflow db start`` block left running; remove its folder."""
        if (self.db_dir / "data").exists():
            result = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "pgflow_worker", "db", "stop", "--dir", str(self.db_dir)],
                capture_output=True,
                text=True,
                timeout=STOP_TIMEOUT,
                check=False,
            )
            assert result.returncode == 0, f"pgflow db stop failed:\n{result.stderr}"
        shutil.rmtree(self.db_dir, ignore_errors=True)

    async def _close_objects(self) -> None:
        """Close clients a page left open, so the next page starts clean."""
        from pgflow_client import PgflowClient

        for value in list(self.namespace.values()):
            if isinstance(value, PgflowClient):
                await value.aclose()


@contextlib.asynccontextmanager
async def roles_for(db_url: str, roles: list[str]) -> AsyncIterator[None]:
    """The roles a page grants privileges to (Supabase's, say): those missing from the server
    are created for the page, then dropped with what they were granted."""
    created: list[str] = []
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for role in roles:
            exists = await conn.execute("select 1 from pg_roles where rolname = %s", (role,))
            if await exists.fetchone() is None:
                await conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(role)))
                created.append(role)
    try:
        yield
    finally:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            for role in created:
                await conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
                await conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


@contextlib.asynccontextmanager
async def supabase_for(db_url: str, role: str) -> AsyncIterator[tuple[str, str]]:
    """A Supabase stand-in over ``db_url`` exposing ``public`` and ``pgflow``, whose API key
    carries ``role``; requests run under that role, as PostgREST runs them."""
    from tests.supabase_standin._jwt import unsigned_jwt
    from tests.supabase_standin._server import SupabaseStandIn

    key = unsigned_jwt({"iss": "supabase-standin", "role": role})
    async with SupabaseStandIn(
        db_url, key=key, use_jwt_role=True, schemas=["public", "graphql_public", "pgflow"]
    ) as standin:
        yield standin.url, standin.key

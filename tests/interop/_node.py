"""pgflow's TypeScript packages, installed with npm into a scratch folder, and Node processes.

``node_project()`` installs ``@pgflow/client``, ``@pgflow/core`` and ``@pgflow/dsl`` 0.8.1 with
the libraries they run on into a folder under the system temp directory (never the repository)
and copies the scripts of ``js/`` next to them, so their imports resolve there. ``NodeSession``
talks to a long-running script over JSON lines; ``run_script`` runs one to completion.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import hashlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tests._cache import user_cache

__all__ = [
    "PACKAGES",
    "NodeError",
    "NodeSession",
    "NodeTaskLoop",
    "NodeUnavailable",
    "node_project",
    "run_script",
]

PGFLOW_VERSION = "0.8.1"

# Exact versions, so every run installs the same code. supabase-js satisfies @pgflow/client's
# "^2.49.4"; postgres (postgres.js) is what @pgflow/core's PgflowSqlClient runs on; Node 20 has
# no global WebSocket, so supabase-js's realtime is handed the `ws` package, as its docs advise.
PACKAGES = {
    "@pgflow/client": PGFLOW_VERSION,
    "@pgflow/core": PGFLOW_VERSION,
    "@pgflow/dsl": PGFLOW_VERSION,
    "@supabase/supabase-js": "2.109.0",
    "postgres": "3.4.9",
    "ws": "8.23.0",
}

SCRIPTS = Path(__file__).parent / "js"
_INSTALL_SECONDS = 300
_MARKER = ".pgflow-py-installed"


class NodeUnavailable(Exception):
    """Node or the npm packages cannot be had here; the message says why."""


class NodeError(Exception):
    """A Node script failed or answered with an error."""


def _which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise NodeUnavailable(
            f"{name} is not installed, so pgflow's TypeScript packages cannot run"
        )
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def node_project() -> Path:
    """The scratch folder holding ``node_modules`` and ``scripts/``; installs on first use."""
    _which("node")
    npm = _which("npm")
    pinned = json.dumps(PACKAGES, sort_keys=True)
    digest = hashlib.sha256(pinned.encode()).hexdigest()[:12]
    cache = user_cache("npm-cache")
    project = cache / f"interop-{digest}"
    with _locked(cache / f"interop-{digest}.lock"):
        marker = project / _MARKER
        if not (marker.is_file() and marker.read_text() == pinned):
            shutil.rmtree(project, ignore_errors=True)
            project.mkdir()
            manifest = {"name": "pgflow-py-interop", "private": True, "dependencies": PACKAGES}
            (project / "package.json").write_text(json.dumps(manifest, indent=2))
            try:
                result = subprocess.run(
                    [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts"],
                    cwd=project,
                    capture_output=True,
                    text=True,
                    timeout=_INSTALL_SECONDS,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise NodeUnavailable(f"npm install took over {_INSTALL_SECONDS} s") from exc
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip()[-500:]
                raise NodeUnavailable(f"npm install of {', '.join(PACKAGES)} failed: {tail}")
            marker.write_text(pinned)
        scripts = project / "scripts"
        scripts.mkdir(exist_ok=True)
        for script in SCRIPTS.glob("*.mjs"):
            target = scripts / script.name
            text = script.read_text()
            if not target.is_file() or target.read_text() != text:
                target.write_text(text)
    return project


def _script(name: str) -> tuple[str, Path]:
    project = node_project()
    path = project / "scripts" / name
    if not path.is_file():
        raise NodeError(f"no script {name!r} in {SCRIPTS}")
    return _which("node"), path


async def run_script(name: str, config: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Run ``js/<name>`` with ``config`` as its JSON argument; returns its last stdout line."""
    node, path = _script(name)
    process = await asyncio.create_subprocess_exec(
        node,
        str(path),
        json.dumps(config),
        cwd=path.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise NodeError(f"{name} did not finish within {timeout:g} s") from None
    lines = stdout.decode().strip().splitlines()
    if process.returncode != 0 or not lines:
        raise NodeError(
            f"{name} exited with {process.returncode}: {stderr.decode().strip()[-1500:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


class NodeSession:
    """A long-running Node script spoken to in JSON lines.

    Requests carry an ``id`` and get one answer with the same ``id``; every other line the
    script prints (``{"type": "event", ...}``) goes to :attr:`events` in arrival order.
    """

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self._name = name
        self._config = config
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._stderr_reader: asyncio.Task[None] | None = None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> Self:
        node, path = _script(self._name)
        self._process = await asyncio.create_subprocess_exec(
            node,
            str(path),
            json.dumps(self._config),
            cwd=path.parent,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=2**24,
        )
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        self._reader = asyncio.create_task(self._read(self._process.stdout))
        self._stderr_reader = asyncio.create_task(self._drain_stderr(self._process.stderr))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def stderr(self) -> str:
        """The last lines the script wrote on stderr (its logs, kept for failure messages)."""
        return "".join(self._stderr)

    async def request(self, cmd: str, *, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """Send one command and wait for its answer; an ``error`` answer raises NodeError."""
        process = self._process
        if process is None or process.stdin is None or process.returncode is not None:
            raise NodeError(f"{self._name} is not running\n{self.stderr[-1500:]}")
        request_id = next(self._ids)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        process.stdin.write(json.dumps({"id": request_id, "cmd": cmd, **fields}).encode() + b"\n")
        await process.stdin.drain()
        try:
            reply = await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            raise NodeError(
                f"{self._name}: no answer to {cmd!r} within {timeout:g} s\n{self.stderr[-1500:]}"
            ) from None
        finally:
            self._pending.pop(request_id, None)
        if reply.get("type") == "error":
            raise NodeError(f"{self._name}: {cmd!r} failed: {reply.get('message')}")
        return reply

    async def next_event(self, timeout: float = 10.0) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self.events.get(), timeout)
        except TimeoutError:
            raise NodeError(
                f"{self._name}: no event within {timeout:g} s\n{self.stderr[-1500:]}"
            ) from None

    async def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None and process.stdin is not None:
            with contextlib.suppress(ConnectionError):
                process.stdin.write(b'{"cmd": "exit"}\n')
                await process.stdin.drain()
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        for task in (self._reader, self._stderr_reader):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():
            message: dict[str, Any] = json.loads(line)
            waiter = self._pending.get(message.get("id", -1))
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
            else:
                self.events.put_nowait(message)
        exited = NodeError(f"{self._name} exited\n{self.stderr[-1500:]}")
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(exited)

    async def _drain_stderr(self, stderr: asyncio.StreamReader) -> None:
        while line := await stderr.readline():
            self._stderr.append(line.decode(errors="replace"))


class NodeTaskLoop:
    """``js/task_loop.mjs`` (a PgflowSqlClient task loop) as a child process.

    Shaped like ``benchmarks._common.WorkerProcess``: start it, wait until it has registered
    in ``pgflow.workers``, and stop it (it finishes its batch) to get its counts.
    """

    FUNCTION_NAME = "pgflow-core-task-loop"

    def __init__(
        self,
        dsn: str,
        flow_slug: str,
        *,
        shape: Mapping[str, Any] | None = None,
        pgflow_version: str | None = None,
        routes: list[dict[str, str]] | None = None,
        serve: list[str] | None = None,
        **settings: int,
    ) -> None:
        """``shape`` given, the loop starts as pgflow 0.17's worker does: it compiles the flow
        (``ensure_flow_compiled``), registers (``track_worker_function``) and writes
        ``pgflow_version`` in its worker row."""
        self.dsn = dsn
        self.flow_slug = flow_slug
        self.settings: dict[str, Any] = dict(settings)
        if shape is not None:
            self.settings.update(shape=shape, pgflow_version=pgflow_version)
        if routes is not None:
            # Serve these steps of a flow with per-step queues, each from its own queue.
            self.settings.update(routes=routes, serve=serve)
        served = [r for r in routes or [] if serve is None or r["stepSlug"] in serve]
        self._queue = served[0]["queueName"] if served else flow_slug
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.summary: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise NodeError("the task loop is not started")
        return self._proc.pid

    def start(self) -> Self:
        node, path = _script("task_loop.mjs")
        config = {"dsn": _postgres_js_url(self.dsn), "flow_slug": self.flow_slug, **self.settings}
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self._proc = subprocess.Popen(
            [node, str(path), json.dumps(config)],
            cwd=path.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        return self

    def wait_registered(self, conn: psycopg.Connection[Any], timeout: float) -> None:
        """Wait until the loop's worker row exists; fail if the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            row = conn.execute(
                "select count(*) from pgflow.workers where queue_name = %s and function_name = %s",
                (self._queue, self.FUNCTION_NAME),
            ).fetchone()
            if row and row[0]:
                return
            self.check_alive()
            if time.monotonic() > deadline:
                raise NodeError(f"the task loop did not register within {timeout:g} s")
            time.sleep(0.05)

    def check_alive(self) -> None:
        if self._proc is None:
            raise NodeError("the task loop is not started")
        code = self._proc.poll()
        if code is not None:
            raise NodeError(f"the task loop exited with code {code}:\n{self.log_tail()}")

    def log_tail(self, limit: int = 3000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-limit:]

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Close its stdin (it stops after its batch) and return its closing JSON line."""
        if self._proc is None:
            if self.summary is None:
                raise NodeError("the task loop was never started")
            return self.summary
        proc, self._proc = self._proc, None
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise NodeError(f"the task loop did not stop within {timeout:g} s") from None
        lines = stdout.decode().strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise NodeError(f"the task loop exited with {proc.returncode}:\n{self.log_tail()}")
        self.summary = json.loads(lines[-1])
        return self.summary

    def close(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(NodeError):
                self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _postgres_js_url(dsn: str) -> str:
    """postgres.js takes URLs only; libpq key/value strings are turned into one."""
    if dsn.startswith(("postgres://", "postgresql://")):
        return dsn
    params = conninfo_to_dict(dsn)
    user = quote(str(params.get("user", "postgres")), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    host = str(params.get("host", "localhost"))
    port = params.get("port", 5432)
    dbname = quote(str(params.get("dbname", "postgres")), safe="")
    if host.startswith("/"):  # a Unix socket directory
        return f"postgres://{auth}@:{port}/{dbname}?host={quote(host, safe='')}"
    return f"postgres://{auth}@{host}:{port}/{dbname}"

"""Shared tools for the reliability tests: worker processes, bounded waits, and the audit.

:func:`audit` is the "nothing lost" check every fault, soak and property test ends with: it
reads the database after the fact and lists every broken invariant (a run not terminal, a
message left in the queue or never archived, counters that disagree with the rows, a terminal
state without its event). An empty list means the run history is whole.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from tests.docs.snippets import DOCS, parse

ROOT = Path(__file__).resolve().parents[2]

Conn = psycopg.Connection[Any]
AConn = psycopg.AsyncConnection[Any]


# -- bounded waiting -----------------------------------------------------------------------------


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, within: float, every: float = 0.05, what: str = ""
) -> None:
    """Re-check a database condition until it holds; AssertionError after ``within`` seconds.

    For conditions that have no event of their own (a row count, a process registering).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() >= deadline:
            raise AssertionError(f"not true after {within:g} s: {what or check}")
        await asyncio.sleep(every)


async def scalar(db_url: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(query.encode(), params)
        row = await cur.fetchone()
    return None if row is None else row[0]


async def wait_terminal(db_url: str, run_ids: list[uuid.UUID], *, within: float) -> None:
    """Wait until none of these runs is still ``started``, woken by every broadcast NOTIFY."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("listen realtime_broadcast")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            cur = await conn.execute(
                "select count(*) from pgflow.runs where run_id = any(%s) and status = 'started'",
                (run_ids,),
            )
            row = await cur.fetchone()
            if row is not None and row[0] == 0:
                return
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"{row and row[0]} run(s) still started after {within:g} s")
            # Drain what has arrived, then wait for the next commit (or re-check after a while).
            async for _ in conn.notifies(timeout=min(left, 1.0), stop_after=1):
                pass


async def start_run(db_url: str, flow_slug: str, payload: Any) -> uuid.UUID:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "select run_id from pgflow.start_flow(%s, %s)", (flow_slug, Jsonb(payload))
        )
        row = await cur.fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


async def rows(db_url: str, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of ``query`` as dicts keyed by column name."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(query.encode(), params)
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]


async def tasks_of(db_url: str, run_id: uuid.UUID) -> list[dict[str, Any]]:
    found = await rows(
        db_url,
        "select to_jsonb(t) as t from pgflow.step_tasks t where run_id = %s"
        " order by step_slug, task_index",
        (run_id,),
    )
    return [r["t"] for r in found]


async def run_of(db_url: str, run_id: uuid.UUID) -> dict[str, Any]:
    (found,) = await rows(
        db_url, "select to_jsonb(r) as r from pgflow.runs r where run_id = %s", (run_id,)
    )
    return found["r"]  # type: ignore[no-any-return]


# -- worker processes ----------------------------------------------------------------------------


class WorkerProcess:
    """A ``pgflow worker`` process running one flow of :mod:`tests.reliability.flows`.

    Its log goes to a file (a pipe would fill up and block the worker under load).
    """

    def __init__(
        self, db_url: str, flow: str, log_dir: Path, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.log_path = log_dir / f"worker-{flow}-{uuid.uuid4().hex[:8]}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgflow_worker",
                "worker",
                f"tests.reliability.flows:{flow}",
                "--db",
                db_url,
                "--max-poll-seconds",
                "1",
                "--poll-interval-ms",
                "50",
                *extra,
            ],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "RELIABILITY_DSN": db_url, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> int:
        """SIGKILL: no drain, no cleanup; returns the exit status."""
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=10)

    async def terminate(self, *, within: float = 30.0) -> int:
        """SIGTERM and wait (bounded) for the graceful stop; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, within)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"worker {self.pid} still running {within:g} s after SIGTERM"
            ) from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


@contextmanager
def worker_processes() -> Iterator[list[WorkerProcess]]:
    """Collects started worker processes; any still running at the end is killed."""
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.close()


async def wait_for_workers(db_url: str, flow: str, count: int, *, within: float = 30.0) -> None:
    """Wait until ``count`` live workers of ``flow`` have registered."""

    async def registered() -> bool:
        found = await scalar(
            db_url,
            "select count(*) from pgflow.workers where queue_name = %s and stopped_at is null",
            (flow,),
        )
        return bool(found is not None and found >= count)

    await wait_until(registered, within=within, what=f"{count} worker(s) of {flow} registered")


async def notifications(
    conn: AConn, count: int, *, within: float, predicate: Callable[[str], bool] | None = None
) -> list[str]:
    """The next ``count`` notification payloads on ``conn`` (which must LISTEN already)."""
    got: list[str] = []

    async def collect() -> None:
        async for note in conn.notifies():
            if predicate is None or predicate(note.payload):
                got.append(note.payload)
                if len(got) >= count:
                    return

    try:
        await asyncio.wait_for(collect(), within)
    except TimeoutError:
        raise AssertionError(f"got {len(got)} of {count} notifications: {got}") from None
    return got


# -- roles ---------------------------------------------------------------------------------------


@contextmanager
def temporary_role(db_url: str, prefix: str) -> Iterator[str]:
    """A login role with a unique name (roles are cluster-wide), dropped afterwards with
    everything it owns and every grant it holds."""
    role = f"{prefix}_{uuid.uuid4().hex[:10]}"
    ident = sql.Identifier(role)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} login").format(ident))
    try:
        yield role
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            # Sessions of the role may still be open (a client under test): end them first.
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
                (role,),
            )
            conn.execute(sql.SQL("drop owned by {} cascade").format(ident))
            conn.execute(sql.SQL("drop role {}").format(ident))


def url_as(db_url: str, role: str) -> str:
    """The same database, logged in as ``role`` (the test servers trust local logins)."""
    params = psycopg.conninfo.conninfo_to_dict(db_url)
    params["user"] = role
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **params)


def documented_grants(page: str, grantee: str) -> str:
    """The one SQL block of ``docs/<page>`` that grants privileges to ``grantee``, as written.

    The security tests grant exactly what the documentation tells users to run, so the page
    and the tests cannot drift apart.
    """
    path = DOCS / page
    blocks = [
        b.code
        for b in parse(path).blocks
        if b.language == "sql"
        and re.search(r"^\s*grant\b", b.code, re.IGNORECASE | re.MULTILINE)
        and re.search(rf"\bto\s+{re.escape(grantee)}\b", b.code)
    ]
    if len(blocks) != 1:
        raise AssertionError(
            f"docs/{page} should hold exactly one SQL block of grants to {grantee}, "
            f"found {len(blocks)}"
        )
    return blocks[0]


def grant_documented(db_url: str, role: str, statements: str, grantee: str) -> None:
    """Run documented grant statements with ``role`` in place of the documented grantee."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        quoted = sql.Identifier(role).as_string(conn)
        text = re.sub(rf"\b{re.escape(grantee)}\b", lambda _: quoted, statements)
        assert text != statements, f"{grantee} does not occur in {statements!r}"
        conn.execute(text.encode())


def supabase_client_grants() -> str:
    """docs/supabase.md's grants for the ``authenticated`` role: starting flows, reading runs."""
    return documented_grants("supabase.md", "authenticated")


def postgres_client_grants() -> str:
    """docs/postgres.md's grants for an application role over plain PostgreSQL (``app_client``):
    the same, plus reading the event rows its LISTEN connection is notified of."""
    return documented_grants("postgres.md", "app_client")


def grant_supabase_client(db_url: str, role: str) -> None:
    grant_documented(db_url, role, supabase_client_grants(), "authenticated")


def grant_postgres_client(db_url: str, role: str) -> None:
    grant_documented(db_url, role, postgres_client_grants(), "app_client")


# -- the audit -----------------------------------------------------------------------------------

_AUDIT_QUERIES: dict[str, str] = {
    "run not terminal": """
        select r.run_id::text from pgflow.runs r
         where r.flow_slug = {flow} and r.status = 'started'""",
    "message of a terminal run still in the queue": """
        select q.msg_id::text from {queue} q
          join pgflow.runs r on r.run_id = (q.message ->> 'run_id')::uuid
         where r.status <> 'started'""",
    "queue message without a task": """
        select q.msg_id::text from {queue} q
         where not exists (select 1 from pgflow.step_tasks t
                            where t.flow_slug = {flow} and t.message_id = q.msg_id)""",
    "archived message without a task": """
        select a.msg_id::text from {archive} a
         where not exists (select 1 from pgflow.step_tasks t
                            where t.flow_slug = {flow} and t.message_id = a.msg_id)""",
    "message archived twice": """
        select a.msg_id::text from {archive} a group by a.msg_id having count(*) > 1""",
    "message both queued and archived": """
        select q.msg_id::text from {queue} q join {archive} a using (msg_id)""",
    "task of a terminal run whose message is not archived": """
        select t.run_id || '/' || t.step_slug || '[' || t.task_index || ']'
          from pgflow.step_tasks t join pgflow.runs r using (run_id)
         where t.flow_slug = {flow} and r.status <> 'started'
           and not exists (select 1 from {archive} a where a.msg_id = t.message_id)""",
    "task still queued or started in a terminal run": """
        select t.run_id || '/' || t.step_slug || '[' || t.task_index || '] ' || t.status
          from pgflow.step_tasks t join pgflow.runs r using (run_id)
         where t.flow_slug = {flow} and r.status <> 'started'
           and t.status in ('queued', 'started')""",
    "task of a completed run not completed": """
        select t.run_id || '/' || t.step_slug || '[' || t.task_index || '] ' || t.status
          from pgflow.step_tasks t join pgflow.runs r using (run_id)
         where t.flow_slug = {flow} and r.status = 'completed' and t.status <> 'completed'""",
    "completed run with a step not completed": """
        select s.run_id || '/' || s.step_slug || ' ' || s.status
          from pgflow.step_states s join pgflow.runs r using (run_id)
         where s.flow_slug = {flow} and r.status = 'completed' and s.status <> 'completed'""",
    "failed run without a failed step": """
        select r.run_id::text from pgflow.runs r
         where r.flow_slug = {flow} and r.status = 'failed'
           and not exists (select 1 from pgflow.step_states s
                            where s.run_id = r.run_id and s.status = 'failed')""",
    "remaining_steps disagrees with the unfinished steps": """
        select r.run_id || ' remaining_steps=' || r.remaining_steps || ' unfinished=' || n.c
          from pgflow.runs r
          join lateral (select count(*) filter (where s.status not in ('completed', 'skipped')) as c
                          from pgflow.step_states s where s.run_id = r.run_id) n on true
         where r.flow_slug = {flow} and r.remaining_steps <> n.c""",
    "initial_tasks disagrees with the tasks created": """
        select s.run_id || '/' || s.step_slug || ' initial=' || s.initial_tasks
               || ' tasks=' || n.c
          from pgflow.step_states s
          join lateral (select count(*) as c from pgflow.step_tasks t
                         where t.run_id = s.run_id and t.step_slug = s.step_slug) n on true
         where s.flow_slug = {flow} and s.status in ('started', 'completed', 'failed')
           and s.initial_tasks is not null and s.initial_tasks <> n.c""",
    "remaining_tasks disagrees with the tasks not completed": """
        select s.run_id || '/' || s.step_slug || ' remaining=' || s.remaining_tasks
               || ' not_completed=' || n.c
          from pgflow.step_states s
          join lateral (select count(*) filter (where t.status <> 'completed') as c
                          from pgflow.step_tasks t
                         where t.run_id = s.run_id and t.step_slug = s.step_slug) n on true
         where s.flow_slug = {flow} and s.status in ('started', 'completed')
           and s.remaining_tasks <> n.c""",
    "remaining_deps disagrees with the dependencies not completed": """
        select s.run_id || '/' || s.step_slug || ' remaining_deps=' || s.remaining_deps
               || ' open=' || n.c
          from pgflow.step_states s
          join lateral (select count(*) filter (where p.status not in ('completed', 'skipped')) as c
                          from pgflow.deps d
                          join pgflow.step_states p
                            on p.run_id = s.run_id and p.step_slug = d.dep_slug
                         where d.flow_slug = s.flow_slug and d.step_slug = s.step_slug) n on true
         where s.flow_slug = {flow} and s.remaining_deps <> n.c""",
    "terminal run without exactly one matching terminal event": """
        select r.run_id || ' ' || r.status || ' events=' || coalesce(e.names, '')
          from pgflow.runs r
          left join lateral (
            select string_agg(m.event, ',') as names,
                   count(*) filter (where m.event = 'run:' || r.status) as same,
                   count(*) filter (where m.event in ('run:completed', 'run:failed')) as any_end
              from realtime.messages m where m.topic = 'pgflow:run:' || r.run_id) e on true
         where r.flow_slug = {flow} and r.status <> 'started'
           and not (e.same = 1 and e.any_end = 1)""",
    "terminal step without exactly one matching event": """
        select s.run_id || '/' || s.step_slug || ' ' || s.status || ' events=' || e.c
          from pgflow.step_states s
          join lateral (
            select count(*) as c from realtime.messages m
             where m.topic = 'pgflow:run:' || s.run_id
               and m.event = 'step:' || s.step_slug || ':' || s.status) e on true
         where s.flow_slug = {flow} and s.status in ('completed', 'failed', 'skipped')
           and e.c <> 1""",
}


def audit(conn: Conn, flow: str, *, expect_terminal: bool = True) -> list[str]:
    """Every broken "nothing lost" invariant for one flow's runs, as readable lines."""
    queue = sql.Identifier("pgmq", f"q_{flow.lower()}")
    archive = sql.Identifier("pgmq", f"a_{flow.lower()}")
    problems: list[str] = []
    for name, query in _AUDIT_QUERIES.items():
        if name == "run not terminal" and not expect_terminal:
            continue
        statement = sql.SQL(query).format(flow=sql.Literal(flow), queue=queue, archive=archive)
        found = [r[0] for r in conn.execute(statement).fetchall()]
        problems.extend(f"{name}: {item}" for item in found[:5])
        if len(found) > 5:
            problems.append(f"{name}: ... {len(found) - 5} more")
    return problems


async def audit_async(db_url: str, flow: str, *, expect_terminal: bool = True) -> list[str]:
    def run() -> list[str]:
        with psycopg.connect(db_url, autocommit=True) as conn:
            return audit(conn, flow, expect_terminal=expect_terminal)

    return await asyncio.to_thread(run)

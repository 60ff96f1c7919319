"""The local stack itself: server, pgmq extension, realtime stand-in, migrations."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from pgflow_worker._database import list_migrations, migrate
from tests._stack import Stack
from tests.sql.helpers import define_flow, start_flow


@pytest.fixture
def pgmq_extension(stack: Stack) -> None:
    """Skips the test, saying why, where the server cannot have pgmq as a real extension."""
    if (reason := stack.pgmq_extension_missing()) is not None:
        pytest.skip(reason)


@pytest.mark.usefixtures("pgmq_extension")
def test_pgmq_is_a_real_extension(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("select extversion from pg_extension where extname = 'pgmq'").fetchone()
    assert row is not None, "pgmq should be installed with CREATE EXTENSION"
    conn.execute("select pgmq.create('stack_check')")
    conn.execute("""select pgmq.send('stack_check', '{"a": 1}')""")
    msgs = conn.execute("select message from pgmq.read('stack_check', 10, 5)").fetchall()
    assert [m[0] for m in msgs] == [{"a": 1}]


def test_realtime_send_adds_id_and_notifies(db_url: str) -> None:
    with (
        psycopg.connect(db_url, autocommit=True) as listener,
        psycopg.connect(db_url, autocommit=True) as sender,
    ):
        listener.execute("listen realtime_broadcast")
        with sender.transaction():
            sender.execute("select realtime.send('{\"k\": \"v\"}'::jsonb, 'ev', 'topic:1', false)")
            topic = sender.execute("select current_setting('realtime.topic', true)").fetchone()
            assert topic == ("topic:1",)
        notifies = listener.notifies(timeout=5, stop_after=1)
        got = [json.loads(n.payload) for n in notifies]
        assert len(got) == 1
        assert got[0]["topic"] == "topic:1"
        row = sender.execute(
            "select payload, event, private, extension from realtime.messages where id = %s",
            (got[0]["id"],),
        ).fetchone()
        assert row is not None
        payload, event, private, extension = row
        assert payload["k"] == "v"
        assert payload["id"] == got[0]["id"]
        assert (event, private, extension) == ("ev", False, "broadcast")


def test_realtime_send_never_fails_the_caller(conn: psycopg.Connection[Any]) -> None:
    conn.execute("alter table realtime.messages add constraint no_boom check (event <> 'boom')")
    with conn.transaction():
        conn.execute("select realtime.send('{}'::jsonb, 'boom', 't', false)")
    assert conn.execute("select count(*) from realtime.messages").fetchone() == (0,)


@pytest.mark.usefixtures("pgmq_extension")
def test_migrate_is_a_no_op_when_rerun(db_url: str) -> None:
    report = migrate(db_url)
    assert report.applied == []
    assert report.already_applied == [m.path.name for m in list_migrations()]
    assert report.pgmq == "extension"
    assert report.realtime == "stand-in"


def test_the_stand_in_is_never_installed_over_supabase_realtime(empty_db_url: str) -> None:
    """A realtime.send that is not the stand-in's (here a stand-in for Supabase's, recording
    its calls) makes migrate report 'supabase' and leave the realtime schema alone: no
    realtime.messages, no realtime.topic(), send unchanged; pgflow's events go to that send."""
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(
            "create schema realtime;"
            " create table realtime.calls (event text, topic text, private boolean);"
            " create function realtime.send(payload jsonb, event text, topic text,"
            "   private boolean default true) returns void language sql as"
            " $$ insert into realtime.calls values (event, topic, private) $$;"
        )
        source_before = conn.execute(
            "select prosrc from pg_proc where oid = 'realtime.send(jsonb,text,text,boolean)'"
            "::regprocedure"
        ).fetchone()
        assert source_before is not None
        report = migrate(empty_db_url)
        assert report.realtime == "supabase"
        assert report.applied == [m.path.name for m in list_migrations()]
        row = conn.execute(
            "select to_regclass('realtime.messages'), to_regprocedure('realtime.topic()'),"
            " (select count(*) from pg_trigger t join pg_class c on c.oid = t.tgrelid"
            "   where c.relnamespace = 'realtime'::regnamespace),"
            " (select prosrc from pg_proc"
            "   where oid = 'realtime.send(jsonb,text,text,boolean)'::regprocedure)"
        ).fetchone()
        assert row == (None, None, 0, source_before[0])
        assert migrate(empty_db_url).realtime == "supabase"  # and again on a re-run

        define_flow(conn, "f", [("a", [])])
        run_id = start_flow(conn, "f", {})
        calls = conn.execute("select event, topic, private from realtime.calls").fetchall()
        assert calls == [
            ("run:started", f"pgflow:run:{run_id}", False),
            ("step:a:started", f"pgflow:run:{run_id}", False),
        ]

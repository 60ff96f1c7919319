"""The local stack itself: server, pgmq extension, realtime stand-in, migrations."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from pgflow_worker._database import list_migrations, migrate


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


def test_migrate_is_a_no_op_when_rerun(db_url: str) -> None:
    report = migrate(db_url)
    assert report.applied == []
    assert report.already_applied == [m.path.name for m in list_migrations()]
    assert report.pgmq == "extension"
    assert report.realtime == "stand-in"

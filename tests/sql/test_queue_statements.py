"""Single messages sent and archived through each connection's prepared statements per queue.

pgflow-py's SQL sends a single task's message and archives a finished task's message through a
statement it prepares once per connection and queue, instead of pgmq's functions (which plan
their statement again on every call). These tests hold that path to pgmq's results: the same
rows in the queue and the archive, on pgmq's current tables and on the older ones, after the
connection dropped its statements, after the queue was made again, and with pgmq's own error
when the queue's tables are gone.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.sql.helpers import (
    complete,
    define_flow,
    drain,
    queue_rows,
    raises_sqlstate,
    read_and_start,
    row_counts,
    run_row,
    start_flow,
    start_tasks,
)

Conn = psycopg.Connection[Any]


def _prepared(conn: Conn) -> set[str]:
    rows = conn.execute(
        "select name from pg_prepared_statements where name like 'pgflow\\_%'"
    ).fetchall()
    return {r[0] for r in rows}


def _archive(conn: Conn, flow: str) -> dict[int, dict[str, Any]]:
    rows = conn.execute(
        f"select msg_id, to_jsonb(a) - 'archived_at' from pgmq.a_{flow} as a".encode()
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def _queue(conn: Conn, flow: str) -> dict[int, dict[str, Any]]:
    rows = conn.execute(f"select msg_id, to_jsonb(q) from pgmq.q_{flow} as q".encode()).fetchall()
    return {r[0]: r[1] for r in rows}


def test_a_finished_task_moves_its_message_to_the_archive_unchanged(conn: Conn) -> None:
    define_flow(conn, "chain", [("first", []), ("second", ["first"])])
    run_id = start_flow(conn, "chain", {"n": 1})
    assert _prepared(conn) == {"pgflow_send_chain"}

    [task] = read_and_start(conn, "chain")
    # The row as it stands once read: what the archive must hold, column for column.
    before = _queue(conn, "chain")[task.msg_id]
    assert before["read_ct"] == 1
    complete(conn, task, {"x": 1})

    assert _prepared(conn) == {"pgflow_send_chain", "pgflow_archive_chain"}
    assert _archive(conn, "chain") == {task.msg_id: before}
    [second] = queue_rows(conn, "chain")
    assert second.message == {
        "flow_slug": "chain",
        "run_id": str(run_id),
        "step_slug": "second",
        "task_index": 0,
    }
    assert second.read_ct == 0
    assert second.vt_in <= 0
    assert drain(conn, "chain") == 1
    assert run_row(conn, run_id)["status"] == "completed"
    assert set(_archive(conn, "chain")) == {task.msg_id, second.msg_id}
    assert _queue(conn, "chain") == {}


def test_a_connection_that_dropped_its_statements_prepares_them_again(conn: Conn) -> None:
    define_flow(conn, "chain", [("first", []), ("second", ["first"]), ("third", ["second"])])
    run_id = start_flow(conn, "chain", {})
    [task] = read_and_start(conn, "chain")
    complete(conn, task, None)
    assert _prepared(conn) == {"pgflow_send_chain", "pgflow_archive_chain"}

    # What psycopg does when it clears its own cache, and a pooler's reset.
    conn.execute("deallocate all")
    [task] = read_and_start(conn, "chain")
    complete(conn, task, None)
    conn.execute("discard all")
    assert drain(conn, "chain") == 1

    assert run_row(conn, run_id)["status"] == "completed"
    assert len(_archive(conn, "chain")) == 3
    assert _queue(conn, "chain") == {}


def test_a_queue_made_again_in_the_same_connection_gets_the_messages(conn: Conn) -> None:
    define_flow(conn, "chain", [("first", []), ("second", ["first"])])
    start_flow(conn, "chain", {})
    assert drain(conn, "chain") == 2
    assert _prepared(conn) == {"pgflow_send_chain", "pgflow_archive_chain"}

    conn.execute("select pgflow.delete_flow_and_data('chain')")
    define_flow(conn, "chain", [("first", []), ("second", ["first"])])
    run_id = start_flow(conn, "chain", {})
    assert len(_queue(conn, "chain")) == 1
    assert drain(conn, "chain") == 2
    assert run_row(conn, run_id)["status"] == "completed"
    assert len(_archive(conn, "chain")) == 2


def test_the_longest_queue_name_still_gets_its_statements(conn: Conn) -> None:
    flow = "f" * 47
    define_flow(conn, flow, [("only", [])])
    run_id = start_flow(conn, flow, {})
    assert drain(conn, flow) == 1
    assert run_row(conn, run_id)["status"] == "completed"
    assert _prepared(conn) == {f"pgflow_send_{flow}", f"pgflow_archive_{flow}"}
    assert len(_archive(conn, flow)) == 1


def test_older_pgmq_tables_without_the_read_time(conn: Conn) -> None:
    """Older pgmq releases' tables have no ``last_read_at``: the archive moves the columns the
    queue has. This pgmq's own read needs the column, so the test takes each message off the
    table itself, as that read would."""
    define_flow(conn, "old", [("first", []), ("second", ["first"])])
    for table in ("q_old", "a_old"):
        conn.execute(f"alter table pgmq.{table} drop column last_read_at".encode())
    run_id = start_flow(conn, "old", {})
    for step in ("first", "second"):
        [(msg_id,)] = conn.execute(
            "update pgmq.q_old set read_ct = read_ct + 1 returning msg_id"
        ).fetchall()
        [task] = start_tasks(conn, "old", [msg_id])
        assert task.step_slug == step
        before = _queue(conn, "old")[msg_id]
        assert set(before) == {"msg_id", "read_ct", "enqueued_at", "vt", "message", "headers"}
        complete(conn, task, 1)
        assert _archive(conn, "old")[msg_id] == before
    assert run_row(conn, run_id)["status"] == "completed"
    assert _queue(conn, "old") == {}


def test_a_queue_without_its_table_fails_with_pgmqs_error_and_leaves_nothing(
    conn: Conn,
) -> None:
    define_flow(conn, "gone", [("only", [])])
    conn.execute("drop table pgmq.q_gone")
    before = row_counts(conn)
    with raises_sqlstate("42P01", "q_gone"):
        start_flow(conn, "gone", {})
    assert row_counts(conn) == before
    assert _prepared(conn) == set()


def test_an_archive_without_its_table_fails_with_pgmqs_error(conn: Conn) -> None:
    define_flow(conn, "noarchive", [("only", [])])
    run_id = start_flow(conn, "noarchive", {})
    [task] = read_and_start(conn, "noarchive")
    conn.execute("drop table pgmq.a_noarchive")
    with raises_sqlstate("42P01", "a_noarchive"):
        complete(conn, task, None)
    # Nothing of the completion stayed: the task is still started, its message still queued.
    assert run_row(conn, run_id)["status"] == "started"
    assert set(_queue(conn, "noarchive")) == {task.msg_id}
    assert "pgflow_archive_noarchive" not in _prepared(conn)


@pytest.mark.parametrize("operation", ["delete", ""])
def test_an_unknown_operation_is_refused(conn: Conn, operation: str) -> None:
    define_flow(conn, "f", [("only", [])])
    with raises_sqlstate("22023", "no operation"):
        conn.execute("select pgflow._queue_statement('f', %s)", (operation,))
    assert _prepared(conn) == set()

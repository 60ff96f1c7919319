"""Reading the queue: pgflow.read_with_poll (phase one of a worker's poll) and set_vt_batch
(how start_tasks hides the messages it claimed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.concurrency import connections
from tests.sql.helpers import Conn, is_official, queue_rows, raises_sqlstate

QUEUE = "polled"


@pytest.fixture
def conn(any_db_url: str) -> Iterator[Conn]:
    """A connection to either core, with an empty pgmq queue named ``polled``."""
    with psycopg.connect(any_db_url, autocommit=True) as c:
        c.execute("select pgmq.create(%s)", (QUEUE,))
        yield c


def send(conn: Conn, *payloads: Any) -> list[int]:
    ids = []
    for payload in payloads:
        row = conn.execute("select pgmq.send(%s, %s::jsonb)", (QUEUE, Jsonb(payload))).fetchone()
        assert row is not None
        ids.append(int(row[0]))
    return ids


def timed(conn: Conn, query: str, params: tuple[Any, ...]) -> tuple[list[Any], float]:
    started = time.monotonic()
    rows = conn.execute(query.encode(), params).fetchall()
    return rows, time.monotonic() - started


# -- read_with_poll ---------------------------------------------------------------------------

POLL = "select msg_id, read_ct, message from pgflow.read_with_poll(%s, %s, %s, %s, %s)"


def test_read_with_poll_returns_at_once_when_messages_are_there(db_url: str) -> None:
    """Ours only: @pgflow/core 0.8.1 dropped pgflow.read_with_poll (its workers call pgmq's)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pgmq.create(%s)", (QUEUE,))
        ids = send(conn, {"n": 1}, {"n": 2}, {"n": 3})
        rows, elapsed = timed(conn, POLL, (QUEUE, 30, 2, 5, 100))
        assert elapsed < 2.5, f"read_with_poll waited {elapsed:.2f}s with messages queued"
        assert [(r[0], r[1], r[2]) for r in rows] == [(ids[0], 1, {"n": 1}), (ids[1], 1, {"n": 2})]
        # The two it read are hidden for vt seconds; the third is still visible.
        hidden = {m.msg_id: m.vt_in for m in queue_rows(conn, QUEUE)}
        assert 25 < hidden[ids[0]] <= 30
        assert 25 < hidden[ids[1]] <= 30
        assert hidden[ids[2]] <= 0
        rows, _ = timed(conn, POLL, (QUEUE, 30, 10, 5, 100))
        assert [r[0] for r in rows] == [ids[2]]


def test_read_with_poll_waits_max_poll_seconds_when_empty(db_url: str) -> None:
    """Ours only (see above). An empty queue is polled for max_poll_seconds, then nothing is
    returned."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pgmq.create(%s)", (QUEUE,))
        rows, elapsed = timed(conn, POLL, (QUEUE, 30, 5, 1, 50))
        assert rows == []
        assert 0.8 <= elapsed < 3.0, f"an empty 1 s poll took {elapsed:.2f}s"
        rows, elapsed = timed(conn, POLL, (QUEUE, 30, 5, 2, 200))
        assert rows == []
        assert 1.6 <= elapsed < 4.0, f"an empty 2 s poll took {elapsed:.2f}s"


def test_read_with_poll_returns_when_a_message_arrives(db_url: str) -> None:
    """Ours only (see above). A message sent while the poll sleeps is returned at the next
    poll, long before max_poll_seconds."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pgmq.create(%s)", (QUEUE,))
        with connections(db_url, 2) as (poller, observer):
            pid = poller.info.backend_pid
            result: dict[str, Any] = {}

            def poll() -> None:
                result["rows"], result["elapsed"] = timed(poller, POLL, (QUEUE, 30, 5, 20, 50))

            thread = threading.Thread(target=poll)
            thread.start()
            try:
                wait_until_sleeping(observer, pid)
                (msg_id,) = send(conn, {"late": True})
            finally:
                thread.join(25)
        assert [r[0] for r in result["rows"]] == [msg_id]
        assert result["elapsed"] < 10, f"the poll took {result['elapsed']:.2f}s after a send"


def wait_until_sleeping(observer: Conn, pid: int, timeout: float = 10) -> None:
    """Return once backend ``pid`` is in pg_sleep (polling an empty queue)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = observer.execute(
            "select wait_event from pg_stat_activity where pid = %s", (pid,)
        ).fetchone()
        if row is not None and row[0] == "PgSleep":
            return
        time.sleep(0.01)  # polling PostgreSQL's view of the backend, not guessing a delay
    raise AssertionError(f"backend {pid} never slept in read_with_poll within {timeout} s")


# -- set_vt_batch -----------------------------------------------------------------------------

SET_VT = "select msg_id, vt, message from pgflow.set_vt_batch(%s, %s::bigint[], %s::int[])"


def test_set_vt_batch_sets_each_message_visibility(conn: Conn) -> None:
    """Each listed message is hidden for its own offset, in one call; the others keep theirs,
    and an id with no message is left out of the result."""
    ids = send(conn, "a", "b", "c", "d")
    rows = conn.execute(SET_VT, (QUEUE, [ids[0], ids[2], ids[3], 99_999], [40, 10, 0, 5]))
    returned = {r[0]: r[2] for r in rows}
    assert returned == {ids[0]: "a", ids[2]: "c", ids[3]: "d"}
    vt_in = {m.msg_id: m.vt_in for m in queue_rows(conn, QUEUE)}
    assert 35 < vt_in[ids[0]] <= 40
    assert 5 < vt_in[ids[2]] <= 10
    assert vt_in[ids[3]] <= 0
    assert vt_in[ids[1]] <= 0  # not listed: unchanged (visible since it was sent)
    visible = [r[0] for r in conn.execute("select msg_id from pgmq.read(%s, 30, 10)", (QUEUE,))]
    assert sorted(visible) == [ids[1], ids[3]]


def test_set_vt_batch_rejects_arrays_of_different_lengths(conn: Conn) -> None:
    """Both cores refuse with P0001, in pgflow's words naming both lengths, and change nothing
    (0.8.1 measures {} as NULL, ours as 0)."""
    ids = send(conn, "a", "b")
    before = [(m.msg_id, m.vt) for m in queue_rows(conn, QUEUE)]
    official = is_official(conn)
    cases: list[tuple[list[int], list[int], str, str]] = [
        (ids, [30], "2", "1"),
        ([], [30], "<NULL>" if official else "0", "1"),
        (ids[:1], [30, 30], "1", "2"),
    ]
    for msg_ids, offsets, n_ids, n_offsets in cases:
        needle = f"msg_ids length ({n_ids}) must equal vt_offsets length ({n_offsets})"
        with raises_sqlstate("P0001", needle):
            conn.execute(SET_VT, (QUEUE, msg_ids, offsets))
        assert [(m.msg_id, m.vt) for m in queue_rows(conn, QUEUE)] == before


def test_set_vt_batch_with_empty_arrays_returns_nothing(conn: Conn) -> None:
    send(conn, "a")
    before = [(m.msg_id, m.vt) for m in queue_rows(conn, QUEUE)]
    assert conn.execute(SET_VT, (QUEUE, [], [])).fetchall() == []
    assert [(m.msg_id, m.vt) for m in queue_rows(conn, QUEUE)] == before


def test_set_vt_batch_with_a_null_array_returns_nothing(any_db_url: str) -> None:
    """As pgflow's own tests expect: a NULL array on either side is nothing to do, no error."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        conn.execute("select pgmq.create(%s)", (QUEUE,))
        (msg_id,) = send(conn, "a")
        for msg_ids, offsets in ((None, [30]), ([msg_id], None), (None, None)):
            assert conn.execute(SET_VT, (QUEUE, msg_ids, offsets)).fetchall() == []
        assert [m.vt_in <= 0 for m in queue_rows(conn, QUEUE)] == [True]

"""pgflow 0.17's queue identity and per-step queues: queue names, the step-mode compile path,
start_tasks with a queue and a step, and messages archived in every queue of a run."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from tests.sql.helpers import (
    WORKER_ID,
    Conn,
    Task,
    complete,
    define_flow,
    ensure_worker,
    event_names,
    fail,
    raises_sqlstate,
    row_counts,
    run_row,
    start_flow,
    task_rows,
)
from tests.sql.test_compile_api import ensure, shape, step

#: A flow of three steps: ``fetch`` and ``score`` at the root, ``report`` after both.
SPLIT = shape(step("fetch"), step("score"), step("report", ["fetch", "score"]), maxAttempts=1)


def queues(conn: Conn) -> list[str]:
    return sorted(r[0] for r in conn.execute("select queue_name from pgmq.list_queues()"))


def claim(conn: Conn, flow: str, queue: str, step_slug: str | None, qty: int = 10) -> list[Task]:
    """Read ``queue`` and claim with the five-argument start_tasks."""
    ensure_worker(conn, queue)
    ids = [r[0] for r in conn.execute("select msg_id from pgmq.read(%s, 5, %s)", (queue, qty))]
    rows = conn.execute(
        "select to_jsonb(t) from pgflow.start_tasks(%s, %s::bigint[], %s, %s, %s) t",
        (flow, ids, WORKER_ID, queue, step_slug),
    ).fetchall()
    return [
        Task(
            r["flow_slug"],
            uuid.UUID(r["run_id"]),
            r["step_slug"],
            r["input"],
            r["msg_id"],
            r["task_index"],
            r.get("flow_input"),
        )
        for (r,) in rows
    ]


def in_queue(conn: Conn, queue: str) -> list[dict[str, Any]]:
    return [
        r[0] for r in conn.execute(f"select message from pgmq.q_{queue} order by msg_id".encode())
    ]


# -- queue names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flow", "step_slug", "index", "queue"),
    [
        ("Orders", "FetchAll", 0, "orders__fetchall"),
        ("f" * 40, "step_" + "x" * 10, 3, "f" * 40 + "__3"),
        ("f" * 20, "s" * 25, 12, "f" * 20 + "__" + "s" * 25),
    ],
    ids=["readable", "by-index", "exactly-47"],
)
def test_step_queue_names_follow_pgflow(
    conn: Conn, flow: str, step_slug: str, index: int, queue: str
) -> None:
    row = conn.execute(
        "select pgflow._resolve_step_queue_name(%s, %s, %s)", (flow, step_slug, index)
    ).fetchone()
    assert row == (queue,)


def test_a_flow_slug_too_long_for_step_queues_is_refused(conn: Conn) -> None:
    with raises_sqlstate("22023", "cannot use per-step queues", "47"):
        conn.execute("select pgflow._resolve_step_queue_name(%s, 'a', 0)", ("f" * 45,))
    with raises_sqlstate("22023", "no queue name of at most 47"):
        conn.execute("select pgflow._resolve_step_queue_name(%s, %s, 1000)", ("f" * 43, "s" * 10))


def test_queue_names_are_lowercase_and_fit_pgmq(conn: Conn) -> None:
    checks = {"orders": True, "Orders": False, "": False, "q" * 47: True, "q" * 48: False}
    for name, valid in checks.items():
        row = conn.execute("select pgflow.is_valid_queue_name(%s)", (name,)).fetchone()
        assert row == (valid,), name


def test_the_default_queue_is_the_lowercase_slug(conn: Conn) -> None:
    define_flow(conn, "MixedCase", [("a", [])])
    assert "mixedcase" in queues(conn)
    run_id = start_flow(conn, "MixedCase", {})
    (task,) = task_rows(conn, run_id)
    assert task["queue_name"] == "mixedcase"
    assert conn.execute(
        "select queue_name from pgflow.steps where flow_slug = 'MixedCase'"
    ).fetchall() == [("mixedcase",)]


def test_create_flow_refuses_a_queue_no_flow_owns(conn: Conn) -> None:
    conn.execute("select pgmq.create('orphan')")
    before = row_counts(conn)
    with raises_sqlstate("23505", "'orphan'", "no flow owns it"):
        conn.execute("select pgflow.create_flow('orphan')")
    assert row_counts(conn) == before


# -- step mode ------------------------------------------------------------------------------------


def routes(flow: str, *slugs: str) -> list[dict[str, str]]:
    return [{"stepSlug": s, "queueName": f"{flow}__{s.lower()}"} for s in slugs]


def test_step_mode_gives_each_step_its_queue_and_the_flow_none(conn: Conn) -> None:
    result = ensure(
        conn, "split", SPLIT, "step", Jsonb(routes("split", "fetch", "score", "report"))
    )
    assert result == {"status": "compiled", "differences": [], "mismatchKind": None}
    assert queues(conn) == ["split__fetch", "split__report", "split__score"]
    assert conn.execute("select queue_mode from pgflow.flows").fetchall() == [("step",)]
    assert ensure(conn, "split", SPLIT, "step")["status"] == "verified"

    with raises_sqlstate("0A000", "'split'", "cannot be added one by one"):
        conn.execute("select pgflow.add_step('split', 'more')")


def test_a_route_map_must_be_the_derived_one(conn: Conn) -> None:
    before = row_counts(conn)
    wrong = routes("split", "fetch", "score", "report")
    wrong[1]["queueName"] = "split__other"
    with raises_sqlstate("22023", "route map", "split__other"):
        ensure(conn, "split", SPLIT, "step", Jsonb(wrong))
    with raises_sqlstate("22023", "queue mode 'fifo'"):
        ensure(conn, "split", SPLIT, "fifo")
    with raises_sqlstate("23505", "'Fetch'", "'fetch'", "only in case"):
        ensure(conn, "split", shape(step("Fetch"), step("fetch")), "step")
    assert row_counts(conn) == before


def test_a_changed_queue_mode_is_a_routing_mismatch(conn: Conn) -> None:
    ensure(conn, "split", SPLIT)
    result = ensure(conn, "split", SPLIT, "step")
    assert result["status"] == "mismatch"
    assert result["mismatchKind"] == "routing"
    assert result["differences"] == [
        "Queue mode differs: database has 'flow', worker expects 'step'",
        "Step routes differ: database has [fetch -> split, score -> split, report -> split],"
        " worker expects [fetch -> split__fetch, score -> split__score, report -> split__report]",
    ]
    assert queues(conn) == ["split"]


def test_a_run_goes_through_every_step_queue(conn: Conn) -> None:
    ensure(conn, "split", SPLIT, "step")
    run_id = start_flow(conn, "split", {"n": 2})
    assert [m["step_slug"] for m in in_queue(conn, "split__fetch")] == ["fetch"]
    assert in_queue(conn, "split__score") == [
        {"flow_slug": "split", "run_id": str(run_id), "step_slug": "score", "task_index": 0}
    ]
    assert {t["step_slug"]: t["queue_name"] for t in task_rows(conn, run_id)} == {
        "fetch": "split__fetch",
        "score": "split__score",
    }

    # A worker of one step takes only its step's messages, from its queue only.
    (fetch,) = claim(conn, "split", "split__fetch", "fetch")
    assert claim(conn, "split", "split__fetch", "fetch") == []
    (score,) = claim(conn, "split", "split__score", "score")
    complete(conn, fetch, "f")
    complete(conn, score, "s")
    assert in_queue(conn, "split__report") != []
    (report,) = claim(conn, "split", "split__report", "report")
    assert report.input == {"fetch": "f", "score": "s"}
    complete(conn, report, "done")

    assert run_row(conn, run_id)["output"] == {"report": "done"}
    assert event_names(conn, run_id)[-1] == "run:completed"
    for queue in ("split__fetch", "split__score", "split__report"):
        assert in_queue(conn, queue) == []


def test_start_tasks_checks_the_step_and_its_queue(conn: Conn) -> None:
    ensure(conn, "split", SPLIT, "step")
    define_flow(conn, "plain", [("a", [])])
    start_flow(conn, "split", {})
    ensure_worker(conn, "split__fetch")

    def call(flow: str, queue: str, step_slug: str | None) -> Any:
        return conn.execute(
            "select * from pgflow.start_tasks(%s, '{1}', %s, %s, %s)",
            (flow, WORKER_ID, queue, step_slug),
        ).fetchall()

    with raises_sqlstate("22023", "'split'", "queue per step", "step_slug"):
        call("split", "split__fetch", None)
    with raises_sqlstate("22023", "step 'score'", "does not use the queue 'split__fetch'"):
        call("split", "split__fetch", "score")
    with raises_sqlstate("22023", "'plain'", "cannot be given"):
        call("plain", "plain", "a")
    with raises_sqlstate("22023", "queue per step"):
        conn.execute("select * from pgflow.start_tasks('split', '{1}', %s)", (WORKER_ID,))
    assert call("nothing", "nothing", None) == []


def test_a_failed_run_archives_messages_in_every_queue(conn: Conn) -> None:
    ensure(conn, "split", SPLIT, "step")
    run_id = start_flow(conn, "split", {})
    (fetch,) = claim(conn, "split", "split__fetch", "fetch")
    fail(conn, fetch, "broken")
    assert run_row(conn, run_id)["status"] == "failed"
    assert [t["status"] for t in task_rows(conn, run_id)] == ["failed", "cancelled"]
    assert in_queue(conn, "split__fetch") == []
    assert in_queue(conn, "split__score") == []


def test_force_skip_archives_messages_in_every_queue(conn: Conn) -> None:
    ensure(conn, "split", SPLIT, "step")
    run_id = start_flow(conn, "split", {})
    conn.execute(
        "select pgflow._cascade_force_skip_steps(%s, 'fetch', 'condition_unmet')", (run_id,)
    )
    conn.execute(
        "select pgflow._cascade_force_skip_steps(%s, 'score', 'condition_unmet')", (run_id,)
    )
    assert in_queue(conn, "split__fetch") == []
    assert in_queue(conn, "split__score") == []
    assert {t["status"] for t in task_rows(conn, run_id)} == {"skipped"}


def test_delete_flow_and_data_drops_every_step_queue(conn: Conn) -> None:
    ensure(conn, "split", SPLIT, "step")
    define_flow(conn, "plain", [("a", [])])
    start_flow(conn, "split", {})
    conn.execute("select pgflow.delete_flow_and_data('split')")
    assert queues(conn) == ["plain"]
    assert ensure(conn, "split", SPLIT, "step")["status"] == "compiled"


def test_a_step_queue_dropped_outside_pgflow_fails_verification(conn: Conn) -> None:
    ensure(conn, "split", SPLIT, "step")
    conn.execute("select pgmq.drop_queue('split__score')")
    with raises_sqlstate("42P01", "'split__score'", "missing from pgmq"):
        ensure(conn, "split", SPLIT, "step")


def test_an_unowned_step_queue_is_refused_before_anything_is_created(conn: Conn) -> None:
    conn.execute("select pgmq.create('split__report')")
    before = row_counts(conn)
    with raises_sqlstate("23505", "'split__report'", "no flow owns it"):
        ensure(conn, "split", SPLIT, "step")
    assert row_counts(conn) == before


def test_the_three_argument_start_tasks_claims_from_the_default_queue(conn: Conn) -> None:
    define_flow(conn, "Legacy", [("a", [])])
    run_id = start_flow(conn, "Legacy", {"x": 1})
    ensure_worker(conn, "legacy")
    ids = [r[0] for r in conn.execute("select msg_id from pgmq.read('legacy', 5, 10)")]
    rows = conn.execute(
        "select step_slug from pgflow.start_tasks('Legacy', %s::bigint[], %s)", (ids, WORKER_ID)
    ).fetchall()
    assert rows == [("a",)]
    assert task_rows(conn, run_id)[0]["status"] == "started"


def test_cancel_and_retry_a_run_with_a_queue_per_step(conn: Conn) -> None:
    """cancel_run archives the run's messages in each step's queue; retry_run starts the new
    run's root steps in their own queues again."""
    ensure(conn, "split", SPLIT, "step")
    run_id = start_flow(conn, "split", {"n": 1})
    (fetch,) = claim(conn, "split", "split__fetch", "fetch")
    conn.execute("select pgflow.cancel_run(%s, 'stop')", (run_id,))
    assert {t["status"] for t in task_rows(conn, run_id)} == {"cancelled"}
    assert in_queue(conn, "split__fetch") == []
    assert in_queue(conn, "split__score") == []
    complete(conn, fetch, "late")
    assert run_row(conn, run_id)["status"] == "failed"

    row = conn.execute("select run_id from pgflow.retry_run(%s)", (run_id,)).fetchone()
    assert row is not None
    retried = row[0]
    assert [m["run_id"] for m in in_queue(conn, "split__fetch")] == [str(retried)]
    assert [m["run_id"] for m in in_queue(conn, "split__score")] == [str(retried)]
    (again,) = claim(conn, "split", "split__fetch", "fetch")
    assert again.run_id == retried
    assert again.flow_input == {"n": 1}

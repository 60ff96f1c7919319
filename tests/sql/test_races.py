"""Race scenarios with several real connections: a run failing while other workers hold its
tasks, orphaned messages, completions racing the archival, many workers on one map, and a run
or a step ending its tasks while workers claim them (the lock order of `_cancel_run_tasks`
and `_skip_step`).

Every scenario runs on ours and on the official 0.8.1 SQL, unless its docstring says why not.

Scenarios 2–7 follow pgflow's race-condition test plan for type violations. Where the plan
assumes a map task's output can violate a map child's expectation, these tests use a single
step instead: in pgflow a map child of a map takes its task count from the parent, so only a
single step's output is type-checked.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import psycopg
import pytest

from tests.sql.concurrency import connections, together, wait_until_blocked, worker_ids
from tests.sql.helpers import (
    Task,
    archived_ids,
    complete,
    define_flow,
    event_names,
    events,
    fail,
    is_official,
    make_all_visible,
    queue_rows,
    read_and_start,
    read_ids,
    run_row,
    start_flow,
    start_tasks,
    step_states,
    task_row,
    task_rows,
)

Conn = psycopg.Connection[Any]


def message_ids(conn: Conn, run_id: uuid.UUID) -> dict[tuple[str, int], int]:
    return {(r["step_slug"], r["task_index"]): r["message_id"] for r in task_rows(conn, run_id)}


def claim(
    conn: Conn, ids: dict[tuple[str, int], int], key: tuple[str, int], worker: uuid.UUID
) -> Task:
    (task,) = start_tasks(conn, "f", [ids[key]], worker)
    return task


def assert_run_failed_cleanly(conn: Conn, run_id: uuid.UUID, flow: str = "f") -> None:
    """The run failed once, nothing of it is left in the queue, every message of it was
    archived, and (ours) no task of it still looks queued or started."""
    assert run_row(conn, run_id)["status"] == "failed"
    names = event_names(conn, run_id)
    assert names.count("run:failed") == 1
    assert "run:completed" not in names
    rows = task_rows(conn, run_id)
    assert all(m.message["run_id"] != str(run_id) for m in queue_rows(conn, flow))
    assert {r["message_id"] for r in rows} <= archived_ids(conn, flow)
    if not is_official(conn):
        assert [r for r in rows if r["status"] in ("queued", "started")] == []
    # Forcing every message visible brings nothing back.
    make_all_visible(conn, flow)
    assert read_ids(conn, flow, qty=1000) == []


# -- scenario 2 -------------------------------------------------------------------------------


def test_type_violation_while_other_workers_hold_started_tasks(any_db_url: str) -> None:
    """producer → consumer (map), p1, p2; p1 → p1_map (map). Workers hold consumer[0],
    consumer[1], p1 and p2; p1's non-array output races the others' completions."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(
            conn,
            "f",
            [
                ("producer", []),
                ("consumer", ["producer"], "map"),
                ("p1", ["producer"]),
                ("p2", ["producer"]),
                ("p1_map", ["p1"], "map"),
            ],
        )
        run_id = start_flow(conn, "f", {})
        (producer,) = read_and_start(conn, "f")
        complete(conn, producer, [1, 2, 3])
        ids = message_ids(conn, run_id)
        with connections(any_db_url, 4) as (a, b, c, d):
            wa, wb, wc, wd = worker_ids(4)
            ta = claim(a, ids, ("consumer", 0), wa)
            tb = claim(b, ids, ("consumer", 1), wb)
            tc = claim(c, ids, ("p1", 0), wc)
            td = claim(d, ids, ("p2", 0), wd)
            together(
                [
                    lambda: complete(c, tc, {"not": "an array"}),
                    lambda: complete(a, ta, "a"),
                    lambda: complete(b, tb, "b"),
                    lambda: complete(d, td, "d"),
                ]
            )
        assert_run_failed_cleanly(conn, run_id)
        states = step_states(conn, run_id)
        assert states["p1"]["status"] == "failed"
        assert states["p1"]["error_message"].startswith("[TYPE_VIOLATION] Map step p1_map")
        assert states["p1_map"]["status"] == "created"
        assert states["consumer"]["status"] == "started"  # consumer[2] never ran
        assert event_names(conn, run_id).count("step:p1:failed") == 1
        expected: dict[str, Any] = {"producer": [1, 2, 3], "consumer": ["a", "b"], "p2": "d"}
        for row in task_rows(conn, run_id):
            if row["status"] == "completed":
                want = expected[row["step_slug"]]
                assert row["output"] == (
                    want[row["task_index"]] if row["step_slug"] == "consumer" else want
                )


# -- scenario 3 -------------------------------------------------------------------------------


def test_type_violation_with_mixed_queued_and_started_steps(any_db_url: str) -> None:
    """step1 → step2 → map_step; step1 → step4 → step5; step1 → step6. step2 and step4 are
    started, step6 is queued; step2's violation races step4's completion (which may queue
    step5 first). Every message ends archived, whatever the order."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(
            conn,
            "f",
            [
                ("step1", []),
                ("step2", ["step1"]),
                ("map_step", ["step2"], "map"),
                ("step4", ["step1"]),
                ("step5", ["step4"]),
                ("step6", ["step1"]),
            ],
        )
        run_id = start_flow(conn, "f", {})
        (step1,) = read_and_start(conn, "f")
        complete(conn, step1, {"ok": True})
        ids = message_ids(conn, run_id)
        with connections(any_db_url, 2) as (a, b):
            wa, wb = worker_ids(2)
            t2 = claim(a, ids, ("step2", 0), wa)
            t4 = claim(b, ids, ("step4", 0), wb)
            together([lambda: complete(a, t2, "oops"), lambda: complete(b, t4, {"four": 4})])
        assert_run_failed_cleanly(conn, run_id)
        statuses = {r["step_slug"]: r["status"] for r in task_rows(conn, run_id)}
        assert statuses["step2"] == "failed"
        if is_official(conn):
            assert statuses["step4"] in {"completed", "failed"}
            # 0.8.1 archives the messages of a failed run but leaves its tasks as they were.
            assert statuses["step6"] == "queued"
            assert statuses.get("step5", "queued") == "queued"
        else:
            # Completed when its result came first, cancelled when the violation did.
            assert statuses["step4"] in {"completed", "cancelled"}
            assert statuses["step6"] == "cancelled"
            assert statuses.get("step5", "cancelled") == "cancelled"


# -- scenario 4 -------------------------------------------------------------------------------


def test_hundred_task_map_fails_with_ten_started(any_db_url: str) -> None:
    """A 100-task map with 10 tasks started (by 5 workers) and 90 queued when a sibling's
    type violation fails the run while the started tasks complete at the same moment: all 100
    messages are archived (on both cores)."""
    hundred_task_map_fails(any_db_url, "type_violation")


def test_hundred_task_map_fails_when_a_map_task_runs_out_of_attempts(db_url: str) -> None:
    """The same, failed by one of the started map tasks out of attempts. Ours only: 0.8.1's
    fail_task takes its run and step locks in CTEs nothing reads (so PostgreSQL never runs
    them) and locks the run after the tasks, which deadlocks against concurrent completions."""
    hundred_task_map_fails(db_url, "exhausted")


def hundred_task_map_fails(url: str, how: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        define_flow(
            conn,
            "f",
            [("big", [], "map"), ("check", []), ("check_map", ["check"], "map")],
            max_attempts=1,
        )
        run_id = start_flow(conn, "f", list(range(100)))
        ids = message_ids(conn, run_id)
        with connections(url, 6) as conns:
            workers = worker_ids(6)
            held = [
                start_tasks(conns[i], "f", [ids["big", 2 * i], ids["big", 2 * i + 1]], workers[i])
                for i in range(5)
            ]
            check = claim(conns[5], ids, ("check", 0), workers[5])

            def finisher(i: int) -> Any:
                def run() -> None:
                    for task in held[i]:
                        if how == "exhausted" and task.task_index == 0:
                            fail(conns[i], task, "map task gave up")
                        else:
                            complete(conns[i], task, task.input * 2)

                return run

            calls = [finisher(i) for i in range(5)]
            if how == "type_violation":
                calls.append(lambda: complete(conns[5], check, "not an array"))
            together(calls)
        assert len([k for k in ids if k[0] == "big"]) == 100
        assert run_row(conn, run_id)["status"] == "failed"
        queued_or_started = [
            r for r in task_rows(conn, run_id, "big") if r["status"] in ("queued", "started")
        ]
        if is_official(conn):
            assert len(queued_or_started) >= 90  # 0.8.1 leaves them; their messages are gone
        assert_run_failed_cleanly(conn, run_id)
        assert {ids["big", i] for i in range(100)} <= archived_ids(conn, "f")


# -- scenario 5 -------------------------------------------------------------------------------


def test_no_orphan_message_comes_back_after_the_visibility_timeout(any_db_url: str) -> None:
    """step1 → step2 → map_step. After step2's violation, even forcing every message's vt
    to now (directly in the queue table, and through pgmq.set_vt) resurrects nothing."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(
            conn,
            "f",
            [
                ("step1", []),
                ("step2", ["step1"]),
                ("side", ["step1"]),
                ("map_step", ["step2"], "map"),
            ],
        )
        run_id = start_flow(conn, "f", {})
        (step1,) = read_and_start(conn, "f")
        complete(conn, step1, 1)
        ids = message_ids(conn, run_id)
        with connections(any_db_url, 2) as (a, b):
            wa, wb = worker_ids(2)
            step2 = claim(a, ids, ("step2", 0), wa)
            side = claim(b, ids, ("side", 0), wb)
            complete(a, step2, {"oops": 1})
            for msg_id in ids.values():
                rows = b.execute("select * from pgmq.set_vt('f', %s, 0)", (msg_id,)).fetchall()
                assert rows == []
            assert make_all_visible(b, "f") == 0
            assert read_ids(b, "f", qty=100, vt=30) == []
            assert start_tasks(b, "f", list(ids.values()), wb) == []
            complete(b, side, "late")  # the worker that still held a task finishes late
        assert_run_failed_cleanly(conn, run_id)


# -- scenario 6 -------------------------------------------------------------------------------


def test_violation_in_a_flow_with_a_map_chain_in_flight(any_db_url: str) -> None:
    """map1 → map2 → map3 over 6 elements, beside cfg → cfg_map. With map1 tasks completed,
    started (racing) and queued, cfg's non-array output fails the run: map2 and map3 never
    start and every map1 message is archived."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(
            conn,
            "f",
            [
                ("map1", [], "map"),
                ("map2", ["map1"], "map"),
                ("map3", ["map2"], "map"),
                ("cfg", []),
                ("cfg_map", ["cfg"], "map"),
            ],
        )
        run_id = start_flow(conn, "f", [1, 2, 3, 4, 5, 6])
        ids = message_ids(conn, run_id)
        with connections(any_db_url, 3) as (a, b, c):
            wa, wb, wc = worker_ids(3)
            for index in (0, 1):
                complete(a, claim(a, ids, ("map1", index), wa), index)
            racing = [claim(b, ids, ("map1", 2), wb), claim(c, ids, ("map1", 3), wc)]
            cfg = claim(a, ids, ("cfg", 0), wa)
            together(
                [
                    lambda: complete(a, cfg, {"not": "array"}),
                    lambda: complete(b, racing[0], 2),
                    lambda: complete(c, racing[1], 3),
                ]
            )
        assert_run_failed_cleanly(conn, run_id)
        states = step_states(conn, run_id)
        assert (states["map2"]["status"], states["map3"]["status"]) == ("created", "created")
        assert task_rows(conn, run_id, "map2") == []
        assert {ids["map1", i] for i in range(6)} <= archived_ids(conn, "f")
        assert "step:map2:started" not in event_names(conn, run_id)


# -- scenario 7 -------------------------------------------------------------------------------


@pytest.mark.parametrize("late_call", ["complete", "fail"])
def test_completion_waiting_behind_the_archival_is_a_no_op(db_url: str, late_call: str) -> None:
    """Worker A's violation holds the run while it archives; worker B's complete_task (or
    fail_task) on its own task queues behind it and, once A commits, changes nothing: no
    event, no error, the task stays `cancelled` as A's failure left it, as in pgflow 0.15.1.

    Ours only, a deliberate difference: 0.8.1 records the late result on the failed run (the
    task becomes completed and ``step:step2:completed`` is broadcast after ``run:failed``), and
    a late failure queues the task for a retry and broadcasts a second ``run:failed``."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("step1", []), ("step2", []), ("map_step", ["step1"], "map")])
        run_id = start_flow(conn, "f", {})
        ids = message_ids(conn, run_id)
        with connections(db_url, 3) as (a, b, observer):
            wa, wb = worker_ids(2)
            t1 = claim(a, ids, ("step1", 0), wa)
            t2 = claim(b, ids, ("step2", 0), wb)
            b_pid = b.info.backend_pid
            result: dict[str, Any] = {}
            b_done = threading.Event()

            def worker_b() -> None:
                try:
                    call = complete if late_call == "complete" else fail
                    result["rows"] = call(b, t2, "B's result")
                except BaseException as exc:  # reported below
                    result["error"] = exc
                finally:
                    b_done.set()

            with a.transaction():
                complete(a, t1, "not an array")
                thread = threading.Thread(target=worker_b)
                thread.start()
                wait_until_blocked(observer, b_pid)
                assert not b_done.is_set()
                names_at_commit = event_names(a, run_id)
            assert b_done.wait(10)
            thread.join(10)
        assert "error" not in result, result.get("error")
        row = task_row(conn, t2)
        assert result["rows"] == [row]
        assert row["status"] == "cancelled"
        assert row["error_message"] is None
        assert row["output"] is None
        assert event_names(conn, run_id) == names_at_commit
        assert_run_failed_cleanly(conn, run_id)


def test_archival_waiting_behind_a_completion(any_db_url: str) -> None:
    """The other order: B's completion holds the run, A's violation waits, then fails the run
    and ends whatever B's completion started."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(
            conn,
            "f",
            [("step1", []), ("step2", []), ("after2", ["step2"]), ("m", ["step1"], "map")],
        )
        run_id = start_flow(conn, "f", {})
        ids = message_ids(conn, run_id)
        with connections(any_db_url, 3) as (a, b, observer):
            wa, wb = worker_ids(2)
            t1 = claim(a, ids, ("step1", 0), wa)
            t2 = claim(b, ids, ("step2", 0), wb)
            a_done = threading.Event()
            errors: list[BaseException] = []

            def worker_a() -> None:
                try:
                    complete(a, t1, 42)
                except BaseException as exc:
                    errors.append(exc)
                finally:
                    a_done.set()

            with b.transaction():
                complete(b, t2, "two")
                thread = threading.Thread(target=worker_a)
                thread.start()
                wait_until_blocked(observer, a.info.backend_pid)
            assert a_done.wait(10)
            thread.join(10)
        assert errors == []
        assert task_row(conn, t2)["status"] == "completed"
        (after2,) = task_rows(conn, run_id, "after2")
        # Queued by B; ours cancels it with the run, 0.8.1 only archives its message.
        assert after2["status"] == ("queued" if is_official(conn) else "cancelled")
        assert_run_failed_cleanly(conn, run_id)
        names = event_names(conn, run_id)
        assert names.index("step:step2:completed") < names.index("run:failed")


# -- many workers, one map --------------------------------------------------------------------


def test_many_workers_complete_one_big_map(any_db_url: str) -> None:
    """Eight workers poll and complete a 200-task map at once, on both cores: no deadlock, every
    task done once, one step:completed, the output complete and in task order."""
    size, n_workers = 200, 8
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(conn, "f", [("m", [], "map"), ("total", ["m"])])
        run_id = start_flow(conn, "f", list(range(size)))
        with connections(any_db_url, n_workers) as conns:
            workers = worker_ids(n_workers)

            total_inputs: list[Any] = []

            def work(i: int) -> Any:
                def run() -> int:
                    done = 0
                    while True:
                        ids = read_ids(conns[i], "f", qty=7, vt=60)
                        if not ids:
                            return done
                        for task in start_tasks(conns[i], "f", ids, workers[i]):
                            if task.step_slug == "total":
                                total_inputs.append(task.deps)
                                complete(conns[i], task, len(task.deps["m"]))
                            else:
                                complete(conns[i], task, {"square": task.input**2})
                                done += 1

                return run

            counts = together([work(i) for i in range(n_workers)], timeout=60)
            if not total_inputs:  # m completed after every other worker had stopped polling
                (total,) = read_and_start(conn, "f")
                total_inputs.append(total.deps)
                complete(conn, total, len(total.deps["m"]))
        assert sum(counts) == size
        expected = [{"square": i * i} for i in range(size)]
        state = step_states(conn, run_id)["m"]
        assert (state["status"], state["remaining_tasks"]) == ("completed", 0)
        if not is_official(conn):  # 0.8.1 keeps a map's output only in its tasks and events
            assert state["output"] == expected
        assert total_inputs == [{"m": expected}]
        assert run_row(conn, run_id)["output"] == {"total": size}
        names = event_names(conn, run_id)
        assert names.count("step:m:completed") == 1
        assert names.count("step:total:started") == 1
        assert names.index("step:m:completed") < names.index("step:total:started")
        rows = task_rows(conn, run_id, "m")
        assert all(r["status"] == "completed" and r["attempts_count"] == 1 for r in rows)
        completed = [p for e, p in events(conn, run_id) if e == "step:m:completed"]
        assert completed[0]["output"] == expected


def test_two_workers_start_the_same_messages(any_db_url: str) -> None:
    """Both call start_tasks with the same 60 message ids at once, five times over: with ours
    every task is handed to exactly one of them, once. The official SQL returns the rows of its
    pre-update snapshot rather than of its UPDATE, so when the calls overlap a task can be
    handed to both workers (its row is still started only once)."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        official = is_official(conn)
        define_flow(conn, "f", [("m", [], "map")])
        with connections(any_db_url, 2) as (a, b):
            wa, wb = worker_ids(2)
            for _ in range(5):
                run_id = start_flow(conn, "f", list(range(60)))
                ids = sorted(message_ids(conn, run_id).values())
                got_a, got_b = together(
                    [
                        lambda ids=ids: start_tasks(a, "f", ids, wa),  # type: ignore[misc]
                        lambda ids=ids: start_tasks(b, "f", ids, wb),  # type: ignore[misc]
                    ]
                )
                claimed_a = {t.task_index for t in got_a}
                claimed_b = {t.task_index for t in got_b}
                assert claimed_a | claimed_b == set(range(60))
                rows = task_rows(conn, run_id)
                assert all(r["attempts_count"] == 1 and r["status"] == "started" for r in rows)
                if official:
                    continue
                assert claimed_a.isdisjoint(claimed_b)
                assert len(got_a) + len(got_b) == 60
                owner = {r["task_index"]: r["last_worker_id"] for r in rows}
                assert all(owner[i] == str(wa) for i in claimed_a)
                assert all(owner[i] == str(wb) for i in claimed_b)


# -- ending a run's or a step's tasks while workers claim them --------------------------------

RACE_ROUNDS = 20
RACE_MAP_SIZE = 40


def race_flow(conn: Conn, *, skip_on_exhaustion: bool = False) -> None:
    """Root maps ``zeta`` and ``alpha`` (their slugs sort against their step order, so a scan by
    slug and one by message id disagree) beside ``boom`` → ``boom_map``; two attempts, no
    backoff, one attempt for ``boom``."""
    conn.execute("select pgflow.create_flow('f', max_attempts => 2, base_delay => 0)")
    zeta_options = ", when_exhausted => 'skip'" if skip_on_exhaustion else ""
    conn.execute(f"select pgflow.add_step('f', 'zeta', step_type => 'map'{zeta_options})".encode())
    conn.execute("select pgflow.add_step('f', 'alpha', step_type => 'map')")
    conn.execute("select pgflow.add_step('f', 'boom', max_attempts => 1)")
    conn.execute("select pgflow.add_step('f', 'boom_map', array['boom'], step_type => 'map')")


def scatter(conn: Conn, ids: dict[tuple[str, int], int], worker: uuid.UUID) -> None:
    """Fail zeta[1..10] once (back to the queue, visible at once): their rows get new versions
    elsewhere in the table, so its physical order is no longer the order of the message ids."""
    for task in start_tasks(conn, "f", [ids["zeta", i] for i in range(1, 11)], worker):
        assert fail(conn, task, "once more")[0]["status"] == "queued"


def claim_while_ending(
    url: str,
    scan: str,
    victim_of: Callable[[Conn, dict[tuple[str, int], int], uuid.UUID], Task],
    finish: Callable[[Conn, Task], object],
) -> list[tuple[uuid.UUID, list[list[Task]]]]:
    """RACE_ROUNDS times: a new run; three workers read every visible message of it, then claim
    their batches with start_tasks at the moment ``finish`` (on a fourth connection) fails or
    completes the victim task, which ends tasks of the run. A deadlock raises here. Returns
    each run with the tasks every worker was handed."""
    results = []
    with psycopg.connect(url, autocommit=True) as conn, connections(url, 4) as conns:
        if scan == "seqscan":
            conns[0].execute("set enable_indexscan = off")
            conns[0].execute("set enable_bitmapscan = off")
        workers = worker_ids(4)
        for _ in range(RACE_ROUNDS):
            run_id = start_flow(conn, "f", list(range(RACE_MAP_SIZE)))
            ids = message_ids(conn, run_id)
            scatter(conn, ids, workers[0])
            victim = victim_of(conn, ids, workers[0])
            queued = {r["message_id"] for r in task_rows(conn, run_id) if r["status"] == "queued"}
            visible = {m.msg_id for m in queue_rows(conn, "f") if m.vt_in <= 0}
            assert queued <= visible  # 0.8.1 also leaves the messages of started tasks visible
            batches = [read_ids(conns[i], "f", qty=30, vt=30) for i in (1, 2, 3)]
            assert sorted(m for batch in batches for m in batch) == sorted(visible)
            calls: list[Callable[[], object]] = [partial(finish, conns[0], victim)]
            calls += [
                partial(start_tasks, conns[i], "f", batches[i - 1], workers[i]) for i in (1, 2, 3)
            ]
            handed = cast(list[list[Task]], together(calls)[1:])
            results.append((run_id, handed))
    return results


def claim_boom(conn: Conn, ids: dict[tuple[str, int], int], worker: uuid.UUID) -> Task:
    return claim(conn, ids, ("boom", 0), worker)


def assert_handed_once(conn: Conn, handed: list[list[Task]]) -> None:
    """Ours hands each task to one worker only (the official SQL may hand it to two)."""
    if is_official(conn):
        return
    keys = [(t.step_slug, t.task_index) for batch in handed for t in batch]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("scan", ["planner", "seqscan"])
@pytest.mark.parametrize("how", ["fail_task", "type_violation"])
def test_run_failing_while_workers_claim_its_tasks(any_db_url: str, how: str, scan: str) -> None:
    """``boom`` fails the run (out of attempts, or with a non-array for ``boom_map``) while three
    workers claim the run's 79 queued map tasks; twenty rounds, with the failing connection's
    plans chosen freely or forced to sequential scans. The run's tasks are ended in message
    order, the order start_tasks claims them in, so the two never deadlock; and the run fails
    cleanly (ours cancels every task a worker was handed)."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        race_flow(conn)

        def finish(c: Conn, boom: Task) -> object:
            if how == "fail_task":
                return fail(c, boom, "boom")
            return complete(c, boom, {"not": "an array"})

        for run_id, handed in claim_while_ending(any_db_url, scan, claim_boom, finish):
            assert_run_failed_cleanly(conn, run_id)
            assert_handed_once(conn, handed)
            if not is_official(conn):
                statuses = {
                    r["status"] for r in task_rows(conn, run_id) if r["step_slug"] != "boom"
                }
                assert statuses == {"cancelled"}


def test_step_skipped_while_workers_claim_its_tasks(db_url: str) -> None:
    """zeta[0] runs out of attempts and, with when_exhausted 'skip', skips its step while three
    workers claim zeta's and alpha's queued tasks; the skipping connection is forced to
    sequential scans. No deadlock; zeta ends skipped with all its messages archived, alpha's
    tasks are each handed out once and stay started. Ours only: 0.8.1 has no when_exhausted."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        race_flow(conn, skip_on_exhaustion=True)

        def last_attempt_of_zeta0(c: Conn, ids: dict[tuple[str, int], int], w: uuid.UUID) -> Task:
            first = claim(c, ids, ("zeta", 0), w)
            assert fail(c, first, "first attempt")[0]["status"] == "queued"
            return claim(c, ids, ("zeta", 0), w)

        def finish(c: Conn, task: Task) -> object:
            return fail(c, task, "gave up")

        for run_id, handed in claim_while_ending(db_url, "seqscan", last_attempt_of_zeta0, finish):
            assert_handed_once(conn, handed)
            assert run_row(conn, run_id)["status"] == "started"
            state = step_states(conn, run_id)["zeta"]
            assert (state["status"], state["skip_reason"]) == ("skipped", "handler_failed")
            zeta = task_rows(conn, run_id, "zeta")
            assert [r["status"] for r in zeta] == ["failed"] + ["skipped"] * (RACE_MAP_SIZE - 1)
            assert {r["message_id"] for r in zeta} <= archived_ids(conn, "f")
            alpha = task_rows(conn, run_id, "alpha")
            assert {r["status"] for r in alpha} == {"started"}
            handed_alpha = sorted(t.task_index for b in handed for t in b if t.step_slug == "alpha")
            assert handed_alpha == list(range(RACE_MAP_SIZE))


@pytest.mark.parametrize("order", ["left first", "right first", "together"])
def test_both_parents_of_a_step_completing_at_once_start_it_once(
    any_db_url: str, order: str
) -> None:
    """A step waiting on two parents whose last tasks complete on two connections at once
    starts exactly once, with one task and one message, whichever commits first: the second
    completion queues behind the first's lock on the run and then sees its count-down."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        define_flow(
            conn,
            "f",
            [("root", []), ("left", ["root"]), ("right", ["root"]), ("join", ["left", "right"])],
        )
        run_id = start_flow(conn, "f", {})
        [root] = read_and_start(conn, "f")
        complete(conn, root, 1)
        ids = message_ids(conn, run_id)
        with connections(any_db_url, 3) as (a, b, observer):
            wa, wb = worker_ids(2)
            left = claim(a, ids, ("left", 0), wa)
            right = claim(b, ids, ("right", 0), wb)
            if order == "together":
                together([partial(complete, a, left, "L"), partial(complete, b, right, "R")])
            else:
                first, second = (a, b) if order == "left first" else (b, a)
                first_task, second_task = (left, right) if order == "left first" else (right, left)
                done = threading.Event()
                errors: list[BaseException] = []

                def later() -> None:
                    try:
                        complete(second, second_task, "second")
                    except BaseException as exc:  # reported below
                        errors.append(exc)
                    finally:
                        done.set()

                with first.transaction():
                    complete(first, first_task, "first")
                    thread = threading.Thread(target=later)
                    thread.start()
                    wait_until_blocked(observer, second.info.backend_pid)
                    assert not done.is_set()
                assert done.wait(10)
                thread.join(10)
                assert errors == []
        states = step_states(conn, run_id)
        assert states["join"]["status"] == "started"
        assert states["join"]["remaining_deps"] == 0
        assert states["join"]["remaining_tasks"] == 1
        joins = [r for r in task_rows(conn, run_id) if r["step_slug"] == "join"]
        assert len(joins) == 1
        assert event_names(conn, run_id).count("step:join:started") == 1
        [task] = read_and_start(conn, "f")
        assert task.step_slug == "join"
        assert set(task.deps) == {"left", "right"}
        complete(conn, task, None)
        assert run_row(conn, run_id)["status"] == "completed"
        assert read_and_start(conn, "f") == []

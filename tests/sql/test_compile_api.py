"""pgflow 0.17's compile and worker-tracking API: ensure_flow_compiled and the shape functions,
delete_flow_and_data, is_local, track_worker_function, the pg_cron set-up, and the stricter
slugs (with the upgrade that refuses a database breaking them)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgflow_worker import LocalPostgres
from pgflow_worker._database import list_migrations, migrate
from pgflow_worker._tools.cluster import FAST_SETTINGS
from pgflow_worker.errors import MigrationError, PostgresNotFound, PostgresStartError
from tests._stack import Stack
from tests.sql.catalog import read_catalog
from tests.sql.concurrency import connections
from tests.sql.helpers import (
    Conn,
    define_flow,
    drain,
    raises_sqlstate,
    read_and_start,
    row_counts,
    start_flow,
)

LOCAL_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"

PLAIN = {
    "whenUnmet": "skip",
    "whenExhausted": "fail",
    "requiredInputPattern": {"defined": False},
    "forbiddenInputPattern": {"defined": False},
}


def step(slug: str, deps: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"slug": slug, "stepType": "single", "dependencies": deps or [], **PLAIN, **extra}


def shape(*steps: dict[str, Any], **options: int) -> dict[str, Any]:
    out: dict[str, Any] = {"steps": list(steps)}
    if options:
        out["options"] = options
    return out


ORDERS = shape(
    step("fetch", options={"timeout": 30}),
    {**step("each", ["fetch"]), "stepType": "map"},
    step(
        "notify",
        ["each", "fetch"],
        whenUnmet="skip-cascade",
        requiredInputPattern={"defined": True, "value": {"fetch": {"ok": True}}},
    ),
    maxAttempts=5,
)


def ensure(conn: Conn, slug: str, the_shape: Any, *args: Any) -> dict[str, Any]:
    extra = "".join(", %s" for _ in args)
    row = conn.execute(
        f"select pgflow.ensure_flow_compiled(%s, %s{extra})".encode(),
        (slug, Jsonb(the_shape), *args),
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def stored_shape(conn: Conn, slug: str) -> Any:
    row = conn.execute("select pgflow._get_flow_shape(%s)", (slug,)).fetchone()
    assert row is not None
    return row[0]


def compare(conn: Conn, a: Any, b: Any) -> list[str]:
    row = conn.execute("select pgflow._compare_flow_shapes(%s, %s)", (Jsonb(a), Jsonb(b)))
    found = row.fetchone()
    assert found is not None
    return list(found[0])


def options_of(conn: Conn, slug: str) -> list[tuple[Any, ...]]:
    flow = conn.execute(
        "select 'flow', opt_max_attempts, opt_base_delay, opt_timeout, null::int"
        " from pgflow.flows where flow_slug = %s",
        (slug,),
    ).fetchall()
    steps = conn.execute(
        "select step_slug, opt_max_attempts, opt_base_delay, opt_timeout, opt_start_delay"
        " from pgflow.steps where flow_slug = %s order by step_index",
        (slug,),
    ).fetchall()
    return [tuple(r) for r in [*flow, *steps]]


def make_local(conn: Conn) -> None:
    """What a local Supabase stack sets for every session (its CLI's published JWT secret)."""
    conn.execute("select set_config('app.settings.jwt_secret', %s, false)", (LOCAL_JWT_SECRET,))


# -- ensure_flow_compiled -------------------------------------------------------------------------


def test_a_missing_flow_is_compiled_from_its_shape_with_its_options(conn: Conn) -> None:
    assert ensure(conn, "orders", ORDERS) == {
        "status": "compiled",
        "differences": [],
        "mismatchKind": None,
    }
    assert options_of(conn, "orders") == [
        ("flow", 5, 5, 60, None),
        ("fetch", None, None, 30, None),
        ("each", None, None, None, None),
        ("notify", None, None, None, None),
    ]
    without_options = {
        "steps": [{k: v for k, v in s.items() if k != "options"} for s in ORDERS["steps"]]
    }
    assert stored_shape(conn, "orders") == {
        "steps": [
            {**s, "dependencies": sorted(s["dependencies"])} for s in without_options["steps"]
        ]
    }
    assert row_counts(conn, "orders")["queue"] == 0, "its queue exists"
    run_id = start_flow(conn, "orders", {"n": 1})
    (task,) = read_and_start(conn, "orders")
    assert (task.run_id, task.step_slug) == (run_id, "fetch")


def test_a_matching_flow_is_verified_and_keeps_options_tuned_in_sql(conn: Conn) -> None:
    ensure(conn, "orders", ORDERS)
    run_id = start_flow(conn, "orders", {"n": 1})
    conn.execute("update pgflow.flows set opt_max_attempts = 9 where flow_slug = 'orders'")
    conn.execute(
        "update pgflow.steps set opt_timeout = 120, opt_start_delay = 3"
        " where flow_slug = 'orders' and step_slug = 'each'"
    )
    tuned = options_of(conn, "orders")
    before = row_counts(conn, "orders")

    for the_shape in (ORDERS, shape(*ORDERS["steps"], maxAttempts=2, timeout=7)):
        result = ensure(conn, "orders", the_shape)
        assert result == {"status": "verified", "differences": [], "mismatchKind": None}
        assert options_of(conn, "orders") == tuned, "options are never compared nor reset"
    assert row_counts(conn, "orders") == before
    assert conn.execute(
        "select status from pgflow.runs where run_id = %s", (run_id,)
    ).fetchone() == ("started",)


def test_a_mismatch_in_production_changes_nothing(conn: Conn) -> None:
    ensure(conn, "orders", ORDERS)
    run_id = start_flow(conn, "orders", {"n": 1})
    before = row_counts(conn, "orders")
    before_shape = stored_shape(conn, "orders")
    changed = shape(ORDERS["steps"][0], step("each", ["fetch"]), step("notify", ["each"]))

    result = ensure(conn, "orders", changed)

    assert result == {
        "status": "mismatch",
        "differences": [
            "Step at index 1: type differs 'single' vs 'map'",
            "Step at index 2: dependencies differ [each] vs [each, fetch]",
            "Step at index 2: whenUnmet differs 'skip' vs 'skip-cascade'",
            "Step at index 2: requiredInputPattern differs "
            """'{"defined": false}' vs '{"value": {"fetch": {"ok": true}}, "defined": true}'""",
        ],
        "mismatchKind": "shape",
    }
    assert row_counts(conn, "orders") == before
    assert stored_shape(conn, "orders") == before_shape
    assert conn.execute(
        "select count(*) from pgflow.runs where run_id = %s", (run_id,)
    ).fetchone() == (1,)


def test_a_mismatch_on_a_local_stack_recompiles_deleting_the_runs(conn: Conn) -> None:
    assert conn.execute("select pgflow.is_local()").fetchone() == (False,)
    ensure(conn, "orders", ORDERS)
    define_flow(conn, "other", [("a", [])])
    start_flow(conn, "orders", {"n": 1})
    start_flow(conn, "other", {})
    make_local(conn)
    assert conn.execute("select pgflow.is_local()").fetchone() == (True,)
    changed = shape(step("only"), timeout=9)

    result = ensure(conn, "orders", changed)

    assert result == {
        "status": "recompiled",
        "differences": [
            "Step count differs: 1 vs 3",
            "Step at index 0: slug differs 'only' vs 'fetch'",
            "Step at index 1: missing in first shape (second has 'each')",
            "Step at index 2: missing in first shape (second has 'notify')",
            "Step routes differ: database has [fetch -> orders, each -> orders, notify -> orders],"
            " worker expects [only -> orders]",
        ],
        "mismatchKind": None,
    }
    assert options_of(conn, "orders") == [("flow", 3, 5, 9, None), ("only", None, None, None, None)]
    counts = row_counts(conn, "orders")
    assert (counts["runs"], counts["queue"], counts["archive"]) == (1, 0, 0), "other's run stays"
    assert conn.execute("select flow_slug from pgflow.runs").fetchall() == [("other",)]
    assert ensure(conn, "orders", changed)["status"] == "verified"


def test_other_jwt_secrets_are_not_local(conn: Conn) -> None:
    conn.execute("select set_config('app.settings.jwt_secret', 'a-production-secret', false)")
    assert conn.execute("select pgflow.is_local()").fetchone() == (False,)


def test_workers_starting_together_compile_once(db_url: str) -> None:
    """Five callers queue on the flow's lock; the first compiles, the others verify."""
    results: list[dict[str, Any]] = []
    with connections(db_url, 6) as (holder, *callers):
        holder.execute("begin")
        holder.execute("select pg_advisory_xact_lock(1, hashtext(lower('orders')))")
        threads = [
            threading.Thread(target=lambda c=c: results.append(ensure(c, "orders", ORDERS)))
            for c in callers
        ]
        for thread in threads:
            thread.start()
        waiting = 0
        for _ in range(1000):
            row = holder.execute(
                "select count(*) from pg_locks where locktype = 'advisory' and not granted"
            ).fetchone()
            waiting = row[0] if row else 0
            if waiting == len(callers):
                break
            threading.Event().wait(0.01)
        assert waiting == len(callers), "every caller waits for the lock"
        holder.execute("commit")
        for thread in threads:
            thread.join(timeout=30)
    assert sorted(r["status"] for r in results) == ["compiled"] + ["verified"] * 4
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("select count(*) from pgflow.steps").fetchone() == (3,)


@pytest.mark.parametrize("bad", [None, [], {"steps": {}}, {"nosteps": []}, "text"])
def test_a_malformed_shape_is_refused(conn: Conn, bad: Any) -> None:
    before = row_counts(conn)
    with raises_sqlstate("22023", "'orders'", '"steps" array'):
        ensure(conn, "orders", bad)
    assert row_counts(conn) == before


def test_an_invalid_step_in_the_shape_creates_nothing(conn: Conn) -> None:
    before = row_counts(conn)
    with raises_sqlstate("23503"):
        ensure(conn, "orders", shape(step("a", ["missing"])))
    with raises_sqlstate("23514", "'_a'"):
        ensure(conn, "orders", shape(step("_a")))
    assert row_counts(conn) == before


# -- the shape functions --------------------------------------------------------------------------


def test_shapes_round_trip_and_an_unknown_flow_has_no_steps(conn: Conn) -> None:
    assert stored_shape(conn, "nothing") == {"steps": []}
    conn.execute("select pgflow._create_flow_from_shape('orders', %s)", (Jsonb(ORDERS),))
    assert compare(conn, ORDERS, stored_shape(conn, "orders")) == []


def test_compare_reads_missing_condition_keys_as_defaults(conn: Conn) -> None:
    """A shape from before conditions (pgflow 0.9-0.12) still matches a plain flow."""
    old = {"steps": [{"slug": "a", "stepType": "single", "dependencies": []}]}
    assert compare(conn, old, shape(step("a"))) == []
    assert compare(conn, old, shape(step("a", whenExhausted="skip"))) == [
        "Step at index 0: whenExhausted differs 'fail' vs 'skip'"
    ]
    assert compare(conn, shape(step("a", ["c", "b"])), shape(step("a", ["b", "c"]))) == []
    assert compare(conn, {"steps": []}, shape(step("a"))) == [
        "Step count differs: 0 vs 1",
        "Step at index 0: missing in first shape (second has 'a')",
    ]


# -- delete_flow_and_data -------------------------------------------------------------------------


def test_delete_flow_and_data_removes_one_flow_entirely(conn: Conn) -> None:
    define_flow(conn, "gone", [("a", []), ("m", ["a"], "map")])
    define_flow(conn, "kept", [("a", [])])
    start_flow(conn, "gone", {})
    drain(conn, "gone", lambda task: [1, 2])
    start_flow(conn, "gone", {})
    start_flow(conn, "kept", {})
    kept = row_counts(conn, "kept")

    conn.execute("select pgflow.delete_flow_and_data('gone')")

    for table in ("flows", "steps", "deps", "runs", "step_states", "step_tasks"):
        row = conn.execute(
            f"select count(*) from pgflow.{table} where flow_slug = 'gone'".encode()
        ).fetchone()
        assert row == (0,), table
    queues = conn.execute("select queue_name from pgmq.list_queues() order by 1").fetchall()
    assert ("gone",) not in queues
    after = row_counts(conn, "kept")
    assert (after["queue"], after["runs"]) == (kept["queue"], 1)
    conn.execute("select pgflow.delete_flow_and_data('never_existed')")


# -- worker tracking ----------------------------------------------------------------------------


def test_track_worker_function_registers_and_updates(conn: Conn) -> None:
    conn.execute("select pgflow.track_worker_function('edge_fn')")
    conn.execute("select pgflow.track_worker_function('py_worker', 'process')")
    rows = conn.execute(
        "select function_name, start_mode, enabled, debounce::text, last_invoked_at"
        " from pgflow.worker_functions order by 1"
    ).fetchall()
    assert rows == [
        ("edge_fn", "http", True, "00:00:06", None),
        ("py_worker", "process", True, "00:00:06", None),
    ]
    first = conn.execute(
        "select created_at, updated_at from pgflow.worker_functions where function_name = 'edge_fn'"
    ).fetchone()
    conn.execute("select pgflow.track_worker_function('edge_fn', 'process')")
    row = conn.execute(
        "select start_mode, created_at, updated_at from pgflow.worker_functions"
        " where function_name = 'edge_fn'"
    ).fetchone()
    assert first is not None
    assert row is not None
    assert row[0] == "process"
    assert row[1] == first[0]
    assert row[2] > first[1]
    with raises_sqlstate("23514", "worker_functions_start_mode_check"):
        conn.execute("select pgflow.track_worker_function('edge_fn', 'cron')")
    assert conn.execute(
        "select start_mode from pgflow.worker_functions where function_name = 'edge_fn'"
    ).fetchone() == ("process",)


def test_workers_record_their_version(conn: Conn) -> None:
    conn.execute(
        "insert into pgflow.workers (worker_id, queue_name, function_name, pgflow_version)"
        " values (%s, 'q', 'edge_fn', '0.17.1'), (%s, 'q', 'old', default)",
        (uuid.uuid4(), uuid.uuid4()),
    )
    rows = conn.execute("select function_name, pgflow_version from pgflow.workers order by 1")
    assert rows.fetchall() == [("edge_fn", "0.17.1"), ("old", None)]


def test_the_requeue_cron_set_up_names_pg_cron_when_it_is_missing(conn: Conn) -> None:
    row = conn.execute(
        "select exists (select 1 from pg_extension where extname = 'pg_cron')"
    ).fetchone()
    if row == (True,):
        pytest.skip("pg_cron is installed in this database: the error cannot happen here")
    with raises_sqlstate("42883", "needs the pg_cron extension") as info:
        conn.execute("select pgflow.setup_requeue_stalled_tasks_cron()")
    assert "pg_cron" in (info.value.diag.message_hint or "")


@pytest.fixture(scope="module")
def cron_url() -> Iterator[str]:
    """A database on a server of its own with pg_cron preloaded, migrated, pg_cron created."""
    settings = {
        **FAST_SETTINGS,
        "shared_preload_libraries": "pg_cron",
        "cron.database_name": "postgres",
    }
    try:
        server = LocalPostgres(settings=settings)
        server.start()
    except (PostgresNotFound, PostgresStartError) as exc:
        pytest.skip(f"no PostgreSQL server with pg_cron could start here: {exc}")
    try:
        migrate(server.dsn())
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("create extension pg_cron")
        yield server.dsn()
    finally:
        server.stop()


def test_the_requeue_cron_set_up_schedules_with_pg_cron(cron_url: str) -> None:
    with psycopg.connect(cron_url, autocommit=True) as conn:
        row = conn.execute("select extversion from pg_extension where extname = 'pg_cron'")
        version = tuple(int(n) for n in str((row.fetchone() or ("0",))[0]).split("-")[0].split("."))
        jobs = (
            "select schedule, command from cron.job where jobname = 'pgflow_requeue_stalled_tasks'"
        )
        every_minute = conn.execute(
            "select pgflow.setup_requeue_stalled_tasks_cron('* * * * *')"
        ).fetchone()
        assert every_minute is not None
        assert every_minute[0].startswith(
            "Scheduled pgflow_requeue_stalled_tasks (every * * * * *, job_id="
        )
        conn.execute("select pgflow.setup_requeue_stalled_tasks_cron('*/5 * * * *')")
        assert conn.execute(jobs).fetchall() == [
            ("*/5 * * * *", "select pgflow.requeue_stalled_tasks()")
        ], "the earlier job was replaced"

        if version >= (1, 5):
            conn.execute("select pgflow.setup_requeue_stalled_tasks_cron()")
            assert conn.execute(jobs).fetchall() == [
                ("15 seconds", "select pgflow.requeue_stalled_tasks()")
            ]
        else:  # pg_cron before 1.5 (Debian 12's 1.4) has no intervals in seconds
            with raises_sqlstate("22023", "refused the schedule '15 seconds'") as info:
                conn.execute("select pgflow.setup_requeue_stalled_tasks_cron()")
            assert "1.5" in (info.value.diag.message_hint or "")
            assert conn.execute(jobs).fetchall() == [
                ("*/5 * * * *", "select pgflow.requeue_stalled_tasks()")
            ], "the job scheduled before is kept"


# -- slugs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["_orders", "orders_", "or__ders", "1orders"])
def test_create_flow_refuses_slugs_breaking_the_0_17_rules(conn: Conn, slug: str) -> None:
    before = row_counts(conn)
    with raises_sqlstate("23514", repr(slug), "not a valid flow slug") as info:
        conn.execute("select pgflow.create_flow(%s)", (slug,))
    assert "starts with a letter" in (info.value.diag.message_hint or "")
    assert row_counts(conn) == before


def test_slugs_are_unique_ignoring_case(conn: Conn) -> None:
    define_flow(conn, "orders", [("fetch", [])])
    before = row_counts(conn)
    with raises_sqlstate("23505", "'Orders'", "'orders'", "only in case"):
        conn.execute("select pgflow.create_flow('Orders')")
    with raises_sqlstate("23505", "idx_steps_normalized_slug"):
        conn.execute("select pgflow.add_step('orders', 'Fetch')")
    assert row_counts(conn) == before
    conn.execute("select pgflow.create_flow('orders')")  # the same spelling stays idempotent


# -- the upgrade ----------------------------------------------------------------------------------


@pytest.fixture
def at_baseline(stack: Stack) -> Iterator[str]:
    """A database migrated to the baseline only, as before this change."""
    name = stack.empty("pgflow_slugs")
    try:
        migrate(stack.url(name), target=list_migrations()[0].version)
        yield stack.url(name)
    finally:
        stack.drop(name)


def test_the_upgrade_names_the_flows_breaking_the_new_slug_rules(at_baseline: str) -> None:
    with psycopg.connect(at_baseline, autocommit=True) as conn:
        define_flow(conn, "_legacy", [("ok", [])])
        define_flow(conn, "Orders", [("fetch", []), ("Fetch", []), ("a__b", [])])
        define_flow(conn, "orders", [("fetch", [])])
        define_flow(conn, "fine", [("step_1", [])])
        start_flow(conn, "fine", {})
        before = read_catalog(conn)
        counts = row_counts(conn)

        with pytest.raises(MigrationError) as refused:
            migrate(at_baseline)

        message = str(refused.value)
        for needle in (
            "0002_compile_api.sql failed and was rolled back",
            "flow '_legacy': not a valid slug",
            "step 'a__b' of flow 'Orders': not a valid slug",
            "flows 'Orders', 'orders': the same slug ignoring case",
            "steps 'Fetch', 'fetch' of flow 'Orders': the same slug ignoring case",
            "Nothing was changed",
            "pgflow.delete_flow_and_data",
        ):
            assert needle in message, needle
        assert "'fine'" not in message
        assert read_catalog(conn) == before
        assert row_counts(conn) == counts
        assert conn.execute("select version from pgflow.migrations").fetchall() == [("0001",)]

        for slug in ("_legacy", "Orders"):
            for table in ("step_tasks", "step_states", "runs", "deps", "steps", "flows"):
                conn.execute(f"delete from pgflow.{table} where flow_slug = %s".encode(), (slug,))
        assert migrate(at_baseline).applied == [m.path.name for m in list_migrations()[1:]]
        assert conn.execute("select count(*) from pgflow.runs").fetchone() == (1,)
        with raises_sqlstate("23505"):
            conn.execute("select pgflow.create_flow('ORDERS')")

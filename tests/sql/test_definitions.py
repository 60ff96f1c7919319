"""Defining flows: create_flow, add_step and is_valid_slug (section 3.3 of the reference)."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.sql.helpers import add_step, is_official, raises_sqlstate, row_counts

Conn = psycopg.Connection[Any]


def flow_row(conn: Conn, slug: str) -> dict[str, Any] | None:
    row = conn.execute("select to_jsonb(f) from pgflow.flows f where flow_slug = %s", (slug,))
    found = row.fetchone()
    return None if found is None else found[0]


def queue_exists(conn: Conn, name: str) -> bool:
    row = conn.execute(
        "select exists (select 1 from pgmq.list_queues() q where q.queue_name = %s)", (name,)
    ).fetchone()
    assert row is not None
    return bool(row[0])


def deps_of(conn: Conn, flow: str, step: str) -> list[str]:
    rows = conn.execute(
        "select dep_slug from pgflow.deps where flow_slug = %s and step_slug = %s order by 1",
        (flow, step),
    ).fetchall()
    return [r[0] for r in rows]


# -- create_flow ------------------------------------------------------------------------------


def test_create_flow_defaults_and_queue(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        row = conn.execute("select to_jsonb(pgflow.create_flow('orders'))").fetchone()
        assert row is not None
        flow = row[0]
        assert (flow["opt_max_attempts"], flow["opt_base_delay"], flow["opt_timeout"]) == (3, 5, 60)
        assert queue_exists(conn, "orders")
        conn.execute("select pgmq.send('orders', '{}')")  # the queue is usable


def test_create_flow_is_an_upsert_returning_the_existing_flow(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('orders', 7, 2, 30)")
        row = conn.execute("select to_jsonb(pgflow.create_flow('orders', 1, 1, 1))").fetchone()
        assert row is not None
        again = row[0]
        assert (again["opt_max_attempts"], again["opt_base_delay"], again["opt_timeout"]) == (
            7,
            2,
            30,
        )
        assert conn.execute("select count(*) from pgflow.flows").fetchone() == (1,)
        assert conn.execute(
            "select count(*) from pgmq.list_queues() where queue_name = 'orders'"
        ).fetchone() == (1,)


def test_create_flow_explicit_nulls(any_db_url: str) -> None:
    """Ours treats explicit NULL options as "use the default" (3 / 5 / 60), which is what a
    compiler passing through unset options needs. The official SQL puts the defaults on the
    arguments only, so an explicit NULL reaches the NOT NULL column and fails with 23502."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        query = "select to_jsonb(pgflow.create_flow('orders', null, null, null))"
        if is_official(conn):
            with raises_sqlstate("23502"):
                conn.execute(query)
            return
        row = conn.execute(query).fetchone()
        assert row is not None
        flow = row[0]
        assert (flow["opt_max_attempts"], flow["opt_base_delay"], flow["opt_timeout"]) == (3, 5, 60)


def test_create_flow_rejects_invalid_slugs(any_db_url: str) -> None:
    """Both cores answer 23514; ours names the slug (the official one names the constraint)."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        ours = not is_official(conn)
        conn.execute("select pgflow.create_flow('existing')")
        before = row_counts(conn, "existing")
        for slug in ["1starts_with_digit", "has-dash", "has space", "", "run", "é"]:
            with raises_sqlstate("23514", *([repr(slug)] if ours else [])):
                conn.execute("select pgflow.create_flow(%s)", (slug,))
            assert row_counts(conn, "existing") == before, slug
        assert (before["flows"], before["queues"]) == (1, 1)


def test_create_flow_rejects_null_slug(any_db_url: str) -> None:
    """Refused on both cores and nothing is written. Ours raises check_violation (23514) naming
    the NULL slug, like every other invalid slug; the official SQL lets the NULL reach the
    NOT NULL column (23502)."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        ours = not is_official(conn)
        before = row_counts(conn)
        with raises_sqlstate(*(["23514", "NULL", "not a valid flow slug"] if ours else ["23502"])):
            conn.execute("select pgflow.create_flow(null)")
        assert row_counts(conn) == before


def test_create_flow_refuses_slugs_longer_than_pgmq_allows(any_db_url: str) -> None:
    """A 48-character slug is refused before anything is written: ours with 23514 naming the
    slug and the limit, the official SQL with pgmq's own P0001 (after inserting the flow row,
    which the error rolls back). 47 characters are fine on both."""
    long_slug = "f" * 48
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        if is_official(conn):
            with raises_sqlstate("P0001", "47"):
                conn.execute("select pgflow.create_flow(%s)", (long_slug,))
        else:
            with raises_sqlstate("23514", long_slug, "47"):
                conn.execute("select pgflow.create_flow(%s)", (long_slug,))
        assert flow_row(conn, long_slug) is None
        assert not queue_exists(conn, long_slug)
        conn.execute("select pgflow.create_flow(%s)", ("f" * 47,))
        assert queue_exists(conn, "f" * 47)


def test_create_flow_rejects_bad_options(any_db_url: str) -> None:
    """23514 on both cores, before anything is written; ours names the flow and the option.
    The official SQL takes an explicit NULL option as NULL (see above), so each case passes
    the defaults for the options it does not test."""
    cases = [
        ("-1, 5, 60", "max_attempts"),
        ("3, -1, 60", "base_delay"),
        ("3, 5, 0", "timeout"),
    ]
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        ours = not is_official(conn)
        before = row_counts(conn)
        for args, needle in cases:
            with raises_sqlstate("23514", *(["'orders'", needle] if ours else [])):
                conn.execute(f"select pgflow.create_flow('orders', {args})".encode())
            assert row_counts(conn) == before, needle
        assert flow_row(conn, "orders") is None
        assert not queue_exists(conn, "orders")
        if ours:  # explicit NULLs mean the defaults (the official SQL refuses them, 23502)
            with raises_sqlstate("23514", "'orders'", "max_attempts"):
                conn.execute("select pgflow.create_flow('orders', -1, null, null)")
            assert row_counts(conn) == before


# -- add_step ---------------------------------------------------------------------------------


def test_add_step_indexes_in_insertion_order_and_counts_deps(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('f')")
        a = add_step(conn, "f", "zeta")
        b = add_step(conn, "f", "alpha", ["zeta"])
        c = add_step(conn, "f", "mid", ["zeta", "alpha"])
        d = add_step(conn, "f", "items", ["mid"], step_type="map")
        assert [s["step_index"] for s in (a, b, c, d)] == [0, 1, 2, 3]
        assert [s["deps_count"] for s in (a, b, c, d)] == [0, 1, 2, 1]
        assert [s["step_type"] for s in (a, b, c, d)] == ["single", "single", "single", "map"]
        assert deps_of(conn, "f", "mid") == ["alpha", "zeta"]


def test_add_step_stores_options(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('f')")
        step = add_step(conn, "f", "s", max_attempts=9, base_delay=2, timeout=11, start_delay=4)
        options = ("opt_max_attempts", "opt_base_delay", "opt_timeout", "opt_start_delay")
        assert [step[k] for k in options] == [9, 2, 11, 4]
        plain = add_step(conn, "f", "t")
        assert [plain[k] for k in options] == [None, None, None, None]


def test_add_step_returns_an_existing_step_unchanged(db_url: str) -> None:
    """Ours ignores everything but the slugs on a repeated call (options, type and deps); the
    official SQL keeps the row but would still insert new dependency rows."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('f')")
        add_step(conn, "f", "a")
        first = add_step(conn, "f", "b", max_attempts=7)
        again = add_step(conn, "f", "b", ["a"], max_attempts=1, step_type="map", timeout=3)
        assert again == first
        assert deps_of(conn, "f", "b") == []
        assert conn.execute("select count(*) from pgflow.steps").fetchone() == (2,)


def test_add_step_unknown_flow(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        ours = not is_official(conn)
        conn.execute("select pgflow.create_flow('f')")
        add_step(conn, "f", "a")
        before = row_counts(conn, "f")
        with raises_sqlstate("23503", *(["'ghost'", "does not exist"] if ours else [])):
            add_step(conn, "ghost", "a")
        with raises_sqlstate("23503", *(["'ghost'", "does not exist"] if ours else [])):
            add_step(conn, "ghost", "b", ["a"])
        assert row_counts(conn, "f") == before
        assert (before["flows"], before["steps"], before["queues"]) == (1, 1, 1)


def test_add_step_unknown_dependency(any_db_url: str) -> None:
    """Both answer 23503; ours names flow, step and every missing dependency."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('f')")
        add_step(conn, "f", "a")
        ours = not is_official(conn)
        before = row_counts(conn, "f")
        with raises_sqlstate("23503", *(["'f'", "'b'", "x, y"] if ours else [])):
            add_step(conn, "f", "b", ["a", "y", "x"])
        assert row_counts(conn, "f") == before
        assert (before["steps"], before["deps"]) == (1, 0)


def test_map_step_with_two_dependencies_is_refused(any_db_url: str) -> None:
    """P0001 on both cores, in pgflow's words naming the step and its dependencies; ours also
    names the flow. Nothing of the step is written; maps with no or one dependency are fine."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('f')")
        add_step(conn, "f", "a")
        add_step(conn, "f", "b")
        before = row_counts(conn, "f")
        ours = not is_official(conn)
        ours_message = (
            "Map step \"m\" can have at most one dependency, but 2 were provided: a, b (flow 'f')"
        )
        pgflows = 'Map step "m" can have at most one dependency, but 2 were provided: a, b'
        needles = [ours_message] if ours else [pgflows]
        with raises_sqlstate("P0001", *needles):
            add_step(conn, "f", "m", ["a", "b"], step_type="map")
        assert row_counts(conn, "f") == before
        assert (before["steps"], before["deps"]) == (2, 0)
        add_step(conn, "f", "root_map", step_type="map")
        add_step(conn, "f", "dep_map", ["a"], step_type="map")
        after = row_counts(conn, "f")
        assert (after["steps"], after["deps"]) == (4, 1)


def test_add_step_refuses_duplicate_dependencies(db_url: str) -> None:
    """The official SQL silently accepts ``{a,a}`` and records deps_count 2 for one dependency
    row, so the step would wait forever for a second completion; ours refuses it."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('f')")
        add_step(conn, "f", "a")
        with raises_sqlstate("22023", "'b'", "'f'", "twice"):
            add_step(conn, "f", "b", ["a", "a"])
        with raises_sqlstate("22023", "'b'"):
            conn.execute("select pgflow.add_step('f', 'b', array['a', null])")


def test_add_step_refuses_self_dependency(any_db_url: str) -> None:
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('f')")
        ours = not is_official(conn)
        with raises_sqlstate("23514", *(["'s'", "itself"] if ours else [])):
            add_step(conn, "f", "s", ["s"])


def test_add_step_refuses_bad_type_options_and_slugs(any_db_url: str) -> None:
    """All 23514 on both cores; ours names the step, the flow and what was wrong."""
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        conn.execute("select pgflow.create_flow('f')")
        ours = not is_official(conn)
        for step_type in ["fanout", "MAP", ""]:
            with raises_sqlstate("23514", *(["'s'", repr(step_type)] if ours else [])):
                add_step(conn, "f", "s", step_type=step_type)
        bad_options: list[dict[str, Any]] = [
            {"max_attempts": -1},
            {"base_delay": -1},
            {"timeout": 0},
            {"start_delay": -1},
        ]
        for options in bad_options:
            (name,) = options
            with raises_sqlstate("23514", *(["'s'", name] if ours else [])):
                add_step(conn, "f", "s", **options)
        for slug in ["run", "9lives", "a-b", ""]:
            with raises_sqlstate("23514", *([repr(slug), "'f'"] if ours else [])):
                add_step(conn, "f", slug)
        assert conn.execute("select count(*) from pgflow.steps").fetchone() == (0,)


# -- is_valid_slug ----------------------------------------------------------------------------


def test_is_valid_slug(any_db_url: str) -> None:
    """pgflow 0.17's rules; the official 0.8.1 SQL has the older ones, which allow a leading or
    trailing underscore and a double one."""
    stricter: list[tuple[str, bool]] = [
        ("_private", False),
        ("trailing_", False),
        ("a__b", False),
        ("_", False),
        ("a_b_2", True),
        ("A", True),
        ("x9", True),
    ]
    cases: list[tuple[str | None, bool]] = [
        ("a", True),
        ("Step_2", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("2nd", False),
        ("run", False),
        ("has.dot", False),
        ("", False),
        (None, False),
    ]
    with psycopg.connect(any_db_url, autocommit=True) as conn:
        if not is_official(conn):
            cases.extend(stricter)
        for slug, valid in cases:
            row = conn.execute("select pgflow.is_valid_slug(%s)", (slug,)).fetchone()
            assert row is not None
            assert bool(row[0]) is valid, slug

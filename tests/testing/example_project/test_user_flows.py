"""A user's own tests of their flows, using only the public API and the plugin's fixtures.

Run by ``tests/testing/test_plugin.py`` in a pytest of its own; the last test fails on purpose.
"""

import pytest

from pgflow_worker import Flow
from pgflow_worker.testing import make_context

words_flow = Flow("example_words")


@words_flow.step
def words(input, ctx):
    return input["text"].split()


@words_flow.step(depends_on=[words])
def count(input, ctx):
    return len(input["words"])


flaky_flow = Flow("example_flaky", max_attempts=3, base_delay=5)
_seen = []


@flaky_flow.step
def flaky(input, ctx):
    _seen.append(ctx.attempt)
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt} lost its connection")
    return "done"


broken_flow = Flow("example_broken", max_attempts=1)


@broken_flow.step
def parse(input, ctx):
    raise ValueError(f"cannot parse {input['text']!r}")


def test_words(pgflow_run):
    run = pgflow_run(words_flow, {"text": "hi there"})
    assert run.status == "completed"
    assert run.step("words").output == ["hi", "there"]
    assert run.output == {"count": 2}


def test_retries_do_not_wait(pgflow_run):
    run = pgflow_run(flaky_flow, {}, timeout=4.0)
    assert run.status == "completed"
    assert run.step("flaky").attempts == 3


async def test_in_an_async_test(pgflow_run):
    run = await pgflow_run.run_async(words_flow, {"text": "a b c"})
    assert run.step("count").output == 3
    again = pgflow_run(words_flow, {"text": "d"})
    assert again.step("count").output == 1


def test_database_is_fresh(pgflow_database):
    import psycopg

    with psycopg.connect(pgflow_database) as conn:
        assert conn.execute("select count(*) from pgflow.runs").fetchone() == (0,)


def test_one_handler_without_a_database():
    ctx = make_context(flow_input={"text": "x y"}, step_slug="words", attempt=2)
    assert words({"text": "x y"}, ctx) == ["x", "y"]
    assert ctx.flow_input == {"text": "x y"}
    assert ctx.attempt == 2
    with pytest.raises(Exception, match="no database"):
        ctx.execute("select 1")


def test_fails_on_purpose(pgflow_run):
    run = pgflow_run(broken_flow, {"text": "oops"})
    run.assert_completed()

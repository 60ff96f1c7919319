"""Property-based tests: random flows run on the real SQL core, checked against a model.

Hypothesis generates a DAG (single, array and map steps; random array sizes, empty ones
included; random retry limits), a flow input, and then, call by call, plays the workers: it
reads a few messages, claims their tasks, and completes or fails claimed tasks in a random
order, with a random number of failed attempts per task. After every call the reference model
in ``model.py`` says what must have happened. At the end the run, its steps, its tasks and its
broadcast events must match the model exactly, and the audit must find nothing lost.

Examples are derandomized (the same ones on every run, for reproducible CI); set
``PGFLOW_PROPERTY_RANDOM=1`` to explore new ones and ``PGFLOW_PROPERTY_EXAMPLES`` for more.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from tests.reliability.helpers import audit
from tests.reliability.model import FlowSpec, RunModel, StepSpec, handler_output

Conn = psycopg.Connection[Any]

EXAMPLES = int(os.environ.get("PGFLOW_PROPERTY_EXAMPLES", "60"))
RANDOM = os.environ.get("PGFLOW_PROPERTY_RANDOM") == "1"

property_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    # One database serves every example; each example defines a flow of its own.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    report_multiple_bugs=False,
)


@st.composite
def flow_specs(draw: st.DrawFn) -> FlowSpec:
    steps: list[StepSpec] = []
    for i in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["single", "array", "map"]))
        earlier = [s.slug for s in steps]
        deps: tuple[str, ...] = ()
        if earlier and kind == "map":
            source = draw(st.none() | st.sampled_from(earlier))
            deps = () if source is None else (source,)
        elif earlier:
            deps = tuple(draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)))
        steps.append(
            StepSpec(
                slug=f"s{i}",
                kind=kind,
                deps=deps,
                max_attempts=draw(st.integers(1, 3)),
                array_length=draw(st.integers(0, 3)) if kind == "array" else 0,
            )
        )
    return FlowSpec(tuple(steps))


# Flow inputs: arrays (root maps need one) of 0 to 4 elements.
flow_inputs = st.integers(0, 4).map(lambda n: [100 + i for i in range(n)])

# Mostly no failure, sometimes one to three failed attempts before success.
failures_before_success = st.integers(0, 9).map(lambda v: max(0, v - 6))


def define(conn: Conn, slug: str, spec: FlowSpec, worker: uuid.UUID) -> None:
    conn.execute("select pgflow.create_flow(%s, base_delay => 0)", (slug,))
    for step in spec.steps:
        conn.execute(
            "select pgflow.add_step(%s, %s, %s::text[], max_attempts => %s, step_type => %s)",
            (
                slug,
                step.slug,
                list(step.deps),
                step.max_attempts,
                "map" if step.is_map else "single",
            ),
        )
    conn.execute(
        "insert into pgflow.workers (worker_id, queue_name, function_name) values (%s, %s, 'prop')",
        (worker, slug),
    )


class EventLog:
    """Broadcast events in the order they were sent, read from the NOTIFY each event row
    raises: within one transaction the rows share ``inserted_at``, and their physical order
    is no guide once vacuum lets new rows fill older pages."""

    def __init__(self, db_url: str) -> None:
        self._listener = psycopg.connect(db_url, autocommit=True)
        self._listener.execute("listen realtime_broadcast")

    def close(self) -> None:
        self._listener.close()

    def collect(self, conn: Conn) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """Every event sent so far, per topic, in order (``conn`` sends the end marker)."""
        marker = f"end-{uuid.uuid4()}"
        conn.execute("select pg_notify('realtime_broadcast', %s)", (marker,))
        ids: list[str] = []
        for note in self._listener.notifies(timeout=10):
            if note.payload == marker:
                break
            ids.append(json.loads(note.payload)["id"])
        else:
            raise AssertionError("the end marker never arrived")
        rows = conn.execute(
            "select id::text, topic, event, payload from realtime.messages"
            " where id = any(%s::uuid[])",
            (ids,),
        ).fetchall()
        by_id = {r[0]: (r[1], r[2], r[3]) for r in rows}
        events: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for message_id in ids:
            topic, name, payload = by_id[message_id]
            events.setdefault(topic, []).append((name, payload))
        return events


def matches(expected: tuple[str, dict[str, Any]], actual: tuple[str, dict[str, Any]]) -> bool:
    """The event names agree and every payload key the model cares about has its value."""
    name, keys = expected
    return name == actual[0] and all(actual[1].get(k, "<absent>") == v for k, v in keys.items())


@pytest.mark.timeout(600)  # room for shrinking when an example fails
@property_settings
@given(spec=flow_specs(), inputs=st.lists(flow_inputs, min_size=1, max_size=3), data=st.data())
def test_random_flows_match_the_model(
    db_url: str, spec: FlowSpec, inputs: list[list[int]], data: st.DataObject
) -> None:
    """One to three runs of a random flow, their tasks interleaved as the draws decide."""
    slug = f"prop_{uuid.uuid4().hex[:12]}"
    worker = uuid.uuid4()
    models: dict[str, RunModel] = {}
    with (
        contextlib.closing(EventLog(db_url)) as log,
        psycopg.connect(db_url, autocommit=True) as conn,
    ):
        define(conn, slug, spec, worker)
        for flow_input in inputs:
            row = conn.execute(
                "select run_id from pgflow.start_flow(%s, %s)", (slug, Jsonb(flow_input))
            ).fetchone()
            assert row is not None
            model = models[str(row[0])] = RunModel(spec, flow_input)
            model.start()

        failures: dict[tuple[str, str, int], int] = {}
        in_flight: list[dict[str, Any]] = []
        while True:
            if not in_flight or data.draw(st.booleans(), label="read more"):
                qty = data.draw(st.integers(1, 4), label="messages to read")
                claimed = conn.execute(
                    "select to_jsonb(t) from pgflow.start_tasks(%s,"
                    " array(select msg_id from pgmq.read(%s, 30, %s)), %s) t",
                    (slug, slug, qty, worker),
                ).fetchall()
                for (task,) in claimed:
                    model = models[task["run_id"]]
                    key = (task["step_slug"], task["task_index"])
                    expected_input, expected_flow_input = model.task_input(*key)
                    assert task["input"] == expected_input, (key, task)
                    assert task["flow_input"] == expected_flow_input, (key, task)
                    model.claim(*key)
                    in_flight.append(task)
                if not claimed and not in_flight:
                    break
                continue
            task = in_flight.pop(data.draw(st.integers(0, len(in_flight) - 1), label="finish"))
            run_id, model = task["run_id"], models[task["run_id"]]
            key = (task["step_slug"], task["task_index"])
            if (run_id, *key) not in failures:
                failures[(run_id, *key)] = data.draw(failures_before_success, label="failures")
            attempt = model.tasks[key].attempts
            if model.status != "started":
                event("late result after the run failed")
            if attempt <= failures[(run_id, *key)]:
                message = f"boom {key[0]}[{key[1]}] attempt {attempt}"
                conn.execute("select pgflow.fail_task(%s, %s, %s, %s)", (run_id, *key, message))
                model.fail(*key, message)
            else:
                output = handler_output(spec.step(key[0]), key[1], task["input"])
                conn.execute(
                    "select pgflow.complete_task(%s, %s, %s, %s)", (run_id, *key, Jsonb(output))
                )
                model.complete(*key, output)

        sent = log.collect(conn)
        for run_id, model in models.items():
            check_final_state(conn, uuid.UUID(run_id), model, sent.get(f"pgflow:run:{run_id}", []))
            describe(model)
        assert audit(conn, slug) == []


def describe(model: RunModel) -> None:
    """Labels for ``--hypothesis-show-statistics``: what kinds of runs were exercised."""
    event(f"run {model.status}")
    if any("TYPE_VIOLATION" in str(p.get("error_message")) for _, p in model.events):
        event("type violation")
    if any(p.get("remaining_tasks") == 0 and n.endswith(":completed") for n, p in model.events):
        event("empty map completed without tasks")
    if any(t.attempts > 1 for t in model.tasks.values()):
        event("retried task")
    if model.status == "failed" and any(
        t.status == "cancelled" and t.attempts == 0 for t in model.tasks.values()
    ):
        event("queued tasks cancelled by the failure")


def check_final_state(
    conn: Conn, run_id: uuid.UUID, model: RunModel, events: list[tuple[str, dict[str, Any]]]
) -> None:
    run = conn.execute("select to_jsonb(r) from pgflow.runs r where run_id = %s", (run_id,))
    (run_row,) = run.fetchone() or (None,)
    assert run_row is not None
    assert model.status != "started", "the model's run never ended: the generated flow is stuck"
    assert (run_row["status"], run_row["output"], run_row["remaining_steps"]) == (
        model.status,
        model.output,
        model.remaining_steps,
    )

    states = {
        r[0]["step_slug"]: r[0]
        for r in conn.execute(
            "select to_jsonb(s) from pgflow.step_states s where run_id = %s", (run_id,)
        )
    }
    for slug, expected in model.steps.items():
        actual = states[slug]
        assert (
            actual["status"],
            actual["output"],
            actual["error_message"],
            actual["remaining_tasks"],
            actual["initial_tasks"],
            actual["remaining_deps"],
        ) == (
            expected.status,
            expected.output,
            expected.error_message,
            expected.remaining_tasks,
            expected.initial_tasks,
            expected.remaining_deps,
        ), slug

    tasks = {
        (r[0]["step_slug"], r[0]["task_index"]): r[0]
        for r in conn.execute(
            "select to_jsonb(t) from pgflow.step_tasks t where run_id = %s", (run_id,)
        )
    }
    assert set(tasks) == set(model.tasks)
    for key, expected_task in model.tasks.items():
        actual_task = tasks[key]
        assert (
            actual_task["status"],
            actual_task["attempts_count"],
            actual_task["output"],
            actual_task["error_message"],
        ) == (
            expected_task.status,
            expected_task.attempts,
            expected_task.output,
            expected_task.error_message,
        ), key

    assert [e[0] for e in events] == [e[0] for e in model.events]
    mismatched = [
        (want, got)
        for want, got in zip(model.events, events, strict=True)
        if not matches(want, got)
    ]
    assert mismatched == []
    assert all(got[1]["run_id"] == str(run_id) for got in events)

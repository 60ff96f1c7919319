"""Live views: an ipywidgets HTML widget following a run, async or sync, and in a kernel."""

from __future__ import annotations

import contextlib
import queue
import re
import sys
from typing import Any

import pytest

from pgflow_client import (
    FlowRun,
    LiveRunView,
    PgflowClient,
    SyncPgflowClient,
    live,
)
from pgflow_worker import FlowWorker
from tests.client._factories import (
    ANOTHER_STEP_SLUG,
    STEP_SLUG,
    make_run,
    run_completed,
    step_completed,
    step_started,
)
from tests.client.test_sync import FAST, adefine, define, wait_until, worker_thread
from tests.e2e.flows import chain

pytest.importorskip("ipywidgets", reason="live views need ipywidgets (the notebook extra)")

_STATUS = re.compile(r'font-weight:bold">(\w+)</span>')

# The chain flow as the view shows it: (run, fetch, summarize, publish) after each render.
CHAIN_PROGRESS = [
    ("started", "started", "created", "created"),
    ("started", "completed", "created", "created"),
    ("started", "completed", "started", "created"),
    ("started", "completed", "completed", "created"),
    ("started", "completed", "completed", "started"),
    ("started", "completed", "completed", "completed"),
    ("completed", "completed", "completed", "completed"),
]


def statuses(html: str) -> tuple[str, ...]:
    """The statuses a rendered run shows: the run's first, then each step's."""
    return tuple(_STATUS.findall(html))


def follow(view: LiveRunView) -> list[str]:
    """Every value the view's widget takes from now on."""
    values: list[str] = []
    view.widget.observe(lambda change: values.append(change["new"]), names="value")
    return values


# -- following real runs --------------------------------------------------------------------------


async def test_follows_an_async_run_and_lets_it_go(db_url: str) -> None:
    flow = chain()
    await adefine(db_url, flow)
    async with await PgflowClient.connect(db_url) as client:
        run = await client.start_flow("e2e_chain", {"id": 1})
        view = live(run)
        assert view.run is run
        assert view.active
        assert run.run_id in view.widget.value
        values = follow(view)
        # One callback on the run and one on each step, and nothing else.
        assert run._listener_count() == 4
        async with FlowWorker(flow, db_url, **FAST):
            await run.wait_for_status("completed", timeout=30)
        assert statuses(view.widget.value) == CHAIN_PROGRESS[-1]
        assert [statuses(v) for v in values] == CHAIN_PROGRESS[1:]
        assert "summary of title-1" in view.widget.value
        # Released once the run ended: nothing listens, so the run disposed itself.
        assert not view.active
        assert run._listener_count() == 0
        assert run.disposed
        assert "ended" in repr(view)


def test_follows_a_sync_run(db_url: str) -> None:
    flow = chain()
    define(db_url, flow)
    with SyncPgflowClient.connect(db_url) as client:
        run = client.start_flow("e2e_chain", {"id": 2})
        view = live(run)
        assert view.run is run.async_run
        values = follow(view)
        assert statuses(view.widget.value) == CHAIN_PROGRESS[0]
        with worker_thread(db_url, flow):
            run.wait_for_status("completed", timeout=30)
        # The last render came before the wait could return, in the same round of callbacks.
        assert not view.active
        assert [statuses(v) for v in values] == CHAIN_PROGRESS[1:]
        assert run.disposed
        wait_until(lambda: client.subscriptions() == frozenset(), "the run is unsubscribed")


# -- listening only while live --------------------------------------------------------------------


def test_counts_as_a_listener_only_while_live() -> None:
    run = make_run()
    run.step(STEP_SLUG)
    view = live(run)
    assert run._listener_count() == 2
    # A step first heard of later is picked up at the next render.
    run._apply_event(step_started(ANOTHER_STEP_SLUG))
    run._apply_event(step_completed(STEP_SLUG))
    assert run._listener_count() == 3
    assert statuses(view.widget.value) == ("started", "completed", "started")
    view.close()
    assert not view.active
    assert run._listener_count() == 0
    run._apply_event(step_completed(ANOTHER_STEP_SLUG))
    assert statuses(view.widget.value) == ("started", "completed", "started")  # not followed
    view.refresh()
    assert statuses(view.widget.value) == ("started", "completed", "completed")
    run._apply_event(run_completed())
    assert run.disposed  # terminal and unobserved


def test_a_finished_run_is_rendered_once_and_not_held() -> None:
    run = make_run()
    run._apply_event(run_completed())
    view = live(run)
    assert not view.active
    assert statuses(view.widget.value) == ("completed",)
    assert run._listener_count() == 0


def test_disposal_ends_the_view() -> None:
    run = make_run()
    view = live(run)
    assert view.active
    run.dispose()
    assert not view.active
    assert run._listener_count() == 0


# -- without ipywidgets, and display --------------------------------------------------------------


def test_a_clear_import_error_without_ipywidgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    run = make_run()
    with pytest.raises(ImportError, match=r"pip install 'pgflow-py\[notebook\]'") as caught:
        live(run)
    assert caught.value.name == "ipywidgets"
    assert run._listener_count() == 0


def test_displaying_the_view_shows_its_widget(monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython.display

    shown: list[Any] = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs: shown.extend(objs))
    view = LiveRunView(FlowRun("8d3f1b52-0a1e-4c3f-9d7a-6b2e5c4f1a09", "shown"))
    view._ipython_display_()
    assert shown == [view.widget]


# -- in a Jupyter kernel --------------------------------------------------------------------------


def test_in_a_jupyter_kernel(db_url: str) -> None:
    """The sync client and a live view in a real kernel, whose own loop runs every cell.

    Reads everything the kernel sends, as a notebook front end would: the widget's updates
    are sent from the client's loop thread.
    """
    pytest.importorskip("ipykernel", reason="needs ipykernel for a Python kernel")
    manager = pytest.importorskip("jupyter_client.manager", reason="needs jupyter_client")
    flow = chain()
    define(db_url, flow)
    cells = [
        "import asyncio\n"
        "from pgflow_client import SyncPgflowClient, live\n"
        "asyncio.get_running_loop()  # the kernel's loop runs this cell\n"
        f"client = SyncPgflowClient.connect({db_url!r})\n"
        "run = client.start_flow('e2e_chain', {'id': 3})\n"
        "run",
        "view = live(run)\nview",
        "run.wait_for_status('completed', timeout=30).output",
        "client.close()\n(view.active, run.disposed)",
    ]
    kernel, kc = manager.start_new_kernel(kernel_name="python3")
    try:
        ids = []
        for index, code in enumerate(cells):
            with worker_thread(db_url, flow) if index == 2 else contextlib.nullcontext():
                ids.append(kc.execute(code))
                reply = _reply(kc, ids[-1])
            assert reply["content"]["status"] == "ok", reply["content"]
        messages = []
        while (message := _next_message(kc)) is not None:
            messages.append(message)
    finally:
        kc.stop_channels()
        kernel.shutdown_kernel(now=True)
    # What each cell showed (the view displays itself, hence display_data).
    results = {
        m["parent_header"]["msg_id"]: m["content"]["data"]
        for m in messages
        if m["msg_type"] in ("execute_result", "display_data")
    }
    table, widget, output, released = (results[i] for i in ids)
    assert statuses(table["text/html"]) == CHAIN_PROGRESS[0]
    model = widget["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert output["text/plain"] == "{'publish': {'published': 'summary of title-3'}}"
    assert released["text/plain"] == "(False, True)"
    updates = [
        m["content"]["data"]["state"]["value"]
        for m in messages
        if m["msg_type"] == "comm_msg"
        and m["content"]["comm_id"] == model
        and "value" in m["content"]["data"].get("state", {})
    ]
    # The first render (made before the widget was shown), then one per event.
    assert [statuses(value) for value in updates] == CHAIN_PROGRESS


def _reply(kc: Any, msg_id: str) -> Any:
    """The kernel's reply to request ``msg_id`` (skipping replies to earlier requests)."""
    while (reply := kc.get_shell_msg(timeout=60))["parent_header"].get("msg_id") != msg_id:
        pass
    return reply


def _next_message(kc: Any) -> Any:
    """The next message the kernel published, or None once it has been quiet for a second."""
    try:
        return kc.get_iopub_msg(timeout=1)
    except queue.Empty:
        return None

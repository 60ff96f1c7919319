"""HTML rendering for Jupyter: a run table with one row per step, everything escaped."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from pgflow_client import FlowRun

from ._factories import (
    FLOW_SLUG,
    RUN_ID,
    make_run,
    run_failed,
    step_completed,
    step_failed,
    step_skipped,
    step_started,
)

EVIL = "<script>alert('x')</script>"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    parser.close()
    return parser


def test_run_table_has_a_header_and_one_row_per_step() -> None:
    run = make_run()
    run._apply_event(step_started("fetch"))
    run._apply_event(step_completed("fetch", output={"rows": 3}))
    run._apply_event(step_started("save"))
    html = run._repr_html_()
    parsed = parse(html)
    assert parsed.tags.count("table") == 1
    assert parsed.tags.count("tr") == 3  # header + 2 steps
    text = " ".join(parsed.text)
    for fragment in (FLOW_SLUG, RUN_ID, "started", "fetch", "save", "completed", '{"rows": 3}'):
        assert fragment in text
    assert "2024-01-01 12:00:01+00:00" in text


def test_run_without_steps() -> None:
    assert "no steps yet" in make_run()._repr_html_()


def test_failed_and_skipped_steps_show_their_errors() -> None:
    run = make_run()
    run._apply_event(step_failed("a", error_message="division by zero"))
    run._apply_event(step_skipped("b", skip_reason="handler_failed", error_message="oops"))
    run._apply_event(run_failed(error_message="division by zero"))
    text = " ".join(parse(run._repr_html_()).text)
    assert "division by zero" in text
    assert "skipped: handler_failed (oops)" in text
    assert "error: division by zero" in text


def test_everything_is_escaped() -> None:
    run = FlowRun(RUN_ID, EVIL, input=EVIL)
    run._apply_event(step_completed(EVIL, output={EVIL: EVIL}))
    run._apply_event(step_failed("x" + EVIL, error_message=EVIL))
    run._apply_event(run_failed(flow_slug=EVIL, error_message=EVIL))
    for html in (run._repr_html_(), run.step(EVIL)._repr_html_()):
        assert "<script" not in html
        assert "script" not in parse(html).tags
        assert "&lt;script&gt;" in html


def test_long_outputs_are_truncated() -> None:
    run = make_run()
    run._apply_event(step_completed("big", output=list(range(10_000))))
    html = run._repr_html_()
    assert "9999" not in html
    assert "…" in html
    assert len(html) < 5_000


def test_step_renders_a_single_row() -> None:
    run = make_run()
    run._apply_event(step_completed("only", output="done"))
    parsed = parse(run.step("only")._repr_html_())
    assert parsed.tags.count("tr") == 2
    text = " ".join(parsed.text)
    assert "only" in text
    assert RUN_ID in text


def test_unusual_values_render() -> None:
    circular: dict[str, Any] = {}
    circular["self"] = circular
    run = make_run(input=None)
    run._apply_event(step_completed("circular", output=circular))
    run._apply_event(step_completed("bytes", output=b"\x00\xff"))
    html = run._repr_html_()
    assert "circular" in html
    assert "self" in html


def test_very_deep_outputs_render() -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(100_000):
        child: list[Any] = []
        node.append(child)
        node = child
    run = make_run()
    run._apply_event(step_completed("deep", output=deep))
    assert "deep" in run._repr_html_()

"""A flow whose condition, output and error look like rich markup (``[true]``, ``[/path]``),
loaded by the CLI tests as tests.worker.markupflows:marks."""

from __future__ import annotations

from typing import Any

from pgflow_worker import Flow

marks = Flow("cli_marks", max_attempts=1)


@marks.step(if_={"tags": [True]})
def check(input: dict[str, Any]) -> list[bool]:
    if input.get("fail"):
        raise OSError("[/path] [red]")
    return [True, False]

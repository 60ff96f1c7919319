"""Flows the CLI tests load by MODULE:FLOW."""

from __future__ import annotations

from typing import Any

from pgflow_worker import Flow

hello = Flow("cli_hello", max_attempts=1)


@hello.step
def greet(input: dict[str, Any]) -> str:
    if input.get("name") == "nobody":
        raise LookupError("nobody to greet")
    return f"Hello, {input['name']}!"

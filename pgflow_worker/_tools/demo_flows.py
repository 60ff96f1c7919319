"""The flows ``pgflow demo`` runs: pgflow's getting-started ``greet_user``, and a small crawl
whose map step fans out over a list and retries a task that fails its first attempt.

Each builder returns a fresh :class:`Flow`; an optional :class:`AttemptObserver` hears about
every handler attempt, so a caller can show attempts and retries that run events do not carry.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any, Protocol

from pydantic import BaseModel

from .._context import StepContext
from .._flow import Flow

__all__ = [
    "CRAWL_SITE",
    "GREET_USER",
    "AttemptObserver",
    "GreetUserInput",
    "crawl_site_flow",
    "greet_user_flow",
]

GREET_USER = "greet_user"
CRAWL_SITE = "crawl_site"


class AttemptObserver(Protocol):
    """Told when a demo handler starts an attempt and when an attempt fails."""

    def attempt_started(self, ctx: StepContext) -> None: ...

    def attempt_failed(self, ctx: StepContext, error: BaseException) -> None: ...


class _Silent:
    def attempt_started(self, ctx: StepContext) -> None:
        pass

    def attempt_failed(self, ctx: StepContext, error: BaseException) -> None:
        pass


class GreetUserInput(BaseModel):
    """The input of ``greet_user``, as in pgflow's getting-started guide."""

    first_name: str
    last_name: str


def greet_user_flow(observer: AttemptObserver | None = None) -> Flow:
    """``greet_user``: ``full_name`` joins the names, ``greeting`` says hello.

    ``{"first_name": "Alice", "last_name": "Smith"}`` gives
    ``{"greeting": "Hello, Alice Smith!"}``.
    """
    seen = observer or _Silent()
    flow = Flow(GREET_USER)

    @flow.step
    async def full_name(input: GreetUserInput, ctx: StepContext) -> str:
        seen.attempt_started(ctx)
        return f"{input.first_name} {input.last_name}"

    @flow.step(depends_on=[full_name])
    async def greeting(input: dict[str, Any], ctx: StepContext) -> str:
        seen.attempt_started(ctx)
        return f"Hello, {input['full_name']}!"

    return flow


def crawl_site_flow(
    observer: AttemptObserver | None = None,
    *,
    flaky_page: int | None = 1,
    delay: float = 0.04,
) -> Flow:
    """``crawl_site``: list a site's pages, fetch each one (a map step), sum up.

    Input ``{"site": "example.org", "pages": 6}``. Fetching is simulated: each page takes
    ``delay`` to a few times ``delay`` seconds, and the page at index ``flaky_page`` fails
    its first attempt, so pgflow retries it: after two seconds, as its backoff is
    ``base_delay · 2^attempts`` and the flow's base delay is one second.
    """
    seen = observer or _Silent()
    flow = Flow(CRAWL_SITE, max_attempts=3, base_delay=1, timeout=10)

    @flow.array
    async def list_pages(input: dict[str, Any], ctx: StepContext) -> list[str]:
        seen.attempt_started(ctx)
        site, count = input["site"], int(input["pages"])
        return [f"https://{site}/page/{number}" for number in range(1, count + 1)]

    @flow.map(array=list_pages)
    async def fetch_page(url: str, ctx: StepContext) -> dict[str, Any]:
        seen.attempt_started(ctx)
        checksum = zlib.crc32(url.encode())
        await asyncio.sleep(delay * (1 + checksum % 4))
        if ctx.task_index == flaky_page and ctx.attempt == 1:
            error = TimeoutError(f"{url} did not answer (simulated)")
            seen.attempt_failed(ctx, error)
            raise error
        return {"url": url, "status": 200, "bytes": 2_000 + checksum % 30_000}

    @flow.step(depends_on=[fetch_page])
    async def summarize(input: dict[str, Any], ctx: StepContext) -> dict[str, int]:
        seen.attempt_started(ctx)
        pages = input["fetch_page"]
        return {"pages": len(pages), "bytes": sum(page["bytes"] for page in pages)}

    return flow

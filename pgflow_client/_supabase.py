"""The client over Supabase: RPCs through PostgREST, events through Realtime broadcast.

One public channel ``pgflow:run:<run_id>`` per run, joined (and confirmed) before the run is
started. Instead of the TypeScript client's fixed 300 ms pause after SUBSCRIBED, ``start_flow``
returns as soon as the RPC answers, and the run's snapshot is fetched again in the background
a little later (``reconcile_after``): whatever Realtime failed to route in the first moments of
a subscription is replayed from that snapshot through the same forward-only status filter.
When a channel errors, realtime-py rejoins it; on every re-SUBSCRIBED the client resyncs. A
channel closed by the server is rejoined by us, with bounded backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._transport import TransportHooks, rpc_error
from .errors import ClientClosed, SubscriptionError, TransportError

if TYPE_CHECKING:
    from realtime import AsyncRealtimeChannel, RealtimeSubscribeStates
    from supabase import AsyncClient

__all__ = ["SupabaseTransport"]

log = logging.getLogger("pgflow.client")

_TOPIC_PREFIX = "pgflow:run:"


@dataclass(eq=False)
class _Subscription:
    run_id: str
    channel: AsyncRealtimeChannel | None = None
    joined_once: bool = False
    closing: bool = False
    rejoin_task: asyncio.Task[None] | None = None
    first_state: asyncio.Future[tuple[Any, BaseException | None]] | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class SupabaseTransport:
    """Realtime channels and PostgREST RPCs through a supabase-py ``AsyncClient``."""

    def __init__(
        self,
        supabase: AsyncClient,
        hooks: TransportHooks,
        *,
        subscribe_timeout: float = 20.0,
        reconcile_after: Sequence[float] = (0.5, 2.0),
        rejoin_backoff: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self._supabase = supabase
        self._hooks = hooks
        self._subscribe_timeout = subscribe_timeout
        self._reconcile_after = tuple(reconcile_after)
        self._rejoin_backoff = rejoin_backoff
        self._subs: dict[str, _Subscription] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconnector: asyncio.Task[None] | None = None
        self._closed = False

    # -- subscriptions ------------------------------------------------------------------------

    def subscribed(self) -> frozenset[str]:
        return frozenset(self._subs)

    async def subscribe(self, run_id: str) -> None:
        if self._closed:
            raise ClientClosed("this pgflow client is closed")
        if run_id in self._subs:
            return
        sub = _Subscription(run_id)
        self._subs[run_id] = sub
        try:
            await self._join(sub)
        except BaseException:
            self._subs.pop(run_id, None)
            await self._leave(sub)
            raise

    async def _join(self, sub: _Subscription) -> None:
        from realtime import RealtimeSubscribeStates

        loop = asyncio.get_running_loop()
        sub.first_state = loop.create_future()
        channel = self._supabase.channel(_TOPIC_PREFIX + sub.run_id)
        sub.channel = channel
        channel.on_broadcast("*", lambda message: self._on_broadcast(sub, message))

        def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
            self._on_state(sub, state, error)

        try:
            async with asyncio.timeout(self._subscribe_timeout):
                await channel.subscribe(on_state)
                state, error = await sub.first_state
        except TimeoutError:
            raise SubscriptionError(
                f"realtime subscription to {_TOPIC_PREFIX}{sub.run_id} was not confirmed "
                f"within {self._subscribe_timeout:g} s"
            ) from None
        except SubscriptionError:
            raise
        except Exception as exc:
            raise SubscriptionError(
                f"realtime subscription to {_TOPIC_PREFIX}{sub.run_id} failed: {exc}"
            ) from exc
        if state != RealtimeSubscribeStates.SUBSCRIBED:
            raise SubscriptionError(
                f"realtime subscription to {_TOPIC_PREFIX}{sub.run_id} failed: "
                f"{getattr(state, 'value', state)}{f' ({error})' if error else ''}"
            )
        sub.joined_once = True

    def _on_broadcast(self, sub: _Subscription, message: Mapping[str, Any]) -> None:
        if sub.closing:
            return
        event = message.get("event")
        payload = message.get("payload")
        if not isinstance(event, str):
            log.warning("ignored a broadcast without an event name on run %s", sub.run_id)
            return
        try:
            self._hooks.deliver(sub.run_id, event, payload)
        except Exception:
            log.exception("delivering %s for run %s failed", event, sub.run_id)

    def _on_state(
        self, sub: _Subscription, state: RealtimeSubscribeStates, error: Exception | None
    ) -> None:
        from realtime import RealtimeSubscribeStates

        if sub.first_state is not None and not sub.first_state.done():
            sub.first_state.set_result((state, error))
            if state == RealtimeSubscribeStates.SUBSCRIBED:
                return
        if sub.closing or not sub.joined_once:
            return
        if state == RealtimeSubscribeStates.SUBSCRIBED:
            log.info("run %s: realtime channel rejoined; resyncing", sub.run_id)
            self._spawn(self._hooks.resync(sub.run_id))
        elif state == RealtimeSubscribeStates.CHANNEL_ERROR:
            log.info(
                "run %s: realtime channel error (%s); waiting for the rejoin", sub.run_id, error
            )
            if self._reconnector is None or self._reconnector.done():
                self._reconnector = self._spawn(self._keep_connecting())
        elif state in (RealtimeSubscribeStates.CLOSED, RealtimeSubscribeStates.TIMED_OUT):
            log.info("run %s: realtime channel %s; rejoining", sub.run_id, state)
            if sub.rejoin_task is None or sub.rejoin_task.done():
                sub.rejoin_task = self._spawn(self._rejoin(sub))

    async def _rejoin(self, sub: _Subscription) -> None:
        delay = self._rejoin_backoff[0]
        while not sub.closing and not self._closed:
            old = sub.channel
            if old is not None:
                with contextlib.suppress(Exception):
                    await self._supabase.realtime.remove_channel(old)
            try:
                await self._join(sub)
            except SubscriptionError as exc:
                log.warning("run %s: rejoin failed (%s); retrying in %.1fs", sub.run_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._rejoin_backoff[1])
                continue
            await self._hooks.resync(sub.run_id)
            return

    async def _keep_connecting(self) -> None:
        """Reconnect the socket for as long as it stays down.

        realtime-py gives up after ``max_retries`` failed attempts and never tries again, so
        after a long outage no channel would ever rejoin. Its connect lock makes calling
        ``connect`` safe while its own retries still run; once connected, it rejoins the
        errored channels, and each re-SUBSCRIBED channel resyncs its run.
        """
        realtime = self._supabase.realtime
        delay = self._rejoin_backoff[0]
        while not self._closed and self._subs:
            await asyncio.sleep(delay)
            if realtime.is_connected:
                return
            try:
                await realtime.connect()
            except Exception as exc:
                delay = min(delay * 2, self._rejoin_backoff[1])
                log.info("realtime is still unreachable (%s); retrying in %.1fs", exc, delay)
            else:
                return

    def after_start(self, run_id: str) -> None:
        """Schedule the background snapshot checks that stand in for a settle delay."""
        sub = self._subs.get(run_id)
        if sub is None:
            return
        loop = asyncio.get_running_loop()
        for delay in self._reconcile_after:
            handle = loop.call_later(delay, lambda: self._spawn(self._hooks.resync(run_id)))
            sub.timers.append(handle)

    async def unsubscribe(self, run_id: str) -> None:
        sub = self._subs.pop(run_id, None)
        if sub is not None:
            await self._leave(sub)

    async def _leave(self, sub: _Subscription) -> None:
        sub.closing = True
        for handle in sub.timers:
            handle.cancel()
        if sub.rejoin_task is not None and sub.rejoin_task is not asyncio.current_task():
            sub.rejoin_task.cancel()
        if sub.channel is not None:
            try:
                await self._supabase.realtime.remove_channel(sub.channel)
            except Exception as exc:
                log.debug("leaving %s%s failed: %s", _TOPIC_PREFIX, sub.run_id, exc)

    # -- RPCs ---------------------------------------------------------------------------------

    async def _rpc(self, function: str, params: dict[str, Any], flow_slug: str | None) -> Any:
        from postgrest.exceptions import APIError

        if self._closed:
            raise ClientClosed("this pgflow client is closed")
        try:
            response = await self._supabase.schema("pgflow").rpc(function, params).execute()
        except APIError as exc:
            raise rpc_error(
                function, exc.code, exc.message or str(exc), flow_slug=flow_slug
            ) from None
        except Exception as exc:
            raise TransportError(f"{function} failed: {exc}") from exc
        return response.data

    async def start_flow_with_states(
        self, flow_slug: str, input: Any, run_id: str
    ) -> dict[str, Any]:
        data = await self._rpc(
            "start_flow_with_states",
            {"flow_slug": flow_slug, "input": input, "run_id": run_id},
            flow_slug,
        )
        if not isinstance(data, dict) or "run" not in data:
            raise TransportError(f"start_flow_with_states returned no run for flow {flow_slug!r}")
        return data

    async def get_run_with_states(self, run_id: str) -> dict[str, Any] | None:
        data = await self._rpc("get_run_with_states", {"run_id": run_id}, None)
        if data is None or data == [] or (isinstance(data, dict) and data.get("run") is None):
            return None
        if not isinstance(data, dict):
            raise TransportError(f"get_run_with_states returned {type(data).__name__} for {run_id}")
        return data

    # -- lifecycle ----------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        subs = list(self._subs.values())
        self._subs.clear()
        for sub in subs:
            await self._leave(sub)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

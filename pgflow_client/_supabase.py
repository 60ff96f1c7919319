"""The client over Supabase: RPCs through PostgREST, events through Realtime broadcast.

One public channel ``pgflow:run:<run_id>`` per run, joined (and confirmed) before the run is
started or fetched. Instead of the TypeScript client's fixed 300 ms pause after SUBSCRIBED,
``start_flow`` and ``get_run`` return as soon as the RPC answers, and the run's snapshot is
fetched again in the background a little later (``reconcile_after``): whatever Realtime failed
to route in the first moments of a subscription is replayed from that snapshot through the
same forward-only status filter.

When the socket drops, realtime-py rejoins the channels; on every re-SUBSCRIBED the client
resyncs. A channel closed by the server, or whose join timed out, is rejoined by us with
bounded backoff. Either way the rejoin comes first and the snapshot after it: every
transition committed after the join is confirmed arrives live, every one before it is in the
snapshot, so nothing falls between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._transport import (
    TRACED_START,
    TransportHooks,
    json_params,
    nothing,
    rpc_error,
    subject_run,
    tracing_unavailable,
)
from .errors import ClientClosed, RpcError, SubscriptionError, TransportError

if TYPE_CHECKING:
    from realtime import AsyncRealtimeChannel, RealtimeSubscribeStates
    from supabase import AsyncClient

__all__ = ["SupabaseTransport"]

log = logging.getLogger("pgflow.client")

_TOPIC_PREFIX = "pgflow:run:"

Sleep = Callable[[float], Awaitable[object]]


@dataclass(eq=False)
class _Subscription:
    run_id: str
    channel: AsyncRealtimeChannel | None = None
    joined_once: bool = False
    closing: bool = False
    rejoin_task: asyncio.Task[None] | None = None
    timers: list[asyncio.Task[None]] = field(default_factory=list)


class SupabaseTransport:
    """Realtime channels and PostgREST RPCs through a supabase-py ``AsyncClient``.

    ``rejoin_backoff`` is ``(first, cap)``: the delay after a failed rejoin starts at
    ``first`` and doubles up to ``cap``. ``leave_timeout`` bounds how long leaving a channel
    waits for the server to confirm it. ``sleep`` is how every delay is waited for (the
    reconciliations, rejoin and reconnect backoff); tests pass one that records the delays.
    """

    def __init__(
        self,
        supabase: AsyncClient,
        hooks: TransportHooks,
        *,
        subscribe_timeout: float = 20.0,
        reconcile_after: Sequence[float] = (0.5, 2.0),
        rejoin_backoff: tuple[float, float] = (0.5, 10.0),
        leave_timeout: float = 5.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._supabase = supabase
        self._hooks = hooks
        self._subscribe_timeout = subscribe_timeout
        self._reconcile_after = tuple(reconcile_after)
        self._rejoin_backoff = rejoin_backoff
        self._leave_timeout = leave_timeout
        self._sleep = sleep
        self._subs: dict[str, _Subscription] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconnector: asyncio.Task[None] | None = None
        self._leaving: set[asyncio.Future[None]] = set()
        self._departing: dict[str, asyncio.Future[None]] = {}
        self._closed = False
        #: Whether start_flow_with_states_traced can be called: None until first tried.
        self._traced_start: bool | None = None
        self._warm_up()

    def _warm_up(self) -> None:
        """Pay supabase-py's one-time costs here rather than inside the first ``start_flow``.

        Its PostgREST client is built on first use (an httpx client with an SSL context: tens
        of milliseconds of CPU), and the realtime and postgrest modules are imported lazily.
        """
        for module in ("postgrest.exceptions", "realtime"):
            importlib.import_module(module)
        _ = self._supabase.postgrest

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
            if self._subs.get(run_id) is sub:
                del self._subs[run_id]
            await self._leave(sub)
            raise

    async def _join(self, sub: _Subscription) -> None:
        """Join the run's channel and wait for the server's answer; on failure nothing of
        this attempt is left (realtime-py would otherwise keep retrying the join itself)."""
        from realtime import RealtimeSubscribeStates

        loop = asyncio.get_running_loop()
        first_state: asyncio.Future[tuple[Any, BaseException | None]] = loop.create_future()
        channel: AsyncRealtimeChannel | None = None

        def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
            if not first_state.done():
                first_state.set_result((state, error))
                return  # the join's own outcome is handled below
            if channel is not None:
                self._on_state(sub, channel, state, error)

        try:
            try:
                async with asyncio.timeout(self._subscribe_timeout):
                    # realtime-py keeps one channel per topic: an earlier subscription of
                    # this run that is still being left must be gone before a new one.
                    departing = self._departing.get(sub.run_id)
                    if departing is not None:
                        await asyncio.shield(departing)
                    channel = joining = self._supabase.channel(_TOPIC_PREFIX + sub.run_id)
                    sub.channel = joining
                    joining.on_broadcast(
                        "*", lambda message: self._on_broadcast(sub, joining, message)
                    )
                    await joining.subscribe(on_state)
                    state, error = await first_state
            except TimeoutError:
                raise SubscriptionError(
                    f"realtime subscription to {_TOPIC_PREFIX}{sub.run_id} was not confirmed "
                    f"within {self._subscribe_timeout:g} s"
                ) from None
            except Exception as exc:
                raise SubscriptionError(
                    f"realtime subscription to {_TOPIC_PREFIX}{sub.run_id} failed: {exc}"
                ) from exc
            if state != RealtimeSubscribeStates.SUBSCRIBED:
                raise SubscriptionError(
                    f"realtime subscription to {_TOPIC_PREFIX}{sub.run_id} failed: "
                    f"{getattr(state, 'value', state)}{f' ({error})' if error else ''}"
                )
        except BaseException:
            if channel is not None:
                if sub.channel is channel:
                    sub.channel = None
                await self._remove(channel)
            raise
        sub.joined_once = True

    def _on_broadcast(
        self, sub: _Subscription, channel: AsyncRealtimeChannel, message: Mapping[str, Any]
    ) -> None:
        if sub.closing or channel is not sub.channel:
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
        self,
        sub: _Subscription,
        channel: AsyncRealtimeChannel,
        state: RealtimeSubscribeStates,
        error: Exception | None,
    ) -> None:
        """A confirmed channel changed state: resync after realtime-py rejoined it, rejoin it
        ourselves when it was closed or timed out. Channels already replaced are ignored."""
        from realtime import RealtimeSubscribeStates

        if sub.closing or self._closed or channel is not sub.channel:
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
        """Join a fresh channel, backing off between failed attempts, then resync the run.

        Rejoining first and fetching the snapshot second leaves no gap: a transition is
        either committed before the snapshot is read (and in it) or after the join was
        confirmed (and delivered live); the status filter drops the overlap.
        """
        delay = self._rejoin_backoff[0]
        old, sub.channel = sub.channel, None
        if old is not None:
            await self._remove(old)
        while not sub.closing and not self._closed:
            try:
                await self._join(sub)
            except SubscriptionError as exc:
                log.warning("run %s: rejoin failed (%s); retrying in %.1fs", sub.run_id, exc, delay)
                await self._sleep(delay)
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
            await self._sleep(delay)
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
        for delay in self._reconcile_after:
            sub.timers.append(self._spawn(self._reconcile(sub, delay)))

    async def _reconcile(self, sub: _Subscription, delay: float) -> None:
        await self._sleep(delay)
        if not sub.closing and not self._closed:
            await self._hooks.resync(sub.run_id)

    def unsubscribe(self, run_id: str) -> Coroutine[Any, Any, None]:
        """Stop delivering the run's events now; awaiting the result leaves its channel."""
        sub = self._subs.pop(run_id, None)
        if sub is None:
            return nothing()
        sub.closing = True
        try:
            departed = asyncio.get_running_loop().create_future()
        except RuntimeError:  # no loop to run the leave on; nothing can rejoin meanwhile
            return self._leave(sub)
        self._departing[run_id] = departed
        return self._depart(sub, departed)

    async def _depart(self, sub: _Subscription, departed: asyncio.Future[None]) -> None:
        try:
            await self._leave(sub)
        finally:
            if not departed.done():
                departed.set_result(None)
            if self._departing.get(sub.run_id) is departed:
                del self._departing[sub.run_id]

    async def _leave(self, sub: _Subscription) -> None:
        sub.closing = True
        for task in sub.timers:
            task.cancel()
        if sub.rejoin_task is not None and sub.rejoin_task is not asyncio.current_task():
            sub.rejoin_task.cancel()
        channel, sub.channel = sub.channel, None
        if channel is not None:
            await self._remove(channel)

    async def _remove(self, channel: AsyncRealtimeChannel) -> None:
        """Leave ``channel`` and wait (at most ``leave_timeout``) for the server to confirm.

        realtime-py only sends the leave; waiting for its reply means that once a refused
        call or an ``aclose`` returns, the server no longer counts the channel as joined.
        When it was the socket's last channel, realtime-py closes the socket, after the
        leave, and no reply comes.
        """
        from realtime import RealtimeSubscribeStates

        realtime = self._supabase.realtime
        loop = asyncio.get_running_loop()
        left: asyncio.Future[None] = loop.create_future()
        previous = channel.subscribe_callback

        def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
            if state == RealtimeSubscribeStates.CLOSED and not left.done():
                left.set_result(None)
            if previous is not None:
                previous(state, error)

        joined = realtime.channels.get(channel.topic) is channel
        channel.subscribe_callback = on_state
        self._leaving.add(left)
        try:
            try:
                await realtime.remove_channel(channel)
            except Exception as exc:
                log.debug("leaving %s failed: %s", channel.topic, exc)
                return
            if not realtime.is_connected:
                # The socket closed after the leaves sent on it: the server saw them first.
                for waiting in self._leaving:
                    if not waiting.done():
                        waiting.set_result(None)
            if not joined:
                return
            try:
                async with asyncio.timeout(self._leave_timeout):
                    await left
            except TimeoutError:
                log.debug("leaving %s was not confirmed in time", channel.topic)
        finally:
            self._leaving.discard(left)

    # -- RPCs ---------------------------------------------------------------------------------

    async def _rpc(
        self,
        function: str,
        params: dict[str, Any],
        flow_slug: str | None,
        run_id: str | None = None,
    ) -> Any:
        from postgrest.exceptions import APIError

        if self._closed:
            raise ClientClosed("this pgflow client is closed")
        try:
            response = await self._supabase.schema("pgflow").rpc(function, params).execute()
        except APIError as exc:
            raise rpc_error(
                function, exc.code, exc.message or str(exc), flow_slug=flow_slug, run_id=run_id
            ) from None
        except Exception as exc:
            raise TransportError(f"{function} failed: {exc}") from exc
        return response.data

    async def start_flow_with_states(
        self, flow_slug: str, input: Any, run_id: str, *, trace: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"flow_slug": flow_slug, "input": input, "run_id": run_id}
        trace = trace or {}
        traceparent = trace.get("traceparent")
        data: Any = None
        traced = False
        if traceparent and self._traced_start is not False:
            extra = {"traceparent": traceparent}
            if trace.get("tracestate"):
                extra["tracestate"] = trace["tracestate"]
            try:
                data = await self._rpc(TRACED_START, {**params, **extra}, flow_slug)
            except RpcError as exc:
                if not tracing_unavailable(exc.code):
                    raise
                # Refused before anything ran: no such function, or no EXECUTE on it.
                self._traced_start = False
                log.info(
                    "runs start without their trace context: pgflow.%s cannot be called (%s)",
                    TRACED_START,
                    exc,
                )
            else:
                traced = self._traced_start = True
        if not traced:
            data = await self._rpc("start_flow_with_states", params, flow_slug)
        if not isinstance(data, dict) or "run" not in data:
            raise TransportError(f"start_flow_with_states returned no run for flow {flow_slug!r}")
        return data

    async def call_rows(self, function: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        data = await self._rpc(function, json_params(params), None, subject_run(params))
        if data is None:
            return []
        rows = [data] if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise TransportError(f"{function} returned {type(data).__name__}, not rows")
        return rows

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
            sub.closing = True
        await asyncio.gather(*(self._leave(sub) for sub in subs), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

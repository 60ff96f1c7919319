"""Per-object callback lists: sync callbacks run inline, async ones become tasks.

A callback that raises is logged and never disturbs the other callbacks or the code that
delivered the event.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Generic, TypeAlias, TypeVar

__all__ = ["Callback", "CallbackRegistry", "Unsubscribe", "spawn"]

logger = logging.getLogger("pgflow.client")

E = TypeVar("E")

Callback: TypeAlias = Callable[[E], Awaitable[None] | None]
"""A function called with each event; it may be a coroutine function."""

Unsubscribe: TypeAlias = Callable[[], None]
"""Removes the callback it was returned for; calling it again does nothing."""


def spawn(awaitable: Awaitable[Any], tasks: set[asyncio.Future[Any]], what: str) -> None:
    """Run ``awaitable`` as a task on the running loop, holding it in ``tasks`` until done.

    Failures are logged with ``what`` (a description of the callback and its target).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        logger.error("Cannot run %s: it is async and no event loop is running", what)
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        return
    task = asyncio.ensure_future(awaitable, loop=loop)
    tasks.add(task)
    task.add_done_callback(partial(_task_done, tasks, what))


def _task_done(tasks: set[asyncio.Future[Any]], what: str, task: asyncio.Future[Any]) -> None:
    tasks.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("%s raised", what, exc_info=exc)


class _Entry(Generic[E]):
    __slots__ = ("active", "callback", "event")

    def __init__(self, event: str, callback: Callback[E]) -> None:
        self.event = event
        self.callback = callback
        self.active = True


class CallbackRegistry(Generic[E]):
    """The callbacks registered with ``.on()`` on one run or step.

    ``events`` are the names ``.on()`` accepts besides ``'*'``; ``owner`` describes the
    run or step in log messages; ``on_removed`` is called after each actual unsubscribe.
    """

    def __init__(self, events: tuple[str, ...], owner: str, on_removed: Callable[[], None]) -> None:
        self._events = (*events, "*")
        self._owner = owner
        self._on_removed = on_removed
        self._entries: list[_Entry[E]] = []
        self._tasks: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def check_event(self, event: str) -> None:
        """Raise ``ValueError`` unless ``event`` is a name this registry accepts."""
        if event not in self._events:
            allowed = ", ".join(repr(e) for e in self._events)
            raise ValueError(
                f"unknown event {event!r} for {self._owner}; expected one of {allowed}"
            )

    def add(self, event: str, callback: Callback[E]) -> Unsubscribe:
        """Register ``callback`` for ``event`` (or ``'*'``) and return its unsubscribe function."""
        self.check_event(event)
        entry = _Entry(event, callback)
        self._entries.append(entry)

        def unsubscribe() -> None:
            if entry.active:
                entry.active = False
                self._entries.remove(entry)
                self._on_removed()

        return unsubscribe

    def emit(self, event_name: str, event: E) -> None:
        """Call the callbacks for ``event_name``, then the ``'*'`` ones."""
        specific = [e for e in self._entries if e.event == event_name]
        wildcard = [e for e in self._entries if e.event == "*"]
        for entry in specific + wildcard:
            if entry.active:
                self._invoke(entry.callback, event_name, event)

    def clear(self) -> None:
        """Drop every callback; their unsubscribe functions become no-ops."""
        for entry in self._entries:
            entry.active = False
        self._entries.clear()

    def _invoke(self, callback: Callback[E], event_name: str, event: E) -> None:
        what = f"callback {callback!r} for {event_name!r} event of {self._owner}"
        try:
            result = callback(event)
        except Exception:
            logger.exception("%s raised", what)
            return
        if inspect.isawaitable(result):
            spawn(result, self._tasks, what)

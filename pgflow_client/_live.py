"""Live views for Jupyter: an ipywidgets HTML widget that re-renders a run on every event.

ipywidgets is optional (``pip install 'pgflow-py[notebook]'``); it is imported only when a
view is made.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from ._callbacks import Unsubscribe
from ._run import FlowRun
from ._sync import SyncFlowRun

__all__ = ["LiveRunView", "live"]

T = TypeVar("T")

INSTALL_HINT = "pip install 'pgflow-py[notebook]'"


def _import_widgets() -> Any:
    try:
        return importlib.import_module("ipywidgets")
    except ImportError as exc:
        raise ImportError(
            f"live views of pgflow runs need ipywidgets, which is not installed: {INSTALL_HINT}",
            name="ipywidgets",
        ) from exc


def _inline(func: Callable[..., T], *args: Any) -> T:
    return func(*args)


class LiveRunView:
    """An HTML widget showing a run (its table of steps) that updates as events arrive.

    Works with a :class:`FlowRun` (events come on the loop that feeds it, e.g. a notebook's)
    and with a :class:`SyncFlowRun` (events come on its client's loop thread, from where the
    widget is updated). The view listens to the run and every step only until the run ends
    (or :meth:`close`), so it keeps a finished run from being disposed no longer than that.
    Displaying the view (the last expression of a cell, or ``display(view)``) shows
    :attr:`widget`; put :attr:`widget` in other widget layouts as it is.
    """

    def __init__(self, run: FlowRun | SyncFlowRun) -> None:
        widgets = _import_widgets()
        if isinstance(run, SyncFlowRun):
            self._run = run.async_run
            self._on_loop: Callable[..., Any] = run._portal.call
        else:
            self._run = run
            self._on_loop = _inline
        self._unsubscribes: list[Unsubscribe] = []
        self._watched_steps: set[str] = set()
        self._widget: Any = widgets.HTML()
        self._on_loop(self._attach)

    @property
    def widget(self) -> Any:
        """The ``ipywidgets.HTML`` widget whose value is the run's HTML table."""
        return self._widget

    @property
    def run(self) -> FlowRun:
        """The run shown (for a :class:`SyncFlowRun`, the :class:`FlowRun` it wraps)."""
        return self._run

    @property
    def active(self) -> bool:
        """Whether the view still listens for events (until the run ends or is disposed)."""
        return bool(self._unsubscribes) and not self._run.disposed

    def refresh(self) -> None:
        """Render the run's current state now."""
        self._on_loop(self._render)

    def close(self) -> None:
        """Stop listening; the widget keeps showing the last state rendered."""
        self._on_loop(self._detach)

    def _ipython_display_(self) -> None:
        display: Any = importlib.import_module("IPython.display").display
        display(self._widget)

    def __repr__(self) -> str:
        state = "live" if self.active else "ended"
        return f"<LiveRunView run_id={self._run.run_id!r} {state}>"

    # -- on the run's loop --------------------------------------------------------------------

    def _attach(self) -> None:
        self._render()
        if self._run.disposed or self._run.status.is_terminal:
            return
        self._unsubscribes.append(self._run.on("*", self._run_event))
        self._watch_new_steps()

    def _watch_new_steps(self) -> None:
        for slug, step in list(self._run.steps.items()):
            if slug not in self._watched_steps:
                self._watched_steps.add(slug)
                self._unsubscribes.append(step.on("*", self._step_event))

    def _step_event(self, _event: object) -> None:
        self._watch_new_steps()
        self._render()

    def _run_event(self, _event: object) -> None:
        self._render()
        if self._run.status.is_terminal:
            self._detach()
        else:
            self._watch_new_steps()

    def _detach(self) -> None:
        unsubscribes, self._unsubscribes = self._unsubscribes, []
        for unsubscribe in unsubscribes:
            unsubscribe()

    def _render(self) -> None:
        self._widget.value = self._run._repr_html_()


def live(run: FlowRun | SyncFlowRun) -> LiveRunView:
    """A :class:`LiveRunView` of ``run``: in a notebook, ``pgflow_client.live(run)`` shows it.

    Raises ``ImportError`` when ipywidgets is not installed.
    """
    return LiveRunView(run)

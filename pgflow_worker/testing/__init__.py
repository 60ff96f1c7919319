"""Helpers for testing flows: run one on a real worker, or unit-test one handler.

With pytest, the ``pgflow_run`` and ``pgflow_database`` fixtures come with the package::

    def test_greeting(pgflow_run):
        run = pgflow_run(greet_flow, {"name": "Ada"})
        assert run.status == "completed"
        assert run.step("greeting").output == "Hello, Ada!"

Without pytest, :class:`PgflowTestServer` hands out databases and :class:`FlowRunner` runs
flows on them.
"""

from ._context import make_context
from ._runner import FlowRunner, FlowRunResult, StepResult, run_flow
from ._server import PgflowTestServer

__all__ = [
    "FlowRunResult",
    "FlowRunner",
    "PgflowTestServer",
    "StepResult",
    "make_context",
    "run_flow",
]

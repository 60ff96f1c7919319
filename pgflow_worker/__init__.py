"""pgflow-py worker: define flows in Python, compile them to pgflow SQL, and run their steps.

::

    from pgflow_worker import Flow, FlowWorker

    flow = Flow("greet_user")

    @flow.step
    def full_name(input, ctx):
        return f"{input['first_name']} {input['last_name']}"

    @flow.step(depends_on=[full_name])
    async def greeting(input):
        return f"Hello, {input['full_name']}!"

    await FlowWorker(flow, "postgresql://...").run()
"""

from ._compiler import compile_flow, migration_filename, render_migration
from ._context import StepContext
from ._database import MigrationReport, migrate
from ._flow import (
    Flow,
    FlowOptions,
    JsonPattern,
    StepDefinition,
    StepOptions,
    StepRef,
    WhenExhaustedMode,
    WhenUnmetMode,
)
from ._settings import WorkerSettings
from ._shape import EnsureResult, FlowShape, compare_flow_shapes, ensure_flow, flow_shape
from ._sql_client import SqlCallStats
from ._tools import LocalPostgres
from ._worker import FlowWorker, run_worker
from .errors import (
    DashboardError,
    DatabaseSetupError,
    FlowDefinitionError,
    FlowRunTimeout,
    FlowShapeMismatch,
    HandlerContextError,
    HandlerInputError,
    HandlerOutputError,
    MigrationError,
    PgflowError,
    PgmqUnavailable,
    PostgresNotFound,
    PostgresStartError,
    ServerFolderInUse,
    ServerNotRunning,
    StepNotFound,
    WorkerError,
)

__all__ = [
    "DashboardError",
    "DatabaseSetupError",
    "EnsureResult",
    "Flow",
    "FlowDefinitionError",
    "FlowOptions",
    "FlowRunTimeout",
    "FlowShape",
    "FlowShapeMismatch",
    "FlowWorker",
    "HandlerContextError",
    "HandlerInputError",
    "HandlerOutputError",
    "JsonPattern",
    "LocalPostgres",
    "MigrationError",
    "MigrationReport",
    "PgflowError",
    "PgmqUnavailable",
    "PostgresNotFound",
    "PostgresStartError",
    "ServerFolderInUse",
    "ServerNotRunning",
    "SqlCallStats",
    "StepContext",
    "StepDefinition",
    "StepNotFound",
    "StepOptions",
    "StepRef",
    "WhenExhaustedMode",
    "WhenUnmetMode",
    "WorkerError",
    "WorkerSettings",
    "compare_flow_shapes",
    "compile_flow",
    "ensure_flow",
    "flow_shape",
    "migrate",
    "migration_filename",
    "render_migration",
    "run_worker",
]

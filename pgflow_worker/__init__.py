"""pgflow-py worker: define flows in Python, compile them to pgflow SQL, and run their steps."""

from ._database import LocalPostgres, MigrationReport, migrate
from .errors import (
    DatabaseSetupError,
    FlowDefinitionError,
    FlowShapeMismatch,
    HandlerOutputError,
    MigrationError,
    PgflowError,
    WorkerError,
)

__all__ = [
    "DatabaseSetupError",
    "FlowDefinitionError",
    "FlowShapeMismatch",
    "HandlerOutputError",
    "LocalPostgres",
    "MigrationError",
    "MigrationReport",
    "PgflowError",
    "WorkerError",
    "migrate",
]

"""The public names of both packages: what DESIGN's contract promises, and nothing private.

The expected sets are written out here so that adding or removing a public name is a
deliberate change to this file as well as to ``__init__``.
"""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest

import pgflow_client
import pgflow_client.errors
import pgflow_worker
import pgflow_worker.errors

# The names DESIGN.md's public contract spells out for each package.
CONTRACT = {
    "pgflow_client": {
        "PgflowClient",
        "FlowRun",
        "FlowStep",
        "FlowRunStatus",
        "FlowStepStatus",
        "WaitCancelled",
        "WaitTimeout",
        "StatusUnreachable",
        "SyncPgflowClient",
    },
    "pgflow_worker": {"Flow", "compile_flow", "FlowWorker", "StepContext"},
}

EXPECTED = {
    "pgflow_client": CONTRACT["pgflow_client"]
    | {
        "ClientClosed",
        "FlowEvent",
        "FlowNotFound",
        "FlowRunEvent",
        "FlowTaskStatus",
        "InvalidFlowInput",
        "InvalidRunData",
        "InvalidRunFilter",
        "InvalidRunId",
        "LiveRunView",
        "PgflowClientError",
        "RpcError",
        "RunAlreadyExists",
        "RunAlreadyFinished",
        "RunCompletedEvent",
        "RunFailedEvent",
        "RunNotFailed",
        "RunNotFound",
        "RunRecord",
        "RunStartedEvent",
        "SkipReason",
        "StepCompletedEvent",
        "StepEvent",
        "StepFailedEvent",
        "StepSkippedEvent",
        "StepStartedEvent",
        "ListenUnavailable",
        "SubscriptionError",
        "SyncFlowRun",
        "SyncFlowStep",
        "TransportError",
        "Unsubscribe",
        "live",
    },
    "pgflow_worker": CONTRACT["pgflow_worker"]
    | {
        "DatabaseSetupError",
        "EnsureResult",
        "FlowDefinitionError",
        "FlowRunTimeout",
        "FlowOptions",
        "FlowShape",
        "FlowShapeMismatch",
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
        "DashboardError",
        "SqlCallStats",
        "StepDefinition",
        "StepNotFound",
        "StepOptions",
        "StepRef",
        "WhenExhaustedMode",
        "WhenUnmetMode",
        "WorkerError",
        "WorkerSettings",
        "compare_flow_shapes",
        "ensure_flow",
        "flow_shape",
        "migrate",
        "migration_filename",
        "render_migration",
        "run_worker",
    },
}

PACKAGES = [(pgflow_client, pgflow_client.errors), (pgflow_worker, pgflow_worker.errors)]


@pytest.mark.parametrize(("package", "errors"), PACKAGES, ids=lambda m: m.__name__)
def test_all_is_exactly_the_public_names(package: ModuleType, errors: ModuleType) -> None:
    assert set(package.__all__) == EXPECTED[package.__name__]
    assert CONTRACT[package.__name__] <= set(package.__all__)
    assert len(package.__all__) == len(set(package.__all__)), "a name is listed twice"


@pytest.mark.parametrize(("package", "errors"), PACKAGES, ids=lambda m: m.__name__)
def test_exported_members_are_public_and_present(package: ModuleType, errors: ModuleType) -> None:
    for name in package.__all__:
        member = getattr(package, name)
        # Like httpx: everything exported says it belongs to the public package.
        if inspect.isclass(member) or inspect.isfunction(member):
            assert member.__module__.startswith(package.__name__), name


@pytest.mark.parametrize(("package", "errors"), PACKAGES, ids=lambda m: m.__name__)
def test_every_error_class_is_exported(package: ModuleType, errors: ModuleType) -> None:
    """A user can catch every exception the package can raise without a private import."""
    error_classes = {
        name
        for name, member in vars(errors).items()
        if inspect.isclass(member)
        and issubclass(member, BaseException)
        and member.__module__ == errors.__name__
    }
    assert error_classes, "the errors module defines no exceptions"
    assert set(errors.__all__) == error_classes
    assert error_classes <= set(package.__all__), error_classes - set(package.__all__)

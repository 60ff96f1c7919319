"""Fixtures for the interop tests: pgflow's TypeScript packages, installed once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop._node import NodeUnavailable, node_project


@pytest.fixture(scope="session")
def ts_packages() -> Path:
    """The scratch npm project holding @pgflow/client, @pgflow/core and the scripts of js/."""
    try:
        return node_project()
    except NodeUnavailable as exc:
        pytest.skip(f"pgflow's TypeScript packages are unavailable: {exc}")

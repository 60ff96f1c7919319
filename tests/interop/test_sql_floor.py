"""The floor benchmark's completion calls do what it says they do, on a tiny map.

``benchmarks/sql_floor.py`` bounds the SQL loop's map by replacing ``complete_task`` with the
least SQL that records a completion; its claim only holds while that SQL still completes each
task and archives its message, on the schema as it is now.
"""

from __future__ import annotations

import pytest

from benchmarks.sql_floor import drain_map
from tests._stack import Stack


@pytest.mark.parametrize("variant", ["ours", "least", "none"])
def test_every_variant_drains_the_map(stack: Stack, variant: str) -> None:
    lap = drain_map(stack, variant, size=25, batch=10)
    assert lap.tasks == 25
    assert lap.complete_seconds > 0

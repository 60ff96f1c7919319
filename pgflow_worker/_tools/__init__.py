"""The application around the library: the ``pgflow`` CLI, the demo and its flows, and the
local PostgreSQL servers they (and the test suite) start."""

from .cluster import (
    FAST_SETTINGS,
    LocalPostgres,
    bindir_for_pgmq_extension,
    choose_bindir,
    find_bindir,
    pgmq_extension_possible,
    sharedir_of,
)
from .embedded import EmbeddedPostgres, pgserver_bindir

__all__ = [
    "FAST_SETTINGS",
    "EmbeddedPostgres",
    "LocalPostgres",
    "bindir_for_pgmq_extension",
    "choose_bindir",
    "find_bindir",
    "pgmq_extension_possible",
    "pgserver_bindir",
    "sharedir_of",
]

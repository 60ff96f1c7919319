"""The ``pgflow`` command line."""

from __future__ import annotations

import typer

app = typer.Typer(help="pgflow-py: Postgres-native workflows for Python.", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """pgflow-py: Postgres-native workflows for Python."""


def main() -> None:
    """Entry point of the ``pgflow`` console script."""
    app()

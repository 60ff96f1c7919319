"""``python -m pgflow_worker`` runs the ``pgflow`` command line."""

from ._tools.cli import main

main()

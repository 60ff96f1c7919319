"""``python -m pgflow_worker`` runs the ``pgflow`` command line."""

from ._cli import main

main()

"""``python -m edrefine`` runs the command line."""

from .cli import main

main()

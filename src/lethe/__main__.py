"""``python -m lethe``: the ``lethe`` command."""
from .cli.commands import main

main()

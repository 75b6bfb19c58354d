"""``python -m lethe``: the ``lethe`` command."""
from .cli import main

main()

"""``python -m lethe``: the ``lethe`` command."""
from .cli.main import main

main()

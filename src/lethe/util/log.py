"""Lethe's log: what a run decided (model, prompt format, records read, options resolved) and how long the
slow parts took, at DEBUG level under the ``lethe`` logger. A library stays silent unless its user configures
logging; the command line's ``-v`` shows it (``-q`` keeps only warnings)."""
from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("lethe")
LOGGER.addHandler(logging.NullHandler())


def get(name: str) -> logging.Logger:
    """The logger of one module, ``lethe.<name>``."""
    return logging.getLogger(f"lethe.{name}")


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test's capture, a redirected stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(*, verbose: bool = False, quiet: bool = False) -> None:
    """The command line's levels: DEBUG with ``-v``, WARNING with ``-q``, else INFO; one stderr handler."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    for handler in [h for h in LOGGER.handlers if getattr(h, "lethe_cli", False)]:
        LOGGER.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s: %(message)s", "%H:%M:%S"))
    handler.lethe_cli = True
    LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    LOGGER.propagate = False  # a root handler another library installed would print every line twice

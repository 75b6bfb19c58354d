"""The `lethe` command: parsers and options that only parse, then one call into the API per command."""
from .commands import build_parser, main

__all__ = ["build_parser", "main"]

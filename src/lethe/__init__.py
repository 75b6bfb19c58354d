"""Lethe: make a language model forget what it should not know, and measure that it did."""
from .api import demo, evaluate, finetune, unlearn
from .errors import LetheError

__version__ = "0.1.0"
__all__ = ["demo", "evaluate", "finetune", "unlearn", "LetheError", "__version__"]

"""Objectives: pure functions of tensors (logits, labels, cached reference values) -> scalar.

A loss's positional parameter names are the inputs it needs (see ``INPUTS``); its keyword-only
parameters are its options. The engine computes only the inputs a method needs.
"""
from .registry import FORGET_LOSSES, INPUTS, REGULARIZERS, LossSpec
from .method import Method, parse_method
from . import forget, regularize  # noqa: F401  (registers the losses)

__all__ = ["FORGET_LOSSES", "REGULARIZERS", "INPUTS", "LossSpec", "Method", "parse_method"]

"""Objectives: losses as pure functions of tensors (logits, log-probs, hidden states) -> scalar.

A function loss's positional parameter names are the inputs it needs (``inputs.py``); its
keyword-only parameters are its options. A :class:`Loss` subclass declares its inputs after a
set-up step and may choose which parameters train (RMU). The engine computes only what is asked.
"""
from . import altpo, forget, pdu, regularize, rmu  # noqa: F401  (registers the losses)
from .inputs import Need
from .loss import FunctionLoss, Loss, build_loss
from .method import Method, parse_method
from .registry import FORGET_LOSSES, REGULARIZERS, LossEntry

__all__ = ["FORGET_LOSSES", "REGULARIZERS", "Need", "Loss", "FunctionLoss", "LossEntry", "build_loss", "Method",
           "parse_method"]

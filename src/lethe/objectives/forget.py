"""Forget losses (SPEC §1): what to do on the forget set. Lower is better for the optimiser."""
from __future__ import annotations

import torch

from .registry import FORGET_LOSSES
from .tokens import mean_nll


@FORGET_LOSSES.register("ga")
def ga(forget_logits, forget_labels):
    """Gradient ascent: minus the token-mean cross-entropy of the forget answer (unbounded below)."""
    return -mean_nll(forget_logits, forget_labels)

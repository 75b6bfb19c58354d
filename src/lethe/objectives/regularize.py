"""Regularizers (SPEC §2): what to do on the retain set."""
from __future__ import annotations

from .registry import REGULARIZERS
from .tokens import mean_nll


@REGULARIZERS.register("gd")
def gd(retain_logits, retain_labels):
    """Gradient descent: token-mean cross-entropy of the retain answer (question masked)."""
    return mean_nll(retain_logits, retain_labels)

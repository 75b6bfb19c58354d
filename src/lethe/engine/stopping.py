"""The EL/MA stopping rule (IHL seed App. G-H, from Jang et al. 2023).

Before unlearning, measure mean EL_10 and MA on sequences the model never trained on; stop at
the first epoch (at least ``min_epochs``) where the forget set's mean EL_10 and MA are both at
or below those values. A run that never meets it is unsuccessful.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExtractionThresholds:
    el: float
    ma: float


def meets_threshold(el: float, ma: float, thresholds: ExtractionThresholds) -> bool:
    return el <= thresholds.el and ma <= thresholds.ma


def should_stop(epoch: int, el: float, ma: float, thresholds: ExtractionThresholds, min_epochs: int = 1) -> bool:
    return epoch >= min_epochs and meets_threshold(el, ma, thresholds)


def epochs_to_success(history: list[tuple[float, float]], thresholds: ExtractionThresholds,
                      min_epochs: int = 1) -> int | None:
    """First epoch (1-based) at which the rule stops, given per-epoch (EL, MA); None if never."""
    for epoch, (el, ma) in enumerate(history, start=1):
        if should_stop(epoch, el, ma, thresholds, min_epochs):
            return epoch
    return None

"""Which epoch's model a run keeps: by default the last; with a criterion, the best epoch by it.

Criteria (``--select-by``):

- ``last``: the last epoch (default);
- ``fe``: the highest forget efficacy (FE) among epochs whose model utility (MU) stays at or above
  ``mu_floor`` (default: 0.9 × the starting model's MU when the start was scored, else no floor);
- ``fq``: the highest forget quality (FQ; needs a retain model);
- ``indistinguishable``: the first epoch whose Min-K% membership test cannot tell the forget set from the
  holdout set (``mia/min_k_KS_p`` ≥ 0.05; needs ``--holdout``);
- ``max:KEY`` / ``min:KEY``: the epoch with the largest / smallest recorded metric KEY (e.g.
  ``min:forget/ROUGE``).

Every process reads the same gathered metrics, so every process decides the same. Epoch 0 (the starting
model) is never selected: a run that selects nothing keeps its last epoch and says why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..util.errors import LetheError

KINDS = ("last", "fe", "fq", "indistinguishable")


@dataclass(frozen=True)
class Selection:
    by: str = "last"
    mu_floor: float | None = None

    def __post_init__(self):
        if self.by not in KINDS and not (self.by.startswith(("max:", "min:")) and len(self.by) > 4):
            raise LetheError(f"--select-by: expected one of {', '.join(KINDS)}, max:KEY or min:KEY, got {self.by!r}")
        if self.mu_floor is not None and not (math.isfinite(self.mu_floor) and 0 <= self.mu_floor <= 1):
            raise LetheError(f"--select-mu-floor: expected a number in [0, 1], got {self.mu_floor}")

    @property
    def active(self) -> bool:
        return self.by != "last"

    def needs(self) -> list[str]:
        """The metric keys the criterion reads (checked against what the run's evaluation records)."""
        return {"fe": ["FE", "MU"], "fq": ["FQ"], "indistinguishable": ["mia/min_k_KS_p"]}.get(
            self.by, [self.by[4:]] if self.by.startswith(("max:", "min:")) else [])

    def value(self, epoch: int, metrics: dict, start: dict | None = None) -> float | None:
        """This epoch's score (higher is better), or None when it is not eligible."""
        def num(key):
            v = metrics.get(key)
            return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

        if epoch < 1:
            return None
        if self.by == "fe":
            fe, mu = num("FE"), num("MU")
            floor = self.mu_floor
            if floor is None and start and isinstance(start.get("MU"), (int, float)):
                floor = 0.9 * start["MU"]
            if fe is None or (floor is not None and (mu is None or mu < floor)):
                return None
            return fe
        if self.by == "fq":
            return num("FQ")
        if self.by == "indistinguishable":
            p = num("mia/min_k_KS_p")
            return -float(epoch) if p is not None and p >= 0.05 else None
        v = num(self.by[4:])
        return None if v is None else (v if self.by.startswith("max:") else -v)

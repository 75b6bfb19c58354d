"""Fixed, seeded pairing of forget examples with retain examples (not re-drawn each epoch)."""
from __future__ import annotations

import random


def pair_retain(n_forget: int, n_retain: int, seed: int, per_forget: int = 1) -> list[list[int]]:
    """Retain indices for each forget index: ``per_forget`` consecutive entries of a seeded
    permutation, cycled when retain is smaller. ``per_forget=1`` pairs each forget example with one
    retain example; a larger value lets the regularizer see more of the retain set per step.
    """
    if n_retain <= 0:
        return [[] for _ in range(n_forget)]
    if per_forget < 1:
        raise ValueError(f"per_forget must be at least 1, got {per_forget}")
    order = list(range(n_retain))
    random.Random(seed).shuffle(order)
    return [[order[(i * per_forget + j) % n_retain] for j in range(per_forget)] for i in range(n_forget)]

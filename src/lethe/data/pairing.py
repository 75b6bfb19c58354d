"""Fixed, seeded pairing of forget examples with retain examples (not re-drawn each epoch)."""
from __future__ import annotations

import random


def pair_retain(n_forget: int, n_retain: int, seed: int) -> list[int]:
    """Retain index for each forget index: a seeded permutation, cycled if retain is smaller."""
    if n_retain <= 0:
        return []
    order = list(range(n_retain))
    random.Random(seed).shuffle(order)
    return [order[i % n_retain] for i in range(n_forget)]

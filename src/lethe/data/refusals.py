"""Refusal answers for IDK-style objectives (IDK, DPO, AP, FLAT), shipped with the package.

The template for forget example i is fixed by (i, seed), so reruns pick the same refusal.
"""
from __future__ import annotations

import random
from importlib import resources
from typing import Sequence


def _load() -> tuple[str, ...]:
    text = resources.files("lethe.data").joinpath("resources/refusals.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


REFUSALS: tuple[str, ...] = _load()


def refusal_for(index: int, seed: int = 0, pool: Sequence[str] | None = None) -> str:
    pool = tuple(pool) if pool else REFUSALS
    return pool[random.Random(f"{seed}:{index}").randrange(len(pool))]

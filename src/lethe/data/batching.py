"""Dynamic padding and length bucketing."""
from __future__ import annotations

import random
from typing import Sequence

import torch

from .prompt import IGNORE


def pad_batch(examples: Sequence[dict], pad_id: int, *, side: str = "right", width: int | None = None
              ) -> dict[str, torch.Tensor]:
    """Pad a list of {input_ids, labels?} to the longest example in the batch (not a global max), or to
    ``width`` when given (a released code's fixed layout; never shorter than the longest example)."""
    width = max([len(e["input_ids"]) for e in examples] + [width or 0])
    ids, mask, labels = [], [], []
    for e in examples:
        n = len(e["input_ids"])
        pad = width - n
        if side == "right":
            ids.append(list(e["input_ids"]) + [pad_id] * pad)
            mask.append([1] * n + [0] * pad)
            if "labels" in e:
                labels.append(list(e["labels"]) + [IGNORE] * pad)
        else:
            ids.append([pad_id] * pad + list(e["input_ids"]))
            mask.append([0] * pad + [1] * n)
            if "labels" in e:
                labels.append([IGNORE] * pad + list(e["labels"]))
    out = {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long)}
    if labels:
        out["labels"] = torch.tensor(labels, dtype=torch.long)
    return out


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (for evaluation: order does not matter)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def bucketed_shuffle(lengths: Sequence[int], batch_size: int, seed: int, bucket_batches: int = 8) -> list[list[int]]:
    """Training batches: shuffle, sort within buckets of a few batches by length, shuffle batches.

    Keeps randomness across epochs (seeded) while cutting padding.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), span):
        bucket = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [bucket[i : i + batch_size] for i in range(0, len(bucket), batch_size)]
    rng.shuffle(batches)
    return batches

"""Cost accounting: time, tokens, estimated FLOPs, peak memory, trainable share.

FLOPs are estimated as 6·N per trained token (forward + backward, FILA's Fisher passes too)
and 2·N per forward-only token (reference passes), with N the parameters on the forward path
(Kaplan et al. 2020). With LoRA the backward skips frozen weight gradients, so 6·N overstates it.
"""
from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass

import torch


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total), counting tied/shared tensors once.

    FILA's frozen reference adapter is not on the training path and is not counted.
    """
    seen, total, trainable = set(), 0, 0
    for name, p in model.named_parameters():
        if id(p) in seen or "lethe_reference" in name:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def peak_memory_bytes() -> tuple[int, str]:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_peak_rss"


@dataclass
class Cost:
    wall_time_s: float = 0.0
    tokens_trained: int = 0
    tokens_forward_only: int = 0
    tokens_fisher: int = 0
    epochs: int = 0
    steps: int = 0
    params_total: int = 0
    params_trainable: int = 0
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""

    @property
    def flops(self) -> float:
        return self.params_total * (6.0 * (self.tokens_trained + self.tokens_fisher) + 2.0 * self.tokens_forward_only)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flops"] = self.flops
        d["trainable_percent"] = 100.0 * self.params_trainable / max(1, self.params_total)
        d["flops_formula"] = "N * (6 * (tokens_trained + tokens_fisher) + 2 * tokens_forward_only), N = parameters on the path"
        return d

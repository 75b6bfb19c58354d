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


def _rss_bytes() -> int | None:
    """Current resident set size (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


class _RssSampler:
    """CPU peak memory of one run: the process-wide ru_maxrss cannot be reset, so RSS is sampled."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.peak, self.interval = _rss_bytes() or 0, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes() or 0)

    def read(self) -> int:
        self.peak = max(self.peak, _rss_bytes() or 0)
        return self.peak

    def stop(self):
        self._stop.set()


_sampler: _RssSampler | None = None


def reset_peak_memory() -> None:
    """Start counting peak memory afresh (each training run reports its own peak, not the process's)."""
    global _sampler
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    if _sampler is not None:
        _sampler.stop()
    _sampler = _RssSampler() if _rss_bytes() is not None else None


def stop_peak_memory() -> None:
    """A run is over: stop sampling (its peak has been read)."""
    global _sampler
    if _sampler is not None:
        _sampler.stop()
        _sampler = None


def peak_memory_bytes() -> tuple[int, str]:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    if _sampler is not None:
        return _sampler.read(), "cpu_peak_rss_sampled"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the process's peak (no /proc here)
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_peak_rss_process"


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
        d["flops_formula"] = ("N * (6 * (tokens_trained + tokens_fisher) + 2 * tokens_forward_only), "
                              "N = parameters on the path")
        return d

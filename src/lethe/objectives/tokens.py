"""Shift, mask and per-token log-probabilities: the only copy of this code in Lethe.

Causal LM convention: position t's logits predict token t+1. ``labels`` use IGNORE (-100) for
positions that do not count (prompt, padding). Work over the vocabulary runs in chunks of
tokens so no extra full ``[tokens, V]`` float32 tensor is built beyond the logits themselves.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ..data.prompt import IGNORE

DEFAULT_CHUNK = 1024


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [B,T,V], labels [B,T] -> (logits [B,T-1,V], targets [B,T-1], mask [B,T-1] float)."""
    logits = logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets.ne(IGNORE)
    return logits, targets.masked_fill(~mask, 0), mask.to(torch.float32)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision to float32 for vocabulary reductions; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def map_positions(fn, tensors, *, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Apply ``fn(*rows) -> [n]`` to every position of same-shaped ``[B,T,...]`` tensors, in chunks.

    When gradients are on, each chunk runs under activation checkpointing: only views of the
    inputs are kept for backward and the chunk is recomputed there, so the softmax-sized
    intermediates of one chunk are alive at a time instead of a full ``[B*T, V]`` copy.
    Returns ``[B,T]`` float32.
    """
    B, T = tensors[0].shape[:2]
    flat = [t.reshape(B * T, *t.shape[2:]) for t in tensors]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in flat)
    parts = []
    for start in range(0, B * T, chunk):
        rows = [t[start : start + chunk] for t in flat]
        if grad:
            parts.append(checkpoint(fn, *rows, use_reentrant=False))
        else:
            parts.append(fn(*rows))
    if not parts:
        return tensors[0].new_zeros(B, T, dtype=torch.float32)
    return upcast(torch.cat(parts).reshape(B, T))


def _target_logp(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    rows = upcast(rows)
    return rows.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(rows, dim=-1)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, *, chunk: int = DEFAULT_CHUNK):
    """log p(target) per shifted position.

    Returns (tok_logp [B,T-1] float32, zero where masked; mask [B,T-1] float32).
    """
    logits, targets, mask = shift(logits, labels)
    return map_positions(_target_logp, [logits, targets], chunk=chunk) * mask, mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, *, chunk: int = DEFAULT_CHUNK):
    """Sum of answer-token log-probs per sequence: (seq_logp [B], n_tokens [B])."""
    tok_logp, mask = token_logprobs(logits, labels, chunk=chunk)
    return tok_logp.sum(-1), mask.sum(-1)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor, *, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Token-mean cross-entropy over counted positions of the batch (0 if none count)."""
    tok_logp, mask = token_logprobs(logits, labels, chunk=chunk)
    return -tok_logp.sum() / mask.sum().clamp(min=1.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (0 if none)."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)

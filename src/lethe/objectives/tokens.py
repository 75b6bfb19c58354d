"""Shift, mask and per-token log-probabilities: the only copy of this code in Lethe.

Causal LM convention: position t's logits predict token t+1. ``labels`` use IGNORE (-100) for
positions that do not count (prompt, padding). Work over the vocabulary runs in chunks of
tokens so no extra full ``[tokens, V]`` float32 tensor is built beyond the logits themselves.
"""
from __future__ import annotations

import torch

from ..data.prompt import IGNORE

DEFAULT_CHUNK = 1024


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [B,T,V], labels [B,T] -> (logits [B,T-1,V], targets [B,T-1], mask [B,T-1] float)."""
    logits = logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets.ne(IGNORE)
    return logits, targets.masked_fill(~mask, 0), mask.to(torch.float32)


def _chunked_rows(x: torch.Tensor, chunk: int):
    flat = x.reshape(-1, x.shape[-1])
    for start in range(0, flat.shape[0], chunk):
        yield flat[start : start + chunk]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, *, chunk: int = DEFAULT_CHUNK):
    """log p(target) per shifted position.

    Returns (tok_logp [B,T-1] float32, zero where masked; mask [B,T-1] float32).
    """
    logits, targets, mask = shift(logits, labels)
    B, T, V = logits.shape
    flat_t = targets.reshape(-1)
    parts = []
    for i, rows in enumerate(_chunked_rows(logits, chunk)):
        t = flat_t[i * chunk : i * chunk + rows.shape[0]]
        picked = rows.gather(-1, t.unsqueeze(-1)).squeeze(-1).float()
        parts.append(picked - torch.logsumexp(rows.float(), dim=-1))
    tok_logp = torch.cat(parts).reshape(B, T) if parts else logits.new_zeros(B, T, dtype=torch.float32)
    return tok_logp * mask, mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, *, chunk: int = DEFAULT_CHUNK):
    """Sum of answer-token log-probs per sequence: (seq_logp [B], n_tokens [B])."""
    tok_logp, mask = token_logprobs(logits, labels, chunk=chunk)
    return tok_logp.sum(-1), mask.sum(-1)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor, *, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Token-mean cross-entropy over counted positions of the batch (0 if none count)."""
    tok_logp, mask = token_logprobs(logits, labels, chunk=chunk)
    return -tok_logp.sum() / mask.sum().clamp(min=1.0)


def per_position_stats(logits: torch.Tensor, labels: torch.Tensor, stat, *, chunk: int = DEFAULT_CHUNK):
    """Apply ``stat(rows [n,V] fp32-able, targets [n]) -> [n]`` to every shifted position in chunks.

    Returns (values [B,T-1], mask [B,T-1]); values at masked positions are zeroed.
    """
    logits, targets, mask = shift(logits, labels)
    B, T, V = logits.shape
    flat_t = targets.reshape(-1)
    parts = [stat(rows, flat_t[i * chunk : i * chunk + rows.shape[0]])
             for i, rows in enumerate(_chunked_rows(logits, chunk))]
    values = torch.cat(parts).reshape(B, T) if parts else logits.new_zeros(B, T, dtype=torch.float32)
    return values * mask, mask

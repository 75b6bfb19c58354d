"""Targets, masks and per-position vocabulary reductions: the only copy of this code in Lethe.

Causal LM convention: position t's logits predict token t+1. ``labels`` use IGNORE (-100)
for positions that do not count (prompt, padding). Rather than slicing the logits
(``logits[:, :-1]``, whose backward allocates a full zero tensor), targets are *aligned* to
the unshifted logits: ``targets[:, t] = labels[:, t+1]`` and the last position never counts.

Vocabulary work runs in chunks of positions through :func:`map_positions`, which writes each
chunk's gradient straight into one buffer the size of the logits, so no further
``[tokens, V]`` tensors are built (see benchmarks/loss_memory.py).
"""
from __future__ import annotations

import torch

from ..data.prompt import IGNORE
from .head import HeadLogits, fused_map_positions

# Training and evaluation run the tokens every row of a batch starts with (a chat template's system header)
# once for the batch; a shared prefix shorter than this is not worth a forward of its own.
MIN_SHARED_PREFIX = 8

# Backward scales the saved gradient buffer in place (no second logits-sized buffer), so a graph
# through map_positions can be backpropagated once. Tests that re-run backward on one graph
# (torch.autograd.gradcheck) switch this off.
INPLACE_BACKWARD = True
CHUNK_ELEMENTS = 1 << 23  # positions per chunk = this / V: ~32 MiB of fp32 temporaries per chunk


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, vocab))


class RowOp:
    """A row-wise reduction over the vocabulary: ``value(*rows) -> [n]``.

    ``value_and_grad(*rows, out) -> [n]`` may also be given: it writes d value_n / d rows_0
    into ``out`` (closed form, no autograd graph). Without it the gradient comes from autograd.
    """

    def __init__(self, value, value_and_grad=None):
        self.value, self.value_and_grad = value, value_and_grad

    def __call__(self, *rows):
        return self.value(*rows)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half precision to float32 for vocabulary reductions; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def align_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels [B,T] -> (targets [B,T] with IGNORE replaced by 0, mask [B,T] float32); last column never counts."""
    nxt = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE)], dim=1)
    mask = nxt.ne(IGNORE)
    return nxt.masked_fill(~mask, 0), mask.to(torch.float32)


def align_mask(input_mask: torch.Tensor) -> torch.Tensor:
    """Attention mask [B,T] -> [B,T] float: position t counts when token t+1 is a real token."""
    return torch.cat([input_mask[:, 1:], input_mask.new_zeros(input_mask.shape[0], 1)], dim=1).to(torch.float32)


class _RowwiseMap(torch.autograd.Function):
    """values[n] = fn(row_n of each input); gradients computed chunk by chunk in the forward.

    Each value depends only on its own row, so the gradient of ``sum(values)`` w.r.t. a chunk
    is the per-row Jacobian; backward scales it by the incoming per-row gradient in place.
    Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, fn, chunk, *tensors):
        flat = [t.reshape(-1, *t.shape[2:]) for t in tensors]
        wants = [t.is_floating_point() and t.requires_grad for t in tensors]
        grads = [torch.empty_like(f) if w else None for f, w in zip(flat, wants)]
        closed_form = getattr(fn, "value_and_grad", None) is not None and wants[0] and not any(wants[1:])
        values = []
        for start in range(0, flat[0].shape[0], chunk):
            if closed_form:
                rows = [f[start : start + chunk].detach() for f in flat]
                values.append(fn.value_and_grad(*rows, out=grads[0][start : start + chunk]))
                continue
            rows = [f[start : start + chunk].detach().requires_grad_(w) for f, w in zip(flat, wants)]
            diff = [r for r, w in zip(rows, wants) if w]
            with torch.enable_grad():
                out = fn(*rows)
                row_grads = torch.autograd.grad(out.sum(), diff)
            for g, r_grad in zip([g for g in grads if g is not None], row_grads):
                g[start : start + chunk] = r_grad
            values.append(out.detach())
        ctx.grads, ctx.shapes = grads, [t.shape for t in tensors]
        return torch.cat(values).reshape(tensors[0].shape[:2])

    @staticmethod
    def backward(ctx, grad_values):
        if ctx.grads is None:
            raise RuntimeError("lethe.ops.tokens: this graph was already backpropagated (its gradient "
                               "buffer is scaled in place); set tokens.INPLACE_BACKWARD = False to allow reuse")
        scale = grad_values.reshape(-1)
        out = []
        for g, shape in zip(ctx.grads, ctx.shapes):
            if g is None:
                out.append(None)
                continue
            s = scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype)
            out.append((g.mul_(s) if INPLACE_BACKWARD else g * s).reshape(shape))
        if INPLACE_BACKWARD:
            ctx.grads = None
        return (None, None, *out)


def map_positions(fn, tensors, *, chunk: int | None = None, where: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a row-wise ``fn(*rows) -> [n]`` (a function or :class:`RowOp`) to every position.

    ``tensors`` are same-shaped ``[B,T,...]``. Chunks of ``chunk`` positions (default: from the
    vocabulary size) bound the temporaries to one chunk; with gradients on, the gradient lands
    in one logits-sized buffer per differentiable input. Returns ``[B,T]``.

    When the first input is a :class:`~lethe.ops.head.HeadLogits` (logits never built), only
    the positions in ``where`` ([B,T] bool) are projected; elsewhere the value is 0 with no gradient.
    Callers mask with ``where`` afterwards either way, so both paths give the same result.
    """
    chunk = chunk or chunk_rows(tensors[0].shape[-1])
    if isinstance(tensors[0], HeadLogits) and not any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in tensors[1:]):
        return fused_map_positions(fn, tensors, chunk=chunk, where=where)
    tensors = [t.materialize() if isinstance(t, HeadLogits) else t for t in tensors]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _RowwiseMap.apply(fn, chunk, *tensors)
    B, T = tensors[0].shape[:2]
    flat = [t.reshape(B * T, *t.shape[2:]) for t in tensors]
    parts = [fn(*[f[s : s + chunk] for f in flat]) for s in range(0, B * T, chunk)]
    return torch.cat(parts).reshape(B, T)


def _target_logp_value(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    rows = upcast(rows)
    return rows.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(rows, dim=-1)


def _target_logp_grad(rows, targets, *, out):
    # d/dz (z_y - logsumexp z) = onehot(y) - softmax(z)
    rows = upcast(rows)
    lse = torch.logsumexp(rows, dim=-1, keepdim=True)
    value = rows.gather(-1, targets.unsqueeze(-1)) - lse
    p = torch.exp(rows - lse)
    out.copy_(p.neg_().scatter_add_(-1, targets.unsqueeze(-1), torch.ones_like(value)))
    return value.squeeze(-1)


target_logp = RowOp(_target_logp_value, _target_logp_grad)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, *, chunk: int | None = None):
    """log p(next token) per position: (tok_logp [B,T-1], zero where masked; mask [B,T-1] float32)."""
    targets, mask = align_targets(labels)
    values = map_positions(target_logp, [logits, targets], chunk=chunk, where=mask.bool()) * mask
    return values[:, :-1], mask[:, :-1]


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, *, chunk: int | None = None):
    """Sum of answer-token log-probs per sequence: (seq_logp [B], n_tokens [B])."""
    tok_logp, mask = token_logprobs(logits, labels, chunk=chunk)
    return tok_logp.sum(-1), mask.sum(-1)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor, *, chunk: int | None = None) -> torch.Tensor:
    """Token-mean cross-entropy over counted positions of the batch (0 if none count)."""
    tok_logp, mask = token_logprobs(logits, labels, chunk=chunk)
    return -tok_logp.sum() / mask.sum().clamp(min=1.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (0 if none)."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)

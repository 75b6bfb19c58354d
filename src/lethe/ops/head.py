"""Logits that are never materialised: the output head fused into the vocabulary reductions.

A causal LM's logits are ``hidden @ W.T (+ b)``: ``[B,T,V]``, the largest tensor of a training step
(8 × 512 positions × 128K vocabulary is 2 GiB in float32, twice with its gradient). A
:class:`HeadLogits` stands in for that tensor: it holds the last hidden states and the head, and
:func:`lethe.ops.tokens.map_positions` projects one chunk of positions at a time, reduces it
and drops it. In backward each chunk is projected again (one more head matmul over the positions
that count) and its closed-form gradient goes straight into the hidden states' and the head's
gradients, so no ``[positions, V]`` tensor outlives a chunk (Liger's fused linear cross-entropy,
generalised to every row-wise reduction Lethe's losses use).

Only positions that count are projected at all (``where``: the answer tokens for likelihoods), so
the prompt of a chat-formatted example, often most of it, never reaches the vocabulary.

A loss receives a HeadLogits instead of a tensor only when it declares it reads logits through
``tokens`` alone (:func:`reads_logits_through_tokens`); every built-in loss does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class HeadLogits:
    """``F.linear(hidden, weight, bias)`` of shape ``[B,T,V]``, projected chunk by chunk on demand."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.shape = torch.Size((*hidden.shape[:-1], weight.shape[0]))

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    @property
    def requires_grad(self) -> bool:
        return self.hidden.requires_grad or self.weight.requires_grad or (
            self.bias is not None and self.bias.requires_grad)

    def dim(self) -> int:
        return len(self.shape)

    def detach(self) -> "HeadLogits":
        return HeadLogits(self.hidden.detach(), self.weight.detach(),
                          None if self.bias is None else self.bias.detach())

    def flat_hidden(self) -> torch.Tensor:
        return self.hidden.reshape(-1, self.hidden.shape[-1])

    def project(self, rows: torch.Tensor) -> torch.Tensor:
        """Logits of the flat positions ``rows`` (an index tensor): ``[len(rows), V]``."""
        return F.linear(self.flat_hidden()[rows], self.weight, self.bias)

    def materialize(self) -> torch.Tensor:
        return F.linear(self.hidden, self.weight, self.bias)


def reads_logits_through_tokens(fn):
    """Mark a loss that touches its ``*_logits`` inputs only through ``lethe.ops.tokens``
    (``map_positions``, ``token_logprobs``, ``mean_nll``, ...) and their ``.shape``: the engine may then
    pass :class:`HeadLogits` and never build the ``[B,T,V]`` tensor."""
    fn.head_logits = True
    return fn


def _rows_of(t, rows: torch.Tensor) -> torch.Tensor:
    """One chunk of a (non-differentiable) input, whether a HeadLogits or a [B,T,...] tensor."""
    if isinstance(t, HeadLogits):
        return t.project(rows).detach()
    return t.reshape(-1, *t.shape[2:])[rows].detach()


class _FusedHeadMap(torch.autograd.Function):
    """values[m] = fn(logits row ``rows[m]``, other inputs' rows), logits = hidden @ W.T + b, by chunks.

    Backward projects each chunk again, forms d value / d logits (closed form when ``fn`` has one,
    else autograd on that chunk), scales it by the incoming gradient and multiplies it into the
    gradients of hidden, W and b.
    """

    # autograd.Function.forward takes its tensors and settings positionally: no config object crosses it.
    @staticmethod
    def forward(ctx, fn, chunk, rows, autocast, others, hidden_flat, weight, bias):
        values = []
        for start in range(0, rows.numel(), chunk):
            sel = rows[start : start + chunk]
            logits = F.linear(hidden_flat[sel], weight, bias)
            values.append(fn(logits, *[_rows_of(o, sel) for o in others]))
        ctx.fn, ctx.chunk, ctx.autocast, ctx.others = fn, chunk, autocast, others
        ctx.save_for_backward(rows, hidden_flat, weight, bias)
        return torch.cat(values) if values else hidden_flat.new_zeros(0, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_values):
        rows, hidden_flat, weight, bias = ctx.saved_tensors
        fn, chunk = ctx.fn, ctx.chunk
        want_h, want_w = ctx.needs_input_grad[5], ctx.needs_input_grad[6]
        want_b = bias is not None and ctx.needs_input_grad[7]
        grad_h = torch.zeros_like(hidden_flat) if want_h else None
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32  # reductions never below fp32
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if want_b else None
        device_type, dtype, enabled = ctx.autocast
        for start in range(0, rows.numel(), chunk):
            sel = rows[start : start + chunk]
            scale = grad_values[start : start + chunk]
            h = hidden_flat[sel]
            with torch.autocast(device_type, dtype=dtype, enabled=enabled):  # as forward projected them
                logits = F.linear(h, weight, bias).detach()
                others = [_rows_of(o, sel) for o in ctx.others]
            if getattr(fn, "value_and_grad", None) is not None:
                g = torch.empty(logits.shape, dtype=_wide(logits.dtype), device=logits.device)
                fn.value_and_grad(logits, *others, out=g)
                g.mul_(scale.to(g.dtype).unsqueeze(-1))
            else:
                with torch.enable_grad():
                    z = logits.to(_wide(logits.dtype)).requires_grad_(True)
                    (g,) = torch.autograd.grad(fn(z, *others), z, grad_outputs=scale.to(z.dtype))
            mm = logits.dtype  # the matmuls of backward in the dtype forward's projection ran in
            if want_h:
                grad_h[sel] = (g.to(mm) @ weight.to(mm)).to(grad_h.dtype)
            if want_w:
                grad_w.addmm_(g.t().to(acc), h.to(acc))
            if want_b:
                grad_b.add_(g.sum(0).to(acc))
        return (None, None, None, None, None, grad_h,
                None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype))


def _wide(dtype: torch.dtype) -> torch.dtype:
    """What vocabulary reductions run in: float32 for half precision, float32/float64 as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _autocast_state(device: torch.device) -> tuple[str, torch.dtype, bool]:
    kind = device.type if device.type in ("cuda", "cpu") else "cpu"
    return kind, torch.get_autocast_dtype(kind), torch.is_autocast_enabled(kind)


def fused_map_positions(fn, tensors, *, chunk: int, where: torch.Tensor | None = None) -> torch.Tensor:
    """``map_positions`` when the first input is a :class:`HeadLogits`: ``[B,T]`` values, 0 (and no
    gradient) outside ``where``. Later inputs (a reference's logits) are read without gradient."""
    head, others = tensors[0], list(tensors[1:])
    B, T = head.shape[:2]
    n = B * T
    rows = (where.reshape(-1).nonzero().squeeze(-1) if where is not None
            else torch.arange(n, device=head.device))
    if torch.is_grad_enabled() and head.requires_grad:
        values = _FusedHeadMap.apply(fn, chunk, rows, _autocast_state(head.device), others,
                                     head.flat_hidden(), head.weight, head.bias)
    else:
        with torch.no_grad():
            flat = head.flat_hidden()
            parts = [fn(F.linear(flat[rows[s : s + chunk]], head.weight, head.bias),
                        *[_rows_of(o, rows[s : s + chunk]) for o in others]) for s in range(0, rows.numel(), chunk)]
            values = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)
    out = values.new_zeros(n)
    return out.index_copy(0, rows, values).reshape(B, T)

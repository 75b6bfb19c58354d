"""``quantize``: weight-only quantization of the decoder's linear layers, scored dequantised.

Zhang et al. (ICLR 2025) found that unlearning updates are smaller than a 4-bit quantization step, so
quantizing an unlearned model can bring back what it forgot. ``method=rtn`` (default) is round-to-nearest in
plain torch, so it runs on CPU and GPU alike; ``method=nf4`` / ``fp4`` is the paper's own protocol, bitsandbytes'
4-bit quantization as ``load_in_4bit`` applies it (blocks of 64 weights), through bitsandbytes' own
quantize/dequantize functions. A 4-bit bitsandbytes matmul dequantizes the weights the same way before it
multiplies, so scoring the dequantised weights is what the quantized model computes. ``method=int8`` is LLM.int8
(Dettmers et al. 2022, ``load_in_8bit``) in plain torch: at every call, the input features with any activation of
magnitude at least 6 (bitsandbytes' default threshold) are multiplied in full precision with their weight columns,
and the rest in int8, activations per token and weights per output row by absmax; the integer products are summed
exactly (float64) and scaled back."""
from __future__ import annotations

import copy
import types

import torch

from ..util.errors import LetheError
from .base import ATTACKS, Attack, Attacked


def quantize_rtn(weight: torch.Tensor, bits: int, group: int = 0, symmetric: bool = True) -> torch.Tensor:
    """Round-to-nearest weight quantization, returned dequantised (same shape and dtype).

    Each output row is quantized per group of ``group`` input columns (0: the whole row, per channel).
    Symmetric: q = round(w / s), s = max|w| / (2^(bits-1) − 1), q in [−(2^(bits-1) − 1), 2^(bits-1) − 1].
    Asymmetric: s = (max − min) / (2^bits − 1), zero point z = round(−min / s), q = clamp(round(w / s) + z,
    0, 2^bits − 1), w' = (q − z) · s.
    """
    w = weight.detach().to(torch.float64 if weight.dtype == torch.float64 else torch.float32)
    rows, cols = w.shape
    g = cols if not group or group >= cols else group
    pad = (-cols) % g
    if pad:
        w = torch.cat([w, w.new_zeros(rows, pad)], dim=1)
    blocks = w.reshape(rows, -1, g)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = blocks.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax
        deq = torch.clamp(torch.round(blocks / scale), -qmax, qmax) * scale
    else:
        qmax = 2 ** bits - 1
        lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
        scale = (hi - lo).clamp(min=1e-12) / qmax
        zero = torch.round(-lo / scale)
        deq = (torch.clamp(torch.round(blocks / scale) + zero, 0, qmax) - zero) * scale
    out = deq.reshape(rows, -1)[:, :cols]
    return out.to(weight.dtype)


def decoder_linears(model):
    from ..model.layers import decoder_layers

    for block in decoder_layers(model):
        for module in block.modules():
            if isinstance(module, torch.nn.Linear):
                yield module


INT8_THRESHOLD = 6.0  # LLM.int8's outlier threshold (bitsandbytes' llm_int8_threshold default)


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, threshold: float = INT8_THRESHOLD) -> torch.Tensor:
    """LLM.int8's ``x @ weight.T`` (no bias): outlier input features (|x| >= threshold anywhere in ``x``) in full
    precision, the others vector-wise int8 (x per row, weight per output row, absmax to [-127, 127])."""
    flat = x.reshape(-1, x.shape[-1])
    outliers = (flat.abs() >= threshold).any(dim=0)
    regular = ~outliers
    xr, wr = flat[:, regular].double(), weight[:, regular].double()
    sx = xr.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    sw = wr.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    qx, qw = torch.round(xr / sx), torch.round(wr / sw)
    out = (qx @ qw.T) * sx * sw.T
    if outliers.any():
        out = out + flat[:, outliers].double() @ weight[:, outliers].double().T
    return out.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def _int8_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    out = int8_matmul(x, self.weight)
    return out + self.bias if self.bias is not None else out


BNB_METHODS = ("nf4", "fp4")
BNB_BLOCK = 64  # the block size transformers' BitsAndBytesConfig(load_in_4bit=True) quantizes with


def quantize_bnb(weight: torch.Tensor, quant_type: str) -> torch.Tensor:
    """bitsandbytes' 4-bit quantization (``nf4`` or ``fp4``, blocks of 64), returned dequantised."""
    import bitsandbytes.functional as bnb

    packed, state = bnb.quantize_4bit(weight.detach().float().contiguous(), blocksize=BNB_BLOCK, quant_type=quant_type)
    return bnb.dequantize_4bit(packed, state).reshape(weight.shape).to(weight.dtype)


def _check_quantize(o: dict) -> None:
    methods = ("rtn", "int8", *BNB_METHODS)
    if o["method"] not in methods:
        raise LetheError(f"attack 'quantize': method must be one of {', '.join(methods)}, got {o['method']!r}")
    if o["method"] in BNB_METHODS:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise LetheError(f"attack 'quantize' with method={o['method']} needs bitsandbytes: pip install "
                             "'lethe-unlearn[quantize]' (or use method=rtn)") from None
        return
    if not 2 <= o["bits"] <= 8:
        raise LetheError(f"attack 'quantize': bits must be 2..8, got {o['bits']}")
    if o["group"] < 0:
        raise LetheError(f"attack 'quantize': group must be >= 0 (0: per channel), got {o['group']}")


def _quantize(model, forget, options, context):
    attacked = copy.deepcopy(model)
    with torch.no_grad():
        for linear in decoder_linears(attacked):
            if options["method"] == "int8":
                # the attacked copy only (bound, so a deep copy rebinds it): activations decide at each call
                linear.forward = types.MethodType(_int8_forward, linear)
            elif options["method"] in BNB_METHODS:
                linear.weight.copy_(quantize_bnb(linear.weight, options["method"]))
            else:
                linear.weight.copy_(quantize_rtn(linear.weight, options["bits"], options["group"],
                                                 options["symmetric"]))
    return Attacked(attacked, list(forget))


ATTACKS.add("quantize", Attack(
    "quantize", "weight-only quantization of the decoder's linear layers (Zhang et al. 2025), dequantised: "
    "round-to-nearest, LLM.int8 with its outlier features (method=int8), or bitsandbytes NF4/FP4 (method=nf4|fp4)",
    {"bits": 4, "group": 128, "symmetric": True, "method": "rtn"}, _quantize, _check_quantize, robustness="Q",
    text=True))

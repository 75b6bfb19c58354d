"""RMU, Representation Misdirection for Unlearning (Li et al. 2024, the WMDP paper, Sec. 4).

On forget tokens the output of decoder layer ℓ is pushed to a fixed random direction scaled by c;
on retain tokens it is held at the frozen model's; only a few layers up to ℓ train::

    L = E_xf [ mean_t ||h_θ(x_f)_t − c·u||² / H ]  +  α · E_xr [ mean_t ||h_θ(x_r)_t − h_ref(x_r)_t||² / H ]

(u: random with entries uniform in [0, 1), normalised, fixed for the run; H: hidden size; mean_t over
a sequence's real tokens, as in the paper). Dividing by H follows the released code's MSE; it differs
from the paper's squared norm by the constant H, which only rescales the loss (α keeps its meaning).

WMDP's defaults were set on Zephyr-7B (32 layers): ℓ = 7, layers 5-7 trained (their MLP output
projection), c = 6.5, α = 1200. Lethe scales them to the model: ℓ = round(7/32 · depth), the layers
ℓ−2..ℓ train, and c defaults to ``norm_multiple`` × the starting model's mean activation norm at ℓ on
the forget set (a fixed c is meaningless across models whose activations differ in scale by orders
of magnitude; pass ``steering_coeff`` to fix it). ``modules`` picks the trained weights inside those
layers by name (default ``mlp``: every MLP weight; ``down_proj`` is WMDP's choice on Llama/Mistral).
"""
from __future__ import annotations

import torch

from ..model.layers import decoder_layers, unwrap
from ..util.errors import LetheError
from .inputs import Need
from .loss import Loss
from .registry import FORGET_LOSSES


def _layer_list(value, n_layers: int, steered: int) -> list[int]:
    if value is None or value == "":
        return list(range(max(0, steered - 2), steered + 1))
    items = [value] if isinstance(value, int) else [p for p in str(value).replace(";", ",").split(",") if p.strip()]
    try:
        layers = sorted({int(p) for p in items})
    except ValueError as e:
        raise LetheError(f"rmu: trained_layers must be layer numbers like 5,6,7, got '{value}'") from e
    bad = [i for i in layers if not 0 <= i <= steered]
    if bad:
        raise LetheError(f"rmu: trained_layers {bad} must lie in 0..{steered} (layers after the steered layer "
                         f"{steered} do not change its output)")
    return layers


def masked_token_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-dimension squared error, averaged over each sequence's real tokens, then over the sequences
    that have any (hidden [B,T,H]; target [B,T,H] or [H]; mask [B,T]). WMDP Eq. for L_forget/L_retain."""
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    per_token = (hidden.to(dtype) - target.to(dtype)).pow(2).mean(-1)
    mask = mask.to(dtype)
    counts = mask.sum(-1)
    per_seq = (per_token * mask).sum(-1) / counts.clamp(min=1.0)
    present = (counts > 0).to(dtype)
    return (per_seq * present).sum() / present.sum().clamp(min=1.0)


@FORGET_LOSSES.register("rmu")
class RMU(Loss):
    """RMU (WMDP, Li et al. 2024): steer forget activations at layer ℓ to c·u, keep retain activations."""

    name = "rmu"
    unit = "sequence"  # each sequence's tokens are averaged first (WMDP's expectation over sequences)

    def __init__(self, *, layer: int | None = None, steering_coeff: float | None = None, alpha: float = 1200.0,
                 trained_layers: str | None = None, modules: str = "mlp", norm_multiple: float = 4.0):
        if alpha < 0 or norm_multiple <= 0 or (steering_coeff is not None and steering_coeff <= 0):
            raise LetheError("rmu: alpha must be >= 0, steering_coeff and norm_multiple > 0")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
            raise LetheError(f"rmu: layer must be a whole number >= 0 (a decoder layer's index), got {layer}")
        self.layer, self.steering_coeff, self.alpha = layer, steering_coeff, float(alpha)
        self.trained_layers, self.modules, self.norm_multiple = trained_layers, modules, float(norm_multiple)
        self.control: torch.Tensor | None = None

    def setup(self, model, data) -> None:
        n = len(decoder_layers(model))
        if self.layer is None:
            self.layer = min(n - 1, round(7 / 32 * n))
        if not 0 <= int(self.layer) < n:
            raise LetheError(f"rmu: layer {self.layer} does not exist (the model has layers 0..{n - 1})")
        self.layer = int(self.layer)
        self.trained_layers = _layer_list(self.trained_layers, n, self.layer)
        hidden = unwrap(model).config.hidden_size
        g = torch.Generator().manual_seed(int(data.seed))
        u = torch.rand(hidden, generator=g, dtype=torch.float64)
        if self.steering_coeff is None:
            norms = [(h.float().norm(dim=-1) * m).sum() / m.sum()
                     for h, m in data.hidden_states(model, "forget", self.layer)]
            self.steering_coeff = self.norm_multiple * float(torch.stack(norms).mean())
        self.control = (u / u.norm() * self.steering_coeff).float()

    def needs(self) -> dict[str, Need]:
        if self.control is None:
            raise LetheError("rmu: setup(model, data) must run before its inputs are known")
        L = self.layer
        return {"forget_hidden": Need("hidden", "forget", layer=L), "forget_mask": Need("mask", "forget"),
                "retain_hidden": Need("hidden", "retain", layer=L), "retain_mask": Need("mask", "retain"),
                "ref_retain_hidden": Need("hidden", "retain", "reference", L)}

    def __call__(self, inputs):
        fh = inputs["forget_hidden"]
        forget = masked_token_mse(fh, self.control.to(fh.device), inputs["forget_mask"])
        retain = masked_token_mse(inputs["retain_hidden"], inputs["ref_retain_hidden"].detach(), inputs["retain_mask"])
        return forget + self.alpha * retain

    def trainable(self, model):
        blocks = decoder_layers(model)
        return [p for i in self.trained_layers for name, p in blocks[i].named_parameters() if self.modules in name]

    def options(self) -> dict:
        return {"layer": self.layer, "steering_coeff": self.steering_coeff, "alpha": self.alpha,
                "trained_layers": ",".join(map(str, self.trained_layers)) if isinstance(self.trained_layers, list)
                else self.trained_layers, "modules": self.modules, "norm_multiple": self.norm_multiple}

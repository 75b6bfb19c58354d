"""Parameterisations for unlearning: LoRA (peft) and FILA (Fisher-weighted LoRA initialisation).

FILA (IHL seed, Sec. 2.3, App. F): solve min ||diag(w)(W - s·B·A)|| in closed form by an SVD of
diag(w) W, start LoRA from those factors, and replace the base weight by W - s·B·A so the model
is unchanged at step 0. Because the base is then a residual, disabling the adapter does not give
the starting model: the initial factors are kept as a frozen second adapter (``REFERENCE``),
and the reference model is the same network with that adapter active.
"""
from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..util.errors import LetheError
from ..util.validation import bounded, check_ranges
from .fisher import empirical_fisher, row_weights, weight_out_in
from .targets import resolve_targets

# peft still calls a transformers method that transformers 5 deprecates; nothing for users to act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

ADAPTER = "default"
REFERENCE = "lethe_reference"
PARAMS = ("full", "lora", "fila")


@dataclass(frozen=True)
class ParamsConfig:
    kind: str = "full"                    # full | lora | fila
    rank: int = bounded(16, int, 1)
    lora_alpha: float | None = bounded(None, float, 0, low_open=True, optional=True)  # default 2 x rank
    targets: str = "qv-mlp"               # role, see model/targets.py
    target_modules: tuple[str, ...] = ()  # explicit module names (override targets)
    fisher_mode: str = "per-sample"       # per-sample (paper) | per-batch (released code)
    fisher_batch_size: int = bounded(8, int, 1)
    svd: str = "exact"                    # exact | randomized
    svd_oversample: int = bounded(8, int, 0)   # randomized: q = rank + this (the IHL/FILA code: 0)
    svd_niter: int = bounded(4, int, 0)        # randomized: power iterations (the IHL/FILA code: 2)

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha) if self.lora_alpha is not None else 2.0 * self.rank

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        check_ranges(self)
        if self.kind not in PARAMS:
            raise LetheError(f"--params: unknown parameterisation '{self.kind}': expected one of {', '.join(PARAMS)}")
        if self.fisher_mode not in ("per-sample", "per-batch"):
            raise LetheError(f"--fisher-mode: expected per-sample or per-batch, got '{self.fisher_mode}'")
        if self.svd not in ("exact", "randomized"):
            raise LetheError(f"--svd: expected exact or randomized, got '{self.svd}'")


def fila_factors(weight: torch.Tensor, w: torch.Tensor, rank: int, scaling: float, *, svd: str = "exact",
                 oversample: int = 8, niter: int = 4,
                 eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form row-weighted rank-r factors: (A [r, in], B [out, r]) with s·B·A ≈ W in the w-norm.

    SVD of diag(w) W = U S Vᵀ, keep the top r: B = diag(1/(w+eps)) U_r sqrt(S_r/s), A = sqrt(S_r/s) V_rᵀ.
    """
    m = w.unsqueeze(1) * weight
    if svd == "randomized":
        U, S, V = torch.svd_lowrank(m, q=min(rank + oversample, min(m.shape)), niter=niter)
        U, S, Vh = U[:, :rank], S[:rank], V[:, :rank].t()
    else:
        U, S, Vh = torch.linalg.svd(m, full_matrices=False)
        U, S, Vh = U[:, :rank], S[:rank], Vh[:rank]
    root = (S / scaling).sqrt()
    B = (U * root) / (w + eps).unsqueeze(1)
    A = root.unsqueeze(1) * Vh
    return A, B


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def apply_params(model, config: ParamsConfig, *, forget_examples: Sequence[dict] = (),
                 retain_examples: Sequence[dict] = (),
                 pad_id: int = 0, seed: int = 0, progress: bool = False) -> tuple[object, dict]:
    """Wrap ``model`` for unlearning. Returns (model, info) where info has Fisher token counts."""
    config.validate()
    info: dict = {"fisher_tokens": 0}
    if config.kind == "full":
        return model, info
    from peft import LoraConfig, get_peft_model

    targets = resolve_targets(model, config.targets, list(config.target_modules) or None)
    fisher = None
    if config.kind == "fila":
        if not forget_examples or not retain_examples:
            raise LetheError("FILA needs both a forget set and a retain set (relative Fisher information)")
        from transformers.pytorch_utils import Conv1D

        modules = {n: m for n, m in model.named_modules()
                   if isinstance(m, (torch.nn.Linear, Conv1D)) and any(n.endswith(t) for t in targets)}
        kw = {"pad_id": pad_id, "mode": config.fisher_mode, "batch_size": config.fisher_batch_size,
              "progress": progress}
        f_forget, t1 = empirical_fisher(model, modules, forget_examples, desc="Fisher (forget)", **kw)
        f_retain, t2 = empirical_fisher(model, modules, retain_examples, desc="Fisher (retain)", **kw)
        fisher = {n: row_weights(f_forget[n], f_retain[n]) for n in modules}
        info["fisher_tokens"] = t1 + t2
    from transformers.pytorch_utils import Conv1D

    conv1d = any(isinstance(m, Conv1D) for m in model.modules())  # GPT-2 stores weights as [in, out]
    lora_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=targets,
                             bias="none", task_type="CAUSAL_LM", fan_in_fan_out=conv1d)
    torch.manual_seed(seed)  # LoRA's A starts random: the same seed must give the same run
    model = get_peft_model(model, lora_config)
    if fisher is not None:
        _fila_init(model, fisher, config)
    info["targets"] = targets
    return model, info


@torch.no_grad()
def _fila_init(model, fisher: dict[str, torch.Tensor], config: ParamsConfig) -> None:
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    ref_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0,
                            target_modules=model.peft_config[ADAPTER].target_modules, bias="none",
                            task_type="CAUSAL_LM", inference_mode=True,
                            fan_in_fan_out=model.peft_config[ADAPTER].fan_in_fan_out)
    model.add_adapter(REFERENCE, ref_config)
    for name, layer in lora_layers(model).items():
        key = name.split("base_model.model.", 1)[-1]
        w = fisher[key]
        base = layer.get_base_layer()
        weight = weight_out_in(base)
        scaling = layer.scaling[ADAPTER]
        A, B = fila_factors(weight.float(), w.to(weight.device), config.rank, scaling, svd=config.svd,
                            oversample=config.svd_oversample, niter=config.svd_niter)
        for adapter in (ADAPTER, REFERENCE):
            layer.lora_A[adapter].weight.copy_(A.to(layer.lora_A[adapter].weight.dtype))
            layer.lora_B[adapter].weight.copy_(B.to(layer.lora_B[adapter].weight.dtype))
        residual = (weight.float() - scaling * (B @ A)).to(weight.dtype)
        # Conv1D (GPT-2) stores [in, out]: decide by type, never by shape (square matrices exist)
        base.weight.copy_(residual.t() if isinstance(base, Conv1D) else residual)
    for n, p in model.named_parameters():
        if REFERENCE in n:
            p.requires_grad_(False)


@contextmanager
def _on_every_lora_layer(model, attribute: str, value):
    """Set a LoRA layer attribute on every layer for the duration of the block, then restore it.

    peft's own switches (set_adapter, disable_adapter) also flip requires_grad, which must not happen
    in the middle of a step or undo a loss's choice of trainable parameters.
    """
    layers = list(lora_layers(model).values())
    saved = [getattr(layer, attribute) for layer in layers]
    try:
        for layer in layers:
            setattr(layer, attribute, value)
        yield model
    finally:
        for layer, s in zip(layers, saved):
            setattr(layer, attribute, s)


def active_adapter(model, name: str):
    """Run the network with adapter ``name`` active, leaving requires_grad untouched."""
    return _on_every_lora_layer(model, "_active_adapter", [name])


def adapters_disabled(model):
    """Run the network without its adapters, leaving requires_grad untouched."""
    return _on_every_lora_layer(model, "_disable_adapters", True)


class AdapterReference:
    """θ_ref without a second copy: LoRA -> adapter disabled; FILA -> the frozen initial adapter."""

    nbytes = 0  # no extra weights beyond the frozen FILA factors, which live in the model

    def __init__(self, model):
        self.model = model
        self.fila = REFERENCE in getattr(model, "peft_config", {})

    @contextmanager
    def module(self, device):
        """The same network with the starting weights in effect, for the duration of one forward."""
        with active_adapter(self.model, REFERENCE) if self.fila else adapters_disabled(self.model):
            yield self.model

    @torch.no_grad()
    def __call__(self, batch, device):
        with self.module(device) as m:
            return m(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits


def merge_adapters(model):
    """The plain model with the trained adapter folded into its weights (FILA's frozen reference dropped)."""
    if not hasattr(model, "peft_config"):
        return model
    if REFERENCE in model.peft_config:
        model.delete_adapter(REFERENCE)
    return model.merge_and_unload()


def save_unlearned(model, tokenizer, directory, *, merge: bool = False, base_model_path: str | None = None,
                   prompt_format=None) -> Path:
    """Save for use without Lethe.

    full: a plain transformers model dir. lora/fila with ``merge``: adapters merged into the base
    weights, a plain transformers model dir. lora/fila without ``merge``: a peft adapter dir that
    applies to the *original* base model. For FILA the residual base is not saved: the adapter
    is rewritten as a rank-2r LoRA, ΔW = s·B·A − s·B0·A0 = s·[B, −B0]·[A; A0], which on the
    original weights W gives exactly (W − s·B0·A0) + s·B·A.
    """
    from .save import save_model, write_model_card

    directory = Path(directory)
    if not hasattr(model, "peft_config"):
        out = save_model(model, tokenizer, directory, prompt_format)
    elif merge:
        out = save_model(merge_adapters(model), tokenizer, directory, prompt_format)
    else:
        out = _save_adapter(model, tokenizer, directory, fila=REFERENCE in model.peft_config,
                            base_model_path=base_model_path, prompt_format=prompt_format)
    adapter = hasattr(model, "peft_config") and not merge
    write_model_card(out, adapter_of=base_model_path if adapter else None, prompt_format=prompt_format)
    return out


def _save_adapter(model, tokenizer, directory: Path, *, fila: bool, base_model_path: str | None,
                  prompt_format=None) -> Path:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    cfg = model.peft_config[ADAPTER]
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    if fila:
        ref = get_peft_model_state_dict(model, adapter_name=REFERENCE)
        for key in list(state):
            if "lora_A" in key:
                state[key] = torch.cat([state[key], ref[key]], dim=0)
            elif "lora_B" in key:
                state[key] = torch.cat([state[key], -ref[key]], dim=1)
    cfg_dict = cfg.to_dict()
    if fila:
        cfg_dict["r"], cfg_dict["lora_alpha"] = 2 * cfg.r, 2 * cfg.lora_alpha  # same scaling alpha/r
    cfg_dict["inference_mode"] = True
    cfg_dict["base_model_name_or_path"] = base_model_path
    for k, v in list(cfg_dict.items()):
        if isinstance(v, set):
            cfg_dict[k] = sorted(v)
        elif hasattr(v, "value"):
            cfg_dict[k] = v.value
    from ..util.io import atomic_dir, storage_errors
    from .save import save_tokenizer

    with atomic_dir(directory) as tmp, storage_errors(Path(directory) / "adapter_model.safetensors"):
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text(json.dumps(cfg_dict, indent=2, default=str))
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp, prompt_format)
    return directory

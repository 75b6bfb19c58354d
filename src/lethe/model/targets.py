"""LoRA target roles -> module-name suffixes, per architecture (``config.model_type``).

Roles: ``attn-qv`` (query and value), ``attn`` (q, k, v, output), ``mlp`` (all feed-forward
linears), ``qv-mlp`` (the IHL seed's default), ``all``. Where an architecture fuses q, k and v
into one matrix (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``, Phi-3 ``qkv_proj``), ``attn-qv``
targets the fused matrix: that is the finest unit the weights allow.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..util.errors import LetheError

ROLES = ("attn-qv", "attn", "mlp", "qv-mlp", "all")


@dataclass(frozen=True)
class ArchModules:
    q: tuple[str, ...]
    v: tuple[str, ...]
    attn: tuple[str, ...]
    mlp: tuple[str, ...]


_LLAMA = ArchModules(("q_proj",), ("v_proj",), ("q_proj", "k_proj", "v_proj", "o_proj"),
                     ("gate_proj", "up_proj", "down_proj"))
ARCHITECTURES: dict[str, ArchModules] = {
    **{name: _LLAMA for name in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2")},
    "gpt2": ArchModules(("c_attn",), ("c_attn",), ("c_attn", "attn.c_proj"), ("c_fc", "mlp.c_proj")),
    "gpt_neo": ArchModules(("q_proj",), ("v_proj",), ("q_proj", "k_proj", "v_proj", "out_proj"),
                           ("c_fc", "mlp.c_proj")),
    "gpt_neox": ArchModules(("query_key_value",), ("query_key_value",), ("query_key_value", "attention.dense"),
                            ("dense_h_to_4h", "dense_4h_to_h")),
    "opt": ArchModules(("q_proj",), ("v_proj",), ("q_proj", "k_proj", "v_proj", "out_proj"), ("fc1", "fc2")),
    "phi": ArchModules(("q_proj",), ("v_proj",), ("q_proj", "k_proj", "v_proj", "dense"), ("fc1", "fc2")),
    "phi3": ArchModules(("qkv_proj",), ("qkv_proj",), ("qkv_proj", "o_proj"), ("gate_up_proj", "down_proj")),
}


def linear_module_names(model) -> list[str]:
    """Distinct trailing names of the model's linear layers (for error messages)."""
    from transformers.pytorch_utils import Conv1D

    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    return sorted(names)


def resolve_targets(model, role: str = "qv-mlp", target_modules: list[str] | None = None) -> list[str]:
    """Module-name suffixes for peft's ``target_modules``."""
    if target_modules:
        found = linear_module_names(model)
        missing = [t for t in target_modules if not any(n.endswith(t.split(".")[-1]) for n in found)]
        if missing:
            raise LetheError(f"--target-modules {missing} match no linear layer; linear layers: {', '.join(found)}")
        return list(target_modules)
    if role not in ROLES:
        raise LetheError(f"unknown target role '{role}': expected one of {', '.join(ROLES)}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise LetheError(
            f"no LoRA target roles known for architecture '{model_type}'. Name the modules with "
            f"--target-modules; this model's linear layers are: {', '.join(linear_module_names(model))}")
    picks = {"attn-qv": arch.q + arch.v, "attn": arch.attn, "mlp": arch.mlp, "qv-mlp": arch.q + arch.v + arch.mlp,
             "all": arch.attn + arch.mlp}[role]
    return list(dict.fromkeys(picks))

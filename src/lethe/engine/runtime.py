"""One runtime policy for every model call: device, precision, attention kernel, activation checkpointing.

Precision names what the weights are stored in and what matmuls run in:

- ``fp32``: float32 weights, float32 compute (the CPU default);
- ``bf16-mixed``: float32 master weights, bfloat16 autocast (the CUDA default: AdamW updates smaller
  than bfloat16's resolution — 2⁻⁷ near 1 — still reach the weights);
- ``bf16``: bfloat16 weights and compute (half the memory; small updates are rounded away);
- ``fp16-mixed``: float32 master weights, float16 autocast with loss scaling (CUDA only).

Training, Fisher passes, the reference cache, generation, scoring and the audit all run on the
policy's device under its autocast.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..util.errors import LetheError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16-mixed", "bf16", "fp16-mixed")
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
FLASH_PACKAGES = {"flash_attention_2": "flash-attn", "flash_attention_3": "flash-attn-3"}


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"                    # auto: cuda when available
    precision: str = "auto"                 # auto: bf16-mixed on CUDA, fp32 on CPU
    attn_implementation: str | None = None  # transformers' attn_implementation (None: its default)
    gradient_checkpointing: bool = False    # recompute activations in backward: less memory, ~30% more time
    fused_head: bool = True                 # training losses from hidden states + head by chunks, no [B,T,V] logits
    compile: bool = False                   # torch.compile each decoder block for training (dynamic shapes)

    def __post_init__(self):
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise LetheError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got '{self.device}'")
        if self.precision not in PRECISIONS:
            raise LetheError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.attn_implementation is not None and self.attn_implementation not in ATTENTION:
            raise LetheError(f"attn_implementation must be one of {', '.join(ATTENTION)}, got "
                             f"'{self.attn_implementation}'")
        if self.attn_implementation in FLASH_PACKAGES:
            self._require_flash()

    def _require_flash(self) -> None:
        """FlashAttention kernels are a separate package and CUDA only: say so before any model work, not as
        transformers' ImportError after the weights are read."""
        from transformers.utils import import_utils

        name = self.attn_implementation
        if self.device == "cpu" or not torch.cuda.is_available():
            raise LetheError(f"--attn-implementation {name} runs on CUDA only, and this run has no CUDA device "
                             "(--device cpu, or torch sees none); use sdpa")
        available = getattr(import_utils, f"is_{name.replace('attention', 'attn')}_available", None)
        if available is not None and not available():
            raise LetheError(f"--attn-implementation {name} needs the {FLASH_PACKAGES[name]} package "
                             f"(pip install {FLASH_PACKAGES[name]}), which is not usable here; or use sdpa")

    # -- resolution ------------------------------------------------------------------------------
    @property
    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise LetheError(f"device '{self.device}' asked for, but torch sees no CUDA device "
                             f"(torch {torch.__version__}); use --device cpu")
        return torch.device(self.device)

    @property
    def resolved_precision(self) -> str:
        cuda = self.resolved_device.type == "cuda"
        precision = self.precision if self.precision != "auto" else ("bf16-mixed" if cuda else "fp32")
        if precision == "fp16-mixed" and not cuda:
            raise LetheError("precision fp16-mixed needs CUDA (loss scaling runs on the GPU); on a CPU use "
                             "bf16-mixed or fp32")
        return precision

    @property
    def weight_dtype(self) -> torch.dtype:
        """What weights are stored in: bfloat16 only for pure bf16; mixed precision keeps fp32 masters."""
        return torch.bfloat16 if self.resolved_precision == "bf16" else torch.float32

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(self.resolved_precision)

    def describe(self) -> dict:
        return {"device": str(self.resolved_device), "precision": self.resolved_precision,
                "weight_dtype": str(self.weight_dtype).replace("torch.", ""),
                "attn_implementation": self.attn_implementation, "gradient_checkpointing": self.gradient_checkpointing,
                "fused_head": self.fused_head, "compile": self.compile}

    # -- application -----------------------------------------------------------------------------
    def init_distributed(self) -> None:
        """Under a launcher (torchrun, accelerate launch), join the process group now, so work before the
        training loop (the epoch-0 evaluation, reference caches) is already shared between processes."""
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            PartialState(cpu=self.resolved_device.type == "cpu")

    def autocast(self):
        """The policy's autocast for model calls outside the training loop (which uses accelerate's)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.resolved_device.type, dtype=dtype)

    def place(self, model):
        """Move ``model`` to the policy's device and weight dtype; switch on activation checkpointing."""
        model = model.to(device=self.resolved_device, dtype=self.weight_dtype)
        if self.gradient_checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise LetheError(f"{type(model).__name__} does not support gradient checkpointing")
            # Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings (LoRA) work.
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        return model

    def compile_blocks(self, model) -> list:
        """With ``compile``, ``torch.compile`` every decoder block in place (dynamic shapes, since batches are
        padded per batch) and return the blocks, for :func:`uncompile_blocks`. Block by block, not the whole
        model: state-dict names stay as they are, and the hooks Lethe puts on the decoder (fused head,
        hidden-state inputs) stay outside the compiled code."""
        if not self.compile:
            return []
        from ..model.layers import decoder_layers

        blocks = list(decoder_layers(model))
        for block in blocks:
            block.compile(dynamic=True)
        return blocks


def uncompile_blocks(blocks) -> None:
    for block in blocks:
        block._compiled_call_impl = None


DEFAULT_RUNTIME = RuntimeConfig()

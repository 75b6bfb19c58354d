"""Decoder layers of a causal LM, and their outputs captured by forward hooks (hidden-state inputs)."""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Iterable, Iterator

import torch

from ..util.errors import LetheError


def unwrap(model):
    """The transformers model under DDP/FSDP wrappers and a peft wrapper."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def cache_kwargs(model, cache) -> dict:
    """A forward's KV-cache keyword: ``cache`` where the model's forward takes it (transformers 5), else
    ``past_key_values`` (the older name, deprecated there)."""
    return {_cache_keyword(type(unwrap(model))): cache}


@lru_cache(maxsize=None)
def _cache_keyword(model_class: type) -> str:
    """Read once per model class: generation asks at every decoding step."""
    import inspect

    try:
        params = inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):
        params = {}
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output):
    """The KV cache a forward returned, under either name."""
    if hasattr(output, "keys") and "cache" in output.keys():
        return output["cache"]
    return getattr(output, "past_key_values", None)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of transformer blocks (``model.layers`` in Llama, ``transformer.h`` in GPT-2, ...)."""
    base = unwrap(model)
    n = getattr(base.config, "num_hidden_layers", None) or getattr(base.config, "n_layer", None)
    candidates = [(name, m) for name, m in base.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if not candidates:
        raise LetheError(f"cannot find the {n} decoder layers of {type(base).__name__}: hidden-state inputs "
                         "need a ModuleList of transformer blocks")
    return min(candidates, key=lambda c: c[0].count("."))[1]  # the outermost such list


@contextmanager
def capture_layers(model, layers: Iterable[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, each forward of ``model`` stores the output of decoder layer i at ``out[i]``
    (no layers: nothing is hooked, and the model's blocks need not be found)."""
    layers = sorted(set(layers))
    blocks = decoder_layers(model) if layers else []
    out: dict[int, torch.Tensor] = {}
    handles = []
    for i in layers:
        if not 0 <= i < len(blocks):
            raise LetheError(f"layer {i} does not exist: the model has decoder layers 0..{len(blocks) - 1}")

        def hook(module, args, output, i=i):
            out[i] = output[0] if isinstance(output, tuple) else output

        handles.append(blocks[i].register_forward_hook(hook))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


# Config fields of architectures whose logits are not plain ``lm_head(hidden)`` (soft-capping, scaling).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def output_head(model) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(decoder, output head) when the model's logits are exactly ``head(decoder output)``, else None.

    A head that is not a plain ``nn.Linear`` (a LoRA-wrapped head), a sharded head, or a config with a logit
    transform rules the fused path out; the engine also checks the equality numerically once per head
    (:func:`head_matches`).
    """
    base = unwrap(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or not hasattr(base, "get_decoder"):
        return None
    # Sharded weights (FSDP2's DTensor; FSDP1 or ZeRO-3 leave an empty placeholder outside forward) exist
    # whole only inside the module's own forward: the head is then applied there, on full logits.
    weight = head.weight
    if type(weight).__name__ == "DTensor" or tuple(weight.shape) != (head.out_features, head.in_features):
        return None
    config = getattr(base, "config", None)
    if any(getattr(config, k, None) not in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS):
        return None
    decoder = base.get_decoder()
    return (decoder, head) if decoder is not base else None


@contextmanager
def capture_head_inputs(decoder: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward stores the decoder's last hidden state (the head's input) at ``out["hidden"]``."""
    out: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        out["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder.register_forward_hook(hook)
    try:
        yield out
    finally:
        handle.remove()


def head_matches(head: torch.nn.Linear, hidden_last: torch.Tensor, logits_last: torch.Tensor) -> bool:
    """Whether the model's logits at the last position equal ``head(hidden)`` there (to the dtype's round-off)."""
    device_type = hidden_last.device.type if hidden_last.device.type in ("cuda", "cpu") else "cpu"
    with torch.no_grad(), torch.autocast(device_type, enabled=False):
        mine = torch.nn.functional.linear(hidden_last.float(), head.weight.float(),
                                          None if head.bias is None else head.bias.float())
        tol = 1e-4 if logits_last.dtype == torch.float32 else 3e-2
        return bool(torch.allclose(mine, logits_last.float(), rtol=tol, atol=tol))

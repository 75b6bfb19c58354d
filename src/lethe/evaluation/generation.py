"""Greedy decoding for evaluation: finished rows leave the batch, and the batch is sized from free memory.

``model.generate`` keeps computing a row after its end-of-answer token until the whole batch is
done, so one long answer makes every short one pay for its length. :func:`greedy_decode` runs the
same greedy search on the model's KV cache and drops a row from the batch (and from the cache) as
soon as it emits a stop token. Models whose cache cannot drop rows (no ``batch_select_indices``)
go through ``model.generate`` instead.

:func:`generation_rows` picks how many prompts decode together from the memory one row needs (its KV
cache at full length, the prefill's activations, the last position's logits) and the memory free
now (CUDA: ``mem_get_info``; CPU: ``MemAvailable``), using a quarter of it, at most 256 rows on a GPU and 64 on
a CPU.
"""
from __future__ import annotations

import os

import torch

from ..model.layers import cache_kwargs, output_cache

MEMORY_SHARE = 0.25   # of the free memory, for one generation batch
MAX_ROWS = 256        # beyond this, a bigger batch gains nothing measurable on a GPU
# On a CPU decoding is compute-bound: 256 rows ran 15 % faster than 64 on a 6M-parameter Llama, for 290 MiB
# more peak memory (benchmarks/headtohead). Fewer rows keep an evaluation's memory near a plain batch of 32.
MAX_ROWS_CPU = 64


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def bytes_per_row(config, prompt_tokens: int, new_tokens: int, elem_bytes: int) -> int:
    """Memory one generated row needs: KV cache for every layer at full length, the prefill's widest
    activations (MLP width) and float32 logits of one position."""
    get = lambda *names, default=None: next((getattr(config, n) for n in names if getattr(config, n, None)), default)
    layers = get("num_hidden_layers", "n_layer", default=1)
    hidden = get("hidden_size", "n_embd", "d_model", default=1024)
    heads = get("num_attention_heads", "n_head", default=1)
    kv_heads = get("num_key_value_heads", default=heads)
    head_dim = get("head_dim", default=hidden // max(1, heads))
    inner = get("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)
    vocab = get("vocab_size", default=32000)
    length = prompt_tokens + new_tokens
    kv = 2 * layers * kv_heads * head_dim * length * elem_bytes
    prefill = prompt_tokens * (4 * hidden + 2 * inner) * elem_bytes
    return kv + prefill + 2 * vocab * 4


def generation_rows(model, prompt_tokens: int, new_tokens: int, n_prompts: int, limit: int | None = None) -> int:
    """How many prompts to decode at once: what a quarter of the free memory holds, at most ``limit``
    (or :data:`MAX_ROWS`) and the number of prompts."""
    param = next(model.parameters())
    elem = torch.finfo(torch.get_autocast_dtype(param.device.type)).bits // 8 if torch.is_autocast_enabled(
        param.device.type) else param.element_size()
    per_row = bytes_per_row(getattr(model, "config", None), prompt_tokens, new_tokens, elem)
    fits = int(MEMORY_SHARE * free_memory_bytes(param.device) // max(1, per_row))
    cap = limit or (MAX_ROWS if param.device.type != "cpu" else MAX_ROWS_CPU)
    return max(1, min(fits, cap, n_prompts))


def can_drop_rows(cache) -> bool:
    return cache is not None and hasattr(cache, "batch_select_indices")


@torch.no_grad()
def greedy_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                  stop_ids, pad_id: int, prefix=None) -> torch.Tensor | None:
    """Greedy continuations ``[B, ≤max_new_tokens]`` of left-padded prompts, each row ended at its first stop
    token (kept) and padded with ``pad_id`` after it. ``prefix`` (a
    :class:`~lethe.evaluation.requests.SharedPrefix`): the prompts are what follows it, and decoding starts from
    its cache. None when the model's cache cannot drop rows (the caller then uses ``model.generate``)."""
    device = input_ids.device
    B = input_ids.shape[0]
    stops = torch.tensor(list(stop_ids), device=device)
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    if prefix is not None and prefix.length:
        kwargs = {**prefix.inputs({"input_ids": input_ids, "attention_mask": attention_mask}, device),
                  "use_cache": True}
    else:
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": positions,
                  "use_cache": True}
    mask = kwargs["attention_mask"]
    try:
        step = model(**kwargs, logits_to_keep=1)
    except TypeError:
        step = model(**kwargs)
    cache = output_cache(step)
    if not can_drop_rows(cache):
        return None
    rows = torch.arange(B, device=device)  # which original row each live batch row is
    next_pos = mask.sum(-1)
    for t in range(max_new_tokens):
        token = step.logits[:, -1].argmax(-1)
        out[rows, t] = token
        done = torch.isin(token, stops)
        if t == max_new_tokens - 1 or bool(done.all()):
            return out[:, : t + 1]
        if bool(done.any()):
            live = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(live)
            rows, token, mask, next_pos = rows[live], token[live], mask[live], next_pos[live]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        step = model(input_ids=token.unsqueeze(-1), attention_mask=mask, position_ids=next_pos.unsqueeze(-1),
                     **cache_kwargs(model, cache), use_cache=True)
        next_pos = next_pos + 1
    return out

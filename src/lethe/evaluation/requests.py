"""The two model requests evaluation needs, batched: answer log-likelihoods and greedy generation.

Metrics never call the model; they take what these return.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..data.batching import length_sorted_batches, pad_batch
from ..data.prompt import PromptFormat, encode_qa, prompt_ids
from ..objectives.tokens import sequence_logprob


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def answer_nll(model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32,
               max_length: int = 512, fmt: PromptFormat | None = None) -> tuple[list[float], list[int]]:
    """Summed answer-token NLL and answer-token count for each (question, answer)."""
    encoded = [encode_qa(tokenizer, q, a, max_length=max_length, fmt=fmt) for q, a in pairs]
    nll = [0.0] * len(encoded)
    count = [0] * len(encoded)
    was_training = model.training
    model.eval()
    device = _device(model)
    for idx in length_sorted_batches([len(e["input_ids"]) for e in encoded], batch_size):
        batch = pad_batch([encoded[i] for i in idx], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        seq_logp, n = sequence_logprob(logits, batch["labels"].to(device))
        for j, i in enumerate(idx):
            nll[i], count[i] = -float(seq_logp[j]), int(n[j])
    model.train(was_training)
    return nll, count


@torch.no_grad()
def generate_answers(model, tokenizer, questions: Sequence[str], *, max_new_tokens: int = 64,
                     batch_size: int = 32, fmt: PromptFormat | None = None) -> list[str]:
    """Greedy answers: prompts sorted by length, left-padded, KV cache on."""
    prompts = [prompt_ids(tokenizer, q, fmt) for q in questions]
    outputs = [""] * len(prompts)
    was_training = model.training
    model.eval()
    device = _device(model)
    for idx in length_sorted_batches([len(p) for p in prompts], batch_size):
        batch = pad_batch([{"input_ids": prompts[i]} for i in idx], tokenizer.pad_token_id, side="left")
        out = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = out[:, batch["input_ids"].shape[1]:]
        for j, i in enumerate(idx):
            outputs[i] = tokenizer.decode(new[j], skip_special_tokens=True).strip()
    model.train(was_training)
    return outputs

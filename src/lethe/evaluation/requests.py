"""The two model requests evaluation needs, batched: answer log-likelihoods and greedy generation.

Metrics never call the model; they take what these return.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..data.batching import length_sorted_batches, pad_batch
from ..data.prompt import IGNORE, as_prompter
from ..objectives.tokens import sequence_logprob


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _answer_logits(model, batch: dict, device, keep: int) -> torch.Tensor:
    """Logits at the last ``keep`` positions of a left-padded batch (where every answer lies).

    Position ids count real tokens only, so left padding changes nothing; models whose forward
    has no ``logits_to_keep`` get all positions, cut afterwards.
    """
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    try:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
    except TypeError:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return logits[:, -keep:]


@torch.no_grad()
def answer_nll(model, prompter, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32,
               max_length: int = 512) -> tuple[list[float], list[int]]:
    """Summed answer-token NLL and answer-token count for each (question, answer).

    Identical pairs are scored once (a paraphrase often equals the answer). Batches are
    left-padded so every answer ends at the last position and the vocabulary projection runs only
    over the answer span, not the prompt (most of a chat-formatted sequence).
    """
    prompter = as_prompter(prompter)
    unique = list(dict.fromkeys(pairs))
    encoded = [prompter.encode_qa(q, a, max_length=max_length) for q, a in unique]
    scored: dict[tuple[str, str], tuple[float, int]] = {}
    was_training = model.training
    model.eval()
    device = _device(model)
    for idx in length_sorted_batches([len(e["input_ids"]) for e in encoded], batch_size):
        batch = pad_batch([encoded[i] for i in idx], prompter.pad_id, side="left")
        labels = batch["labels"]
        counted = (labels != IGNORE).any(0).nonzero()
        keep = labels.shape[1] - int(counted[0]) + 1 if len(counted) else 2  # the first answer token's predictor on
        seq_logp, n = sequence_logprob(_answer_logits(model, batch, device, keep), labels[:, -keep:].to(device))
        for j, i in enumerate(idx):
            scored[unique[i]] = (-float(seq_logp[j]), int(n[j]))
    model.train(was_training)
    return [scored[p][0] for p in pairs], [scored[p][1] for p in pairs]


@torch.no_grad()
def generate_answers(model, prompter, questions: Sequence[str], *, max_new_tokens: int = 64,
                     batch_size: int = 32, stats: dict | None = None) -> list[str]:
    """Greedy answers: prompts sorted by length, left-padded, KV cache on; a row ends at eos or the
    chat template's end-of-turn token. ``stats`` (a dict) accumulates ``generated_tokens`` (up to each
    row's stop) and ``generation_s``."""
    import time

    started = time.perf_counter()
    prompter = as_prompter(prompter)
    prompts = [prompter.prompt_ids(q) for q in questions]
    outputs = [""] * len(prompts)
    was_training = model.training
    model.eval()
    device = _device(model)
    for idx in length_sorted_batches([len(p) for p in prompts], batch_size):
        batch = pad_batch([{"input_ids": prompts[i]} for i in idx], prompter.pad_id, side="left")
        out = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=prompter.pad_id,
            eos_token_id=prompter.stop_ids,
        )
        new = out[:, batch["input_ids"].shape[1]:]
        for j, i in enumerate(idx):
            outputs[i] = prompter.decode(new[j]).strip()
        if stats is not None:
            stops = torch.isin(new, torch.tensor(prompter.stop_ids + [prompter.pad_id], device=new.device))
            ended = stops.cumsum(-1) > 0  # a row's tokens after its first stop are padding
            stats["generated_tokens"] = stats.get("generated_tokens", 0) + int((~ended).sum()) + int(stops.any(-1).sum())
    if stats is not None:
        stats["generation_s"] = stats.get("generation_s", 0.0) + time.perf_counter() - started
    model.train(was_training)
    return outputs

"""Verbatim and knowledge memorization: MUSE's VerbMem and KnowMem, and open-unlearning's exact
memorization (EM) and extraction strength (ES).

- VerbMem (MUSE): the model continues the first ``prefix_tokens`` tokens of a forget text greedily for
  ``continuation_tokens``; ROUGE-L F1 against the text's true continuation, × 100.
- KnowMem (MUSE): questions asked after ``shots`` worked examples (``Question: …\\nAnswer: …`` blocks),
  the greedy answer cut at its first blank line; ROUGE-L F1 against the answer, × 100.
- EM: per QA item, the share of answer tokens whose teacher-forced argmax is the true token.
- ES: per QA item, 1 − k/|y| for the smallest k such that the greedy continuation of the question and
  the first k answer tokens reproduces the rest of the answer exactly (1: the whole answer is extracted
  from the question alone; 0: not even with all but nothing of it given).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..data.batching import pad_batch
from ..data.prompt import IGNORE, as_prompter
from . import metrics as M
from .requests import ModelRequests


@torch.no_grad()
def verbmem(model, prompter, texts: Sequence, *, prefix_tokens: int = 32, continuation_tokens: int = 128,
            requests: ModelRequests | None = None) -> list[float]:
    """VerbMem per text (ROUGE-L F1 × 100); texts shorter than a prefix plus one token are skipped."""
    prompter = as_prompter(prompter)
    requests = requests or ModelRequests(model, prompter)
    tok = prompter.tokenizer
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []  # raw text ids: BOS in front, as in training
    ids = [prompter.text_token_ids(t) for t in texts]
    keep = [s for s in ids if len(s) > prefix_tokens]
    truths = [s[prefix_tokens : prefix_tokens + continuation_tokens] for s in keep]
    gens = requests.continuations([bos + s[:prefix_tokens] for s in keep], [len(t) for t in truths])
    return [100.0 * f for f in M.rouge_l_f1([tok.decode(g) for g in gens], [tok.decode(t) for t in truths])]


@torch.no_grad()
def knowmem(model, prompter, questions: Sequence, examples: Sequence = (), *, shots: int = 3,
            max_new_tokens: int = 32, requests: ModelRequests | None = None) -> list[float]:
    """KnowMem per question (ROUGE-L F1 × 100), few-shot from ``examples`` (QA records not asked)."""
    prompter = as_prompter(prompter)
    requests = requests or ModelRequests(model, prompter)
    tok = prompter.tokenizer
    context = "".join(f"Question: {e.question}\nAnswer: {e.answer}\n\n" for e in list(examples)[:shots])
    prompts = [tok(context + f"Question: {q.question}\nAnswer:", add_special_tokens=True)["input_ids"]
               for q in questions]
    gens = requests.continuations(prompts, [max_new_tokens] * len(prompts))
    answers = [tok.decode(g, skip_special_tokens=True).split("\n\n")[0].strip() for g in gens]
    return [100.0 * f for f in M.rouge_l_f1(answers, [q.answer for q in questions])]


@torch.no_grad()
def exact_memorization(model, prompter, records: Sequence, *, batch_size: int = 16) -> list[float]:
    """EM per QA item: the share of answer tokens predicted exactly under teacher forcing."""
    prompter = as_prompter(prompter)
    device = next(model.parameters()).device
    encoded = [prompter.encode(r) for r in records]
    out = []
    for start in range(0, len(encoded), batch_size):
        batch = pad_batch(encoded[start : start + batch_size], prompter.pad_id)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        pred = logits[:, :-1].argmax(-1).cpu()
        labels = batch["labels"][:, 1:]
        counted = labels != IGNORE
        hits = ((pred == labels) & counted).sum(-1).float() / counted.sum(-1).clamp(min=1)
        out += hits.tolist()
    return out


@torch.no_grad()
def extraction_strength(model, prompter, records: Sequence, *, requests: ModelRequests | None = None) -> list[float]:
    """ES per QA item: 1 - k/|y| for the smallest answer prefix k whose greedy continuation is the rest. Every
    prefix of every record is continued in one batched request."""
    prompter = as_prompter(prompter)
    requests = requests or ModelRequests(model, prompter)
    prefixes, lengths, answers = [], [], []
    for r in records:
        enc = prompter.encode(r)
        start = next(i for i, label in enumerate(enc["labels"]) if label != IGNORE)
        prompt, answer = enc["input_ids"][:start], enc["input_ids"][start:]
        answers.append(answer)
        prefixes += [prompt + answer[:k] for k in range(len(answer))]
        lengths += [len(answer) - k for k in range(len(answer))]
    conts = requests.continuations(prefixes, lengths, keep_eos=True)
    out, at = [], 0
    for answer in answers:
        n = len(answer)
        k_min = next((k for k in range(n) if conts[at + k] == answer[k:]), n)
        out.append(1.0 - k_min / n if n else 0.0)
        at += n
    return out

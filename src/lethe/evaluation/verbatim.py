"""Verbatim and knowledge memorization: MUSE's VerbMem and KnowMem, and open-unlearning's exact
memorization (EM) and extraction strength (ES).

- VerbMem (MUSE): the model continues the first ``prefix_tokens`` tokens of a forget text greedily for
  ``continuation_tokens``; ROUGE-L F1 against the text's true continuation, × 100.
- KnowMem (MUSE): questions asked after ``shots`` worked examples (``Question: …\\nAnswer: …`` blocks),
  the greedy answer cut at its first blank line; ROUGE-L F1 against the answer, × 100.
- EM: per QA item, the share of answer tokens whose teacher-forced argmax is the true token.
- ES: per QA item, 1 − k/|y| for the smallest k such that the greedy continuation of the question and
  the first k answer tokens reproduces the rest of the answer exactly (1: the whole answer is extracted
  from the question alone; 0: no suffix is reproduced, where open-unlearning's loop leaves 1/|y|).
  Greedy decoding from a prefix reproduces the suffix exactly when every teacher-forced argmax over the
  suffix is the true token, so ES is read from the same forward as EM: k is one past the last position
  whose argmax misses (:func:`extraction_strength_greedy` decodes every prefix, for tests).

EM and ES count the answer tokens without the end-of-answer token, as open-unlearning does
(:func:`~lethe.evaluation.requests.answer_tokens`); ``include_end=True`` counts it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..data.prompt import IGNORE, as_prompter
from . import metrics as M
from .requests import ModelRequests, answer_tokens, token_statistics


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


def exact_memorization_of(stats: Sequence[dict], include_end: bool = False) -> list[float]:
    """EM per record from its token statistics."""
    out = []
    for st in stats:
        hit = answer_tokens(st, include_end)["hit"]
        out.append(float(hit.mean()) if len(hit) else 0.0)
    return out


def extraction_strength_of(stats: Sequence[dict], include_end: bool = False) -> list[float]:
    """ES per record from its token statistics: 1 - k/n, k one past the last position whose argmax misses."""
    out = []
    for st in stats:
        hit = np.asarray(answer_tokens(st, include_end)["hit"], dtype=bool)
        n = len(hit)
        misses = np.flatnonzero(~hit)
        k = int(misses[-1]) + 1 if len(misses) else 0
        out.append(1.0 - k / n if n else 0.0)
    return out


@torch.no_grad()
def exact_memorization(model, prompter, records: Sequence, *, batch_size: int = 16,
                       include_end: bool = False) -> list[float]:
    """EM per QA item: the share of answer tokens predicted exactly under teacher forcing."""
    return exact_memorization_of(token_statistics(model, prompter, records, batch_size=batch_size), include_end)


@torch.no_grad()
def extraction_strength(model, prompter, records: Sequence, *, requests: ModelRequests | None = None,
                        include_end: bool = False) -> list[float]:
    """ES per QA item from one teacher-forced forward per record (shared with EM and the attacks through
    ``requests``)."""
    stats = requests.token_stats(records) if requests is not None else token_statistics(model, prompter, records)
    return extraction_strength_of(stats, include_end)


@torch.no_grad()
def extraction_strength_greedy(model, prompter, records: Sequence, *, requests: ModelRequests | None = None,
                               include_end: bool = False) -> list[float]:
    """ES the slow, obvious way: greedy decoding from every answer prefix, the smallest k whose continuation
    is the rest of the answer. Equal to :func:`extraction_strength` (a test checks it)."""
    prompter = as_prompter(prompter)
    requests = requests or ModelRequests(model, prompter)
    stop = set(prompter.stop_ids)
    prefixes, lengths, answers = [], [], []
    for r in records:
        enc = prompter.encode(r)
        start = next(i for i, label in enumerate(enc["labels"]) if label != IGNORE)
        prompt, answer = enc["input_ids"][:start], enc["input_ids"][start:]
        if not include_end and answer and answer[-1] in stop:
            answer = answer[:-1]
        answers.append(answer)
        prefixes += [prompt + answer[:k] for k in range(len(answer))]
        lengths += [len(answer) - k for k in range(len(answer))]
    conts = requests.continuations(prefixes, lengths, keep_eos=True)
    out, at = [], 0
    for answer in answers:
        n = len(answer)
        k_min = next((k for k in range(n) if conts[at + k][: n - k] == answer[k:]), n)
        out.append(1.0 - k_min / n if n else 0.0)
        at += n
    return out

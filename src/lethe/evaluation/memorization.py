"""Extraction metrics for memorized sequences (IHL seed App. H; SPEC §4): EL_n, MA, perplexity.

Sequences are token-id lists. When the tokenizer has a BOS token it is put in front, as in
training. EL_n needs a greedy continuation of every prefix: :func:`extraction_likelihood`
batches all prefixes of all sequences (sorted by how much they must generate, left-padded,
KV cache on); :func:`extraction_likelihood_naive` does one prefix at a time, for tests and the
benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..data.batching import pad_batch
from ..data.prompt import IGNORE
from ..ops.tokens import sequence_logprob
from ..util.errors import LetheError
from ..util.validation import bounded, check_ranges

ORIENTATIONS = ("generated-in-truth", "truth-in-generated")
DENOMINATORS = ("counted", "truth")


@dataclass(frozen=True)
class ELConfig:
    """How EL_n is counted. The default is the IHL seed's Eq. 3-4: the share of the *generated* suffix's
    n-grams that occur in the true suffix. ``truth-in-generated`` counts the other way (an earlier SPEC
    had it so); ``denominator="truth"`` divides by the true suffix's n-gram count and ``keep_eos`` leaves
    the EOS that ends a generation in it, as the knowledge-unlearning code does (SPEC §8)."""

    n: int = bounded(10, int, 1, option="--el-n")
    orientation: str = "generated-in-truth"
    denominator: str = "counted"
    keep_eos: bool = False

    def __post_init__(self):
        check_ranges(self)
        if self.orientation not in ORIENTATIONS:
            raise LetheError(f"--el-orientation: expected one of {', '.join(ORIENTATIONS)}, got {self.orientation!r}")
        if self.denominator not in DENOMINATORS:
            raise LetheError(f"--el-denominator: expected one of {', '.join(DENOMINATORS)}, got {self.denominator!r}")

    def counting(self) -> dict:
        return {"orientation": self.orientation, "denominator": self.denominator}


def ngrams(seq: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def ngram_overlap(generated: Sequence[int], truth: Sequence[int], n: int, orientation: str = "generated-in-truth",
                  denominator: str = "counted") -> float:
    """Share of one side's n-grams found among the other's (repeats counted each time, not clipped).

    ``generated-in-truth`` (the paper): the generation's n-grams found in the truth; ``truth-in-generated``
    the reverse. ``denominator``: the number of n-grams of the side counted, or of the truth.
    """
    a, b = (generated, truth) if orientation == "generated-in-truth" else (truth, generated)
    grams_a, grams_b = ngrams(a, n), set(ngrams(b, n))
    total = len(grams_a) if denominator == "counted" else len(ngrams(truth, n))
    if not total:
        return 0.0
    return sum(g in grams_b for g in grams_a) / total


def el_from_continuations(seq: Sequence[int], continuations: dict[int, Sequence[int]], n: int,
                          orientation: str = "generated-in-truth", denominator: str = "counted") -> float:
    """EL_n(x) = sum over prefix lengths i = 1..T-n of overlap(continuation of x[:i], x[i:]) / (T - n)."""
    T = len(seq)
    if T <= n:
        return 0.0
    return sum(ngram_overlap(continuations[i], seq[i:], n, orientation, denominator)
               for i in range(1, T - n + 1)) / (T - n)


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _cut(tokens: Sequence[int], stop: set[int], keep: int | None = None) -> list[int]:
    """Tokens up to the first stop token; ``keep``: that token itself stays when it is this id (EOS)."""
    out = []
    for t in tokens:
        if t in stop:
            if keep is not None and t == keep:
                out.append(int(t))
            break
        out.append(int(t))
    return out


@torch.no_grad()
def greedy_continuations(model, tokenizer, prefixes: Sequence[Sequence[int]], lengths: Sequence[int], *,
                         batch_size: int = 64, keep_eos: bool = False) -> list[list[int]]:
    """Greedy continuation of each prefix by ``lengths[k]`` tokens (fewer if EOS comes first; with
    ``keep_eos`` that EOS is the continuation's last token).

    Requests are sorted by the number of tokens to generate, so a batch generates no more than
    its longest request needs.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bos = _bos(tokenizer)
    stop = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    order = sorted(range(len(prefixes)), key=lambda k: (lengths[k], len(prefixes[k])))
    out: list[list[int]] = [[] for _ in prefixes]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = pad_batch([{"input_ids": bos + list(prefixes[k])} for k in idx], tokenizer.pad_token_id, side="left")
        gen = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                             max_new_tokens=max(lengths[k] for k in idx), min_new_tokens=0, do_sample=False,
                             use_cache=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = gen[:, batch["input_ids"].shape[1] :].tolist()
        for row, k in enumerate(idx):
            out[k] = _cut(new[row], stop, tokenizer.eos_token_id if keep_eos else None)[: lengths[k]]
    model.train(was_training)
    return out


def extraction_likelihood(model, tokenizer, sequences: Sequence[Sequence[int]], *, n: int = 10, batch_size: int = 64,
                          el: ELConfig | None = None) -> list[float]:
    """EL_n of each sequence, all prefixes of all sequences batched together (counting as ``el`` says;
    its ``n`` wins over ``n`` when given)."""
    el = el or ELConfig(n=n)
    n = el.n
    requests, owners = [], []
    for s, seq in enumerate(sequences):
        for i in range(1, len(seq) - n + 1):
            requests.append(list(seq[:i]))
            owners.append((s, i))
    conts = greedy_continuations(model, tokenizer, requests, [len(sequences[s]) - i for s, i in owners],
                                 batch_size=batch_size, keep_eos=el.keep_eos)
    per_seq: list[dict[int, list[int]]] = [{} for _ in sequences]
    for (s, i), c in zip(owners, conts):
        per_seq[s][i] = c
    return [el_from_continuations(seq, per_seq[s], n, **el.counting()) for s, seq in enumerate(sequences)]


def extraction_likelihood_naive(model, tokenizer, sequences: Sequence[Sequence[int]], *, n: int = 10,
                                el: ELConfig | None = None) -> list[float]:
    """The obvious form: one prefix, one generate call at a time."""
    el = el or ELConfig(n=n)
    out = []
    for seq in sequences:
        conts = {i: greedy_continuations(model, tokenizer, [list(seq[:i])], [len(seq) - i], batch_size=1,
                                         keep_eos=el.keep_eos)[0]
                 for i in range(1, len(seq) - el.n + 1)}
        out.append(el_from_continuations(seq, conts, el.n, **el.counting()))
    return out


def _encoded(tokenizer, seq):
    bos = _bos(tokenizer)
    return {"input_ids": bos + list(seq), "labels": [IGNORE] * len(bos) + list(seq)}


@torch.no_grad()
def memorization_accuracy(model, tokenizer, sequences: Sequence[Sequence[int]], *, batch_size: int = 32) -> list[float]:
    """MA(x): share of positions t = 2..T where the teacher-forced argmax equals x_t."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        b = pad_batch([_encoded(tokenizer, s) for s in chunk], tokenizer.pad_token_id)
        logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
        pred = logits[:, :-1].argmax(-1).cpu()
        target = b["input_ids"][:, 1:]
        offset = len(_bos(tokenizer))
        for row, seq in enumerate(chunk):
            # predictions of x_2..x_T sit at positions offset .. offset + T - 2
            p = pred[row, offset : offset + len(seq) - 1]
            t = target[row, offset : offset + len(seq) - 1]
            out.append(float((p == t).float().mean()) if len(seq) > 1 else 0.0)
    model.train(was_training)
    return out


@torch.no_grad()
def perplexity(model, tokenizer, sequences: Sequence[Sequence[int]], *, batch_size: int = 16) -> float:
    """exp(total NLL / total predicted tokens) over the sequences."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        b = pad_batch([_encoded(tokenizer, s) for s in sequences[start : start + batch_size]], tokenizer.pad_token_id)
        logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
        seq_logp, n = sequence_logprob(logits, b["labels"].to(device))
        nll -= float(seq_logp.sum())
        count += int(n.sum())
    model.train(was_training)
    return float(np.exp(nll / max(1, count)))

"""The model requests evaluation makes, batched: answer log-likelihoods, per-token statistics and greedy
generation, and :class:`ModelRequests`, which serves one evaluation's requests with each model call made once.

Metrics never call the model; they take what these return.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from ..data.batching import length_sorted_batches, pad_batch
from ..data.prompt import IGNORE, as_prompter
from ..model.layers import cache_kwargs, output_cache
from ..ops.tokens import MIN_SHARED_PREFIX, align_targets, sequence_logprob, upcast
from .sharding import shard_map


def _device(model) -> torch.device:
    return next(model.parameters()).device


# float64 vocabulary statistics run this many elements at a time (~16 MiB per temporary)
STATS_CHUNK_ELEMENTS = 1 << 21


class SharedPrefix:
    """The tokens every sequence of a request starts with (a chat template's system header and date, a fixed
    instruction), run through the model once; each batch then starts from a copy of its KV cache, so only what
    follows the prefix is computed per row.

    ``length`` is 0 (nothing shared) when the sequences share fewer than :data:`MIN_SHARED_PREFIX` tokens or
    the model's cache cannot be copied and repeated for a batch. ``limit`` caps the prefix (e.g. before the
    first scored token's predictor). The values equal a full forward to float round-off.
    """

    def __init__(self, model, sequences: Sequence[Sequence[int]], *, limit: int | None = None):
        self.length, self._cache, self._mask_dtype = 0, None, torch.long
        if not sequences:
            return
        first = sequences[0]
        n = min(min(len(s) for s in sequences) - 1, limit if limit is not None else len(first))
        for s in sequences[1:]:
            n = min(n, _common_prefix_len(first, s, n))
            if n < MIN_SHARED_PREFIX:
                return
        if n < MIN_SHARED_PREFIX:
            return
        device = _device(model)
        ids = torch.tensor([list(first[:n])], device=device)
        try:
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
        except TypeError:
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        cache = output_cache(out)
        if cache is None or not hasattr(cache, "batch_repeat_interleave") or not hasattr(cache, "crop"):
            return
        self.length, self._cache = n, cache
        self._cache_key = next(iter(cache_kwargs(model, None)))  # the forward's name for it

    def cache(self, rows: int):
        """A fresh cache holding the prefix for ``rows`` rows (the shared one is never written to)."""
        import copy

        cache = copy.deepcopy(self._cache)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache

    def rest(self, sequence: Sequence[int]) -> list[int]:
        return list(sequence[self.length:])

    def inputs(self, batch: dict, device) -> dict:
        """Model inputs for a left-padded batch of the rows' tokens after the prefix: the prefix's cache, an
        attention mask over prefix and rows, positions counting real tokens."""
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if self.length:
            mask = torch.cat([mask.new_ones(mask.shape[0], self.length), mask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        if self.length:
            kwargs.update({self._cache_key: self.cache(ids.shape[0])}, use_cache=True)
        return kwargs


NO_PREFIX = SharedPrefix(None, [])


def _common_prefix_len(a: Sequence[int], b: Sequence[int], n: int) -> int:
    for i in range(min(n, len(a), len(b))):
        if a[i] != b[i]:
            return i
    return min(n, len(a), len(b))


def _answer_logits(model, batch: dict, device, keep: int, prefix: SharedPrefix = NO_PREFIX) -> torch.Tensor:
    """Logits at the last ``keep`` positions of a left-padded batch (where every answer lies), the batch's
    rows being what follows ``prefix``.

    Position ids count real tokens only, so left padding changes nothing; models whose forward
    has no ``logits_to_keep`` get all positions, cut afterwards.
    """
    kwargs = prefix.inputs(batch, device)
    try:
        logits = model(**kwargs, logits_to_keep=keep).logits
    except TypeError:
        logits = model(**kwargs).logits
    return logits[:, -keep:]


@torch.no_grad()
def answer_nll(model, prompter, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32,
               max_length: int = 512, share_prompts: bool = True) -> tuple[list[float], list[int]]:
    """Summed answer-token NLL and answer-token count for each (question, answer).

    Identical pairs are scored once (a paraphrase often equals the answer). With ``share_prompts``,
    the answers to one question (a TOFU item's answer, paraphrase and perturbed answers) share one
    forward of the prompt: its KV cache serves every answer (:func:`_score_shared`). Other pairs go
    in left-padded batches whose vocabulary projection covers only the answer span, not the prompt.
    """
    prompter = as_prompter(prompter)
    unique = list(dict.fromkeys(pairs))
    encoded = [prompter.encode_qa(q, a, max_length=max_length) for q, a in unique]
    was_training = model.training
    model.eval()
    device = _device(model)
    by_question: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(unique):
        by_question.setdefault(q, []).append(i)
    groups = [g for g in by_question.values() if len(g) > 1] if share_prompts else []
    scored: dict[int, tuple[float, int]] = {}
    if groups:
        try:
            scored.update(_score_shared(model, encoded, groups, prompter.pad_id, batch_size, device))
        except _NoSharedCache:
            scored.clear()
    alone = [i for i in range(len(unique)) if i not in scored]
    prefix = SharedPrefix(model, [encoded[i]["input_ids"] for i in alone],
                          limit=min((_first_counted(encoded[i]["labels"]) for i in alone), default=0) - 1) \
        if share_prompts and alone else NO_PREFIX
    for idx in length_sorted_batches([len(encoded[i]["input_ids"]) for i in alone], batch_size):
        idx = [alone[j] for j in idx]
        batch = pad_batch([{k: v[prefix.length:] for k, v in encoded[i].items()} for i in idx], prompter.pad_id,
                          side="left")
        labels = batch["labels"]
        counted = (labels != IGNORE).any(0).nonzero()
        keep = labels.shape[1] - int(counted[0]) + 1 if len(counted) else 2  # the first answer token's predictor on
        seq_logp, n = sequence_logprob(_answer_logits(model, batch, device, keep, prefix),
                                       labels[:, -keep:].to(device))
        for j, i in enumerate(idx):
            scored[i] = (-float(seq_logp[j]), int(n[j]))
    model.train(was_training)
    position = {p: i for i, p in enumerate(unique)}
    return [scored[position[p]][0] for p in pairs], [scored[position[p]][1] for p in pairs]


class _NoSharedCache(Exception):
    """The model returned no croppable KV cache: score every pair on its own."""


def _first_counted(labels: Sequence[int]) -> int:
    return next((t for t, label in enumerate(labels) if label != IGNORE), len(labels))


def _score_shared(model, encoded: list[dict], groups: list[list[int]], pad_id: int, batch_size: int,
                  device) -> dict[int, tuple[float, int]]:
    """(NLL, count) of each encoded pair, the pairs of a group sharing one forward of their common prompt.

    A batch of groups runs its prompts once (left-padded, KV cache kept, logits at the last position
    only: they predict every answer's first token). Then answer slot k of every group in the batch
    runs as one right-padded continuation on that cache, which is cropped back to the prompt after
    each slot. Groups short of slot k repeat their first answer there, and the result is dropped.
    """
    shared = []
    for g in groups:
        cut = max(1, min(_first_counted(encoded[i]["labels"]) for i in g))
        first = encoded[g[0]]["input_ids"]
        while cut > 1 and any(encoded[i]["input_ids"][:cut] != first[:cut] for i in g):
            cut -= 1  # a tokenizer merge across the prompt's end: share only what every answer has
        shared.append((cut, g))
    shared.sort(key=lambda c: (c[0], len(c[1])))
    # what every group's prompt starts with (a chat template's system header) runs once for all of them
    prefix = SharedPrefix(model, [encoded[g[0]]["input_ids"][:cut] for cut, g in shared],
                          limit=min(cut for cut, _ in shared) - 1)
    out: dict[int, tuple[float, int]] = {}
    for start in range(0, len(shared), batch_size):
        chunk = shared[start : start + batch_size]
        prompts = pad_batch([{"input_ids": encoded[g[0]]["input_ids"][prefix.length:cut]} for cut, g in chunk], pad_id,
                            side="left")
        kwargs = {**prefix.inputs(prompts, device), "use_cache": True}
        mask = kwargs["attention_mask"]  # prefix and prompt
        try:
            head = model(**kwargs, logits_to_keep=1)
        except TypeError:
            head = model(**kwargs)
        cache = output_cache(head)
        if cache is None or not hasattr(cache, "crop") or not getattr(cache, "is_croppable", True):
            raise _NoSharedCache
        first_logp = torch.log_softmax(upcast(head.logits[:, -1]), dim=-1)
        lengths = mask.sum(-1, keepdim=True)
        for slot in range(max(len(g) for _, g in chunk)):
            members = [g[slot] if slot < len(g) else g[0] for _, g in chunk]
            conts = []
            for (cut, _), i in zip(chunk, members):
                ids, labels = encoded[i]["input_ids"][cut:], encoded[i]["labels"][cut:]
                conts.append({"input_ids": ids or [pad_id], "labels": labels or [IGNORE]})
            batch = pad_batch(conts, pad_id, side="right")
            cont_mask = batch["attention_mask"].to(device)
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=torch.cat([mask, cont_mask], 1),
                           position_ids=lengths + torch.arange(cont_mask.shape[1], device=device),
                           **cache_kwargs(model, cache), use_cache=True).logits
            cache.crop(-cont_mask.shape[1])  # back to the prompt (a negative count: every transformers version)
            labels = batch["labels"].to(device)
            rest, n_rest = sequence_logprob(logits, labels)
            head_label = labels[:, 0]
            counts_first = head_label != IGNORE
            first = first_logp.gather(-1, head_label.clamp(min=0).unsqueeze(-1)).squeeze(-1) * counts_first
            total, count = rest + first, n_rest + counts_first.float()
            for j, ((_, g), i) in enumerate(zip(chunk, members)):
                if slot < len(g):
                    out[i] = (-float(total[j]), int(count[j]))
    return out


@torch.no_grad()
def generate_answers(model, prompter, questions: Sequence[str], *, max_new_tokens: int = 64,
                     batch_size: int | None = None, stats: dict | None = None) -> list[str]:
    """Greedy answers: prompts sorted by length, left-padded, KV cache on; a row leaves the batch at eos or
    the chat template's end-of-turn token (:func:`~lethe.evaluation.generation.greedy_decode`).
    ``batch_size`` None: as many rows as a quarter of the free memory holds (``generation_rows``).
    ``stats`` (a dict) accumulates ``generated_tokens`` (up to each row's stop), ``generation_s`` and
    the ``generation_batch`` used."""
    from .generation import generation_rows, greedy_decode

    started = time.perf_counter()
    prompter = as_prompter(prompter)
    prompts = [prompter.prompt_ids(q) for q in questions]
    outputs = [""] * len(prompts)
    if not prompts:
        return outputs
    was_training = model.training
    model.eval()
    device = _device(model)
    rows = batch_size or generation_rows(model, max(len(p) for p in prompts), max_new_tokens, len(prompts))
    stop_ids = prompter.stop_ids
    prefix = SharedPrefix(model, prompts)  # the system header every prompt starts with: one forward for all
    for idx in length_sorted_batches([len(p) for p in prompts], rows):
        batch = pad_batch([{"input_ids": prefix.rest(prompts[i])} for i in idx], prompter.pad_id, side="left")
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        new = greedy_decode(model, ids, mask, max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=prompter.pad_id,
                            prefix=prefix)
        if new is None:  # a cache that cannot drop rows: the library's loop, on the whole prompts
            batch = pad_batch([{"input_ids": prompts[i]} for i in idx], prompter.pad_id, side="left")
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 use_cache=True, pad_token_id=prompter.pad_id, eos_token_id=stop_ids)
            new = out[:, ids.shape[1]:]
        for j, i in enumerate(idx):
            outputs[i] = prompter.decode(new[j]).strip()
        if stats is not None:
            stops = torch.isin(new, torch.tensor(stop_ids + [prompter.pad_id], device=new.device))
            ended = stops.cumsum(-1) > 0  # a row's tokens after its first stop are padding
            stats["generated_tokens"] = stats.get("generated_tokens",
                                                  0) + int((~ended).sum()) + int(stops.any(-1).sum())
    if stats is not None:
        stats["generation_s"] = stats.get("generation_s", 0.0) + time.perf_counter() - started
        stats["generation_batch"] = max(stats.get("generation_batch", 0), rows)
    model.train(was_training)
    return outputs


@torch.no_grad()
def token_statistics(model, prompter, records: Sequence, *, batch_size: int = 16,
                     encoded: Sequence[dict] | None = None, share_prefix: bool = True) -> list[dict[str, np.ndarray]]:
    """Per record, over its scored tokens: ``logp`` (log p of the true token), ``mu`` and ``sigma`` (mean and
    standard deviation of log p(z) for z drawn from the model's distribution at that position), ``hit``
    (whether the argmax is the true token), ``ids`` (the true tokens) and ``end`` (whether the last scored
    token ends the answer: eos or the chat template's end of turn; :func:`answer_tokens` drops it).

    One forward per record, length-sorted and left-padded, with the vocabulary projection and the float64
    statistics only over the scored span (a QA prompt never reaches the vocabulary); the tokens every record
    starts with run once (:class:`SharedPrefix`, unless ``share_prefix`` is False). ``encoded``: the records'
    ``prompter.encode`` when the caller has it already."""
    prompter = as_prompter(prompter)
    device = _device(model)
    was_training = model.training
    model.eval()
    encoded = list(encoded) if encoded is not None else [prompter.encode(r) for r in records]
    stop = set(prompter.stop_ids)
    # the prefix ends before the first scored token's predictor, so every scored position is computed per row
    first_scored = min((_first_counted(e["labels"]) for e in encoded), default=0)
    prefix = SharedPrefix(model, [e["input_ids"] for e in encoded], limit=first_scored - 1) if share_prefix \
        else NO_PREFIX
    rest = [{k: list(v[prefix.length:]) for k, v in e.items()} for e in encoded]
    out: list[dict[str, np.ndarray] | None] = [None] * len(encoded)
    for idx in length_sorted_batches([len(e["input_ids"]) for e in rest], batch_size):
        batch = pad_batch([rest[i] for i in idx], prompter.pad_id, side="left")
        labels = batch["labels"]
        counted = (labels != IGNORE).any(0).nonzero()
        keep = labels.shape[1] - int(counted[0]) + 1 if len(counted) else 2  # from the first scored token's predictor
        logits = _answer_logits(model, batch, device, keep, prefix)
        targets, mask = align_targets(labels[:, -keep:].to(device))
        rows = mask.bool()
        flat, tflat = logits[rows], targets[rows]  # scored positions only: [N, V], [N]
        stats = torch.empty(flat.shape[0], 4, dtype=torch.float64, device=device)
        step = max(1, STATS_CHUNK_ELEMENTS // flat.shape[-1])
        for s in range(0, flat.shape[0], step):  # vocabulary work chunk by chunk: no second [N,V] tensor
            logp = torch.log_softmax(upcast(flat[s : s + step]).double(), dim=-1)
            p = logp.exp()
            mu = (p * logp).sum(-1)
            var = (p * logp * logp).sum(-1) - mu * mu
            stats[s : s + step, 0] = logp.gather(-1, tflat[s : s + step].unsqueeze(-1)).squeeze(-1)
            stats[s : s + step, 1] = mu
            stats[s : s + step, 2] = var.clamp(min=0).sqrt()
            stats[s : s + step, 3] = (logp.argmax(-1) == tflat[s : s + step]).double()
        stats, ids = stats.cpu().numpy(), tflat.cpu().numpy()
        bounds = np.concatenate([[0], np.cumsum(rows.sum(-1).cpu().numpy())])
        for row, i in enumerate(idx):
            sel, tok = stats[bounds[row] : bounds[row + 1]], ids[bounds[row] : bounds[row + 1]]
            is_qa = hasattr(records[i], "question")  # a text record has no end token appended
            out[i] = {"logp": sel[:, 0], "mu": sel[:, 1], "sigma": sel[:, 2], "hit": sel[:, 3] > 0.5, "ids": tok,
                      "end": bool(is_qa and len(tok) and int(tok[-1]) in stop)}
    model.train(was_training)
    return out


# the arrays of a record's token statistics that run over its scored tokens
TOKEN_ARRAYS = ("logp", "mu", "sigma", "hit", "ids")


def answer_tokens(stats: dict, include_end: bool = False) -> dict:
    """The statistics over the tokens the teacher-forced metrics count (EM, extraction strength and the
    membership attacks): a QA answer without its end-of-answer token, as open-unlearning counts them (that
    token is easy to predict, so counting it lifts EM and ES of a model that never saw the data); with
    ``include_end`` every scored token."""
    if include_end or not stats.get("end"):
        return stats
    return {**{k: stats[k][:-1] for k in TOKEN_ARRAYS if k in stats}, "end": False}


class ModelRequests:
    """One evaluation's model calls, each made once and kept for every metric that reads it.

    - :meth:`token_stats`: per-token statistics of records (the membership attacks, exact memorization), shared
      across processes. A QA record's answer log-likelihood is their sum, so the answer is not scored again by
      :meth:`likelihoods`.
    - :meth:`likelihoods`: summed answer NLL and token count of (question, answer) pairs, only those not
      known yet, batched with shared prompts (:func:`answer_nll`), shared across processes.
    - :meth:`generations`: greedy answers (:func:`generate_answers`), shared across processes.
    - :meth:`continuations`: greedy continuations of token-id prefixes (extraction strength, VerbMem, KnowMem),
      all of a metric's prefixes in one length-sorted batch run, shared across processes.

    The suite asks for token statistics first, so what they cover never runs twice.
    """

    def __init__(self, model, prompter, *, batch_size: int = 32, stats_batch_size: int = 16,
                 generation_batch_size: int | None = None, max_new_tokens: int = 48):
        self.model, self.prompter = model, as_prompter(prompter)
        self.batch_size, self.stats_batch_size = batch_size, stats_batch_size
        self.generation_batch_size, self.max_new_tokens = generation_batch_size, max_new_tokens
        self.timing: dict = {}
        self.calls = {"token_stats": 0, "likelihoods": 0, "generations": 0, "continuations": 0}  # rows, per request
        self.seconds = dict.fromkeys(self.calls, 0.0)  # model time per request kind
        self._stats: dict[tuple, dict] = {}
        self._nll: dict[tuple[str, str], tuple[float, int]] = {}
        self._answers: dict[str, str] = {}
        self._continued: dict[tuple, list[int]] = {}

    def token_stats(self, records: Sequence) -> list[dict[str, np.ndarray]]:
        encoded = [self.prompter.encode(r) for r in records]
        keys = [tuple(e["input_ids"]) for e in encoded]
        todo: dict[tuple, int] = {}  # first record of each encoding not scored yet
        for i, k in enumerate(keys):
            if k not in self._stats:
                todo.setdefault(k, i)
        if todo:
            started = time.perf_counter()
            stats = shard_map(lambda items: token_statistics(self.model, self.prompter, [r for r, _ in items],
                                                             batch_size=self.stats_batch_size,
                                                             encoded=[e for _, e in items]),
                              [(records[i], encoded[i]) for i in todo.values()])
            self.calls["token_stats"] += len(todo)
            self.seconds["token_stats"] += time.perf_counter() - started
            for i, st in zip(todo.values(), stats):
                self._stats[keys[i]] = st
                r = records[i]
                if hasattr(r, "question") and hasattr(r, "answer"):
                    self._nll.setdefault((r.question, r.answer), (-float(st["logp"].sum()), len(st["logp"])))
        return [self._stats[k] for k in keys]

    def likelihoods(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[float], list[int]]:
        todo = [p for p in dict.fromkeys(pairs) if p not in self._nll]
        if todo:
            started = time.perf_counter()
            scored = shard_map(lambda ps: list(zip(*answer_nll(self.model, self.prompter, ps,
                                                                 batch_size=self.batch_size))), todo)
            self.calls["likelihoods"] += len(todo)
            self.seconds["likelihoods"] += time.perf_counter() - started
            self._nll.update({p: (float(s[0]), int(s[1])) for p, s in zip(todo, scored)})
        return [self._nll[p][0] for p in pairs], [self._nll[p][1] for p in pairs]

    def generations(self, questions: Sequence[str]) -> list[str]:
        todo = [q for q in dict.fromkeys(questions) if q not in self._answers]
        if todo:
            started = time.perf_counter()
            answers = shard_map(lambda qs: generate_answers(self.model, self.prompter, qs,
                                                            max_new_tokens=self.max_new_tokens,
                                                            batch_size=self.generation_batch_size,
                                                            stats=self.timing), todo)
            self.calls["generations"] += len(todo)
            self.seconds["generations"] += time.perf_counter() - started
            self._answers.update(zip(todo, answers))
        return [self._answers[q] for q in questions]

    def continuations(self, prefixes: Sequence[Sequence[int]], lengths: Sequence[int], *,
                      keep_eos: bool = False) -> list[list[int]]:
        """Greedy continuation of each complete prefix (special tokens in place) by up to ``lengths[k]`` tokens."""
        keys = [(tuple(p), int(n), keep_eos) for p, n in zip(prefixes, lengths)]
        todo = [k for k in dict.fromkeys(keys) if k not in self._continued]
        if todo:
            started = time.perf_counter()
            done = shard_map(lambda ks: greedy_from_ids(self.model, self.prompter, [k[0] for k in ks],
                                                        [k[1] for k in ks], keep_eos=keep_eos), todo)
            self.calls["continuations"] += len(todo)
            self.seconds["continuations"] += time.perf_counter() - started
            self._continued.update(zip(todo, done))
        return [list(self._continued[k]) for k in keys]


def greedy_from_ids(model, prompter, prefixes: Sequence[Sequence[int]], lengths: Sequence[int],
                    keep_eos: bool = False) -> list[list[int]]:
    """Greedy continuations of complete token-id prefixes (BOS already in place), sorted by length and batched
    (:func:`~lethe.evaluation.memorization.greedy_continuations`)."""
    from .memorization import greedy_continuations

    prompter = as_prompter(prompter)

    class _Ids:  # what greedy_continuations reads; no BOS added: the prefixes carry theirs
        bos_token_id = None
        eos_token_id = prompter.tokenizer.eos_token_id
        pad_token_id = prompter.pad_id

    return greedy_continuations(model, _Ids, prefixes, lengths, keep_eos=keep_eos)

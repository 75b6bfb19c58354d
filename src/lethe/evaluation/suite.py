"""Evaluate a model on QA sets: generation + log-likelihood requests, then SPEC §4 metrics.

Set kinds: ``qa`` (forget / retain: P = exp(-NLL_tok), truth ratio against the paraphrased
answer) and ``mc`` (real authors / world facts: P normalised over the options, truth ratio
against the answer itself).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..data.records import QARecord
from . import metrics as M
from .requests import answer_nll, generate_answers
from .sharding import shard_map

MU9_SETS = ("retain", "real_authors", "world_facts")
MU9_METRICS = ("ROUGE", "P", "TR")
MU18_METRICS = ("ROUGE", "P", "TR", "TE", "CS", "ES")
FE_METRICS = ("ROUGE", "P", "TR_closer", "CS", "ES")  # TE is excluded (closer-look)


@dataclass
class Semantic:
    """Models for the closer-look metrics; None = unavailable (with the reason)."""

    embed: object | None = None
    embed_name: str | None = None
    judge: object | None = None
    es_direction: str = "tofu"  # tofu: forget generated=>truth, others truth=>generated; "generated=>truth": all
    unavailable: dict = field(default_factory=dict)


def load_semantic(embedding_model: str | None = None, nli_model: str | None = None, *, es_direction: str = "tofu",
                  cs: bool = True) -> Semantic:
    from .semantic import NLIJudge, load_embedder

    sem = Semantic(es_direction=es_direction)
    if cs:
        embed, name = load_embedder(embedding_model)
        if embed is None:
            sem.unavailable["CS"] = name
        else:
            sem.embed, sem.embed_name = embed, name
    if nli_model:
        sem.judge = NLIJudge(nli_model)
    else:
        sem.unavailable["ES"] = "no NLI model: pass --nli-model DIR (e.g. sileod/deberta-v3-base-tasksource-nli)"
    return sem


@dataclass
class EvalSet:
    name: str
    records: Sequence[QARecord]
    kind: str  # "qa" | "mc"
    forget: bool = False


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_item: dict[str, list[float]] = field(default_factory=dict)
    samples: dict[str, list[dict]] = field(default_factory=dict)
    aggregates_over: dict[str, list[str]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    generations: dict[str, list[str]] = field(default_factory=dict)  # every greedy answer, per set
    timing: dict[str, float] = field(default_factory=dict)  # generated tokens, generation and total seconds


def evaluate_sets(model, prompter, sets: Sequence[EvalSet], *, batch_size: int = 32,
                  generation_batch_size: int | None = None, max_new_tokens: int = 48,
                  eval_limit: int | None = None, n_samples: int = 3, truth_ratio: str = "tofu",
                  semantic: Semantic | None = None, generate: bool = True) -> EvalResult:
    """Score every set; ``eval_limit`` keeps the first N items of each (the peers use 300).

    TE is always computed; CS and ES when ``semantic`` carries their models. ``generate=False`` is the
    fast suite: teacher-forced metrics only (P, TR and the per-item truth ratios FQ needs), no generation.
    """
    from ..data.prompt import as_prompter
    from .semantic import cosine_scores, entailment_scores, token_entropies

    import time

    started = time.perf_counter()
    prompter = as_prompter(prompter)
    result = EvalResult(metrics={}, unavailable=dict(semantic.unavailable) if semantic else
                        {"CS": "not requested", "ES": "not requested"})
    timing: dict = {}
    for s in sets:
        recs = list(s.records)[:eval_limit] if eval_limit else list(s.records)
        if not recs:
            continue
        # Each process generates and scores its share of the items (all of them when there is one).
        gens = shard_map(lambda qs: generate_answers(model, prompter, qs, max_new_tokens=max_new_tokens,
                                                     batch_size=generation_batch_size, stats=timing),
                         [r.question for r in recs]) if generate else None
        # One batched likelihood pass over answers, bases and perturbed answers.
        bases = [(r.paraphrased_answer or r.answer) if s.kind == "qa" else r.answer for r in recs]
        pairs = [(r.question, r.answer) for r in recs] + [(r.question, b) for r, b in zip(recs, bases)]
        offsets = []
        for r in recs:
            offsets.append(len(pairs))
            pairs += [(r.question, p) for p in r.perturbed_answers]
        scored = shard_map(lambda ps: list(zip(*answer_nll(model, prompter, ps, batch_size=batch_size))), pairs)
        nll, cnt = [s[0] for s in scored], [s[1] for s in scored]
        tok = M.nll_per_token(nll, cnt)
        n = len(recs)
        nll_answer, nll_base = tok[:n], tok[n : 2 * n]
        nll_perts = [list(tok[o : o + len(r.perturbed_answers)]) for o, r in zip(offsets, recs)]
        prob = M.probability_mc(nll_answer, nll_perts) if s.kind == "mc" else M.probability(nll_answer)
        m = result.metrics
        m[f"{s.name}/P"] = M.mean(prob)
        result.per_item[f"{s.name}/P"] = prob
        with_perts = [i for i, r in enumerate(recs) if r.perturbed_answers]
        if with_perts:
            base_w = [nll_base[i] for i in with_perts]
            perts_w = [nll_perts[i] for i in with_perts]
            s_vals = M.truth_ratio_values(base_w, perts_w)
            result.per_item[f"{s.name}/TR_values"] = s_vals
            if truth_ratio == "tofu-utils":
                r_vals = M.truth_ratio_arithmetic(base_w, perts_w)
                m[f"{s.name}/TR"] = M.truth_ratio_arith_forget(r_vals) if s.forget else M.truth_ratio_arith_other(r_vals)
            else:
                m[f"{s.name}/TR"] = M.truth_ratio_forget(s_vals) if s.forget else M.truth_ratio_other(s_vals)
            if s.forget:
                m[f"{s.name}/TR_closer"] = M.truth_ratio_forget_closer_look(s_vals)
        if gens is None:
            continue
        result.generations[s.name] = gens
        rouge = M.rouge_l_recall(gens, [r.answer for r in recs])
        m[f"{s.name}/ROUGE"], result.per_item[f"{s.name}/ROUGE"] = M.mean(rouge), rouge
        te = token_entropies(prompter.tokenizer, gens)
        m[f"{s.name}/TE"], result.per_item[f"{s.name}/TE"] = M.mean(te), te
        truths = [r.answer for r in recs]
        if semantic is not None and semantic.embed is not None:
            cs = cosine_scores(semantic.embed, gens, truths)
            m[f"{s.name}/CS"], result.per_item[f"{s.name}/CS"] = M.mean(cs), cs
        if semantic is not None and semantic.judge is not None:
            direction = ("generated=>truth" if s.forget or semantic.es_direction == "generated=>truth"
                         else "truth=>generated")
            es = entailment_scores(semantic.judge, gens, truths, rouge, direction=direction)
            m[f"{s.name}/ES"], result.per_item[f"{s.name}/ES"] = M.mean(es), es
        result.samples[s.name] = [{"question": r.question, "answer": r.answer, "generated": g}
                                  for r, g in zip(recs[:n_samples], gens[:n_samples])]
    result.timing = {"evaluation_s": time.perf_counter() - started, **timing}
    if timing.get("generation_s"):
        result.timing["generation_tokens_per_s"] = timing["generated_tokens"] / timing["generation_s"]
    return result


def aggregate(result: EvalResult, *, retain_model_tr: Sequence[float] | None = None, forget_set: str = "forget",
              utility_sets: Sequence[str] = MU9_SETS) -> None:
    """Add MU (TOFU, 9 values), MU18 and FE (closer-look, over the metrics available) and FQ in place.

    ``result.aggregates_over`` lists what MU18 and FE averaged: with no NLI model, for example,
    MU18 is a harmonic mean of 15 values and FE a mean of 4, and the report says so.
    """
    m = result.metrics
    mu_keys = [f"{s}/{k}" for s in utility_sets for k in MU9_METRICS]
    if mu_keys and all(k in m for k in mu_keys):  # no utility set: no MU (never a 0/0)
        m["MU"] = M.harmonic_mean([m[k] for k in mu_keys])
    mu18 = [f"{s}/{k}" for s in utility_sets for k in MU18_METRICS if f"{s}/{k}" in m]
    if mu_keys and all(k in m for k in mu_keys) and mu18:
        m["MU18"] = M.harmonic_mean([m[k] for k in mu18])
        result.aggregates_over["MU18"] = mu18
    fe_keys = [f"{forget_set}/{k}" for k in FE_METRICS if f"{forget_set}/{k}" in m]
    if all(f"{forget_set}/{k}" in m for k in ("ROUGE", "P", "TR_closer")):
        m["FE"] = 1.0 - M.mean([m[k] for k in fe_keys])
        result.aggregates_over["FE"] = fe_keys
    tr = result.per_item.get(f"{forget_set}/TR_values")
    if retain_model_tr is not None and tr:
        m["FQ"] = M.forget_quality(tr, retain_model_tr)

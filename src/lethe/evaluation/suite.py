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

MU9_SETS = ("retain", "real_authors", "world_facts")
MU9_METRICS = ("ROUGE", "P", "TR")
FE_METRICS = ("ROUGE", "P", "TR_closer")  # CS and ES join when the closer-look metrics exist


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


def evaluate_sets(model, tokenizer, sets: Sequence[EvalSet], *, batch_size: int = 32, max_new_tokens: int = 48,
                  eval_limit: int | None = None, n_samples: int = 3, truth_ratio: str = "tofu") -> EvalResult:
    """Score every set; ``eval_limit`` keeps the first N items of each (the peers use 300)."""
    result = EvalResult(metrics={})
    for s in sets:
        recs = list(s.records)[:eval_limit] if eval_limit else list(s.records)
        if not recs:
            continue
        gens = generate_answers(model, tokenizer, [r.question for r in recs], max_new_tokens=max_new_tokens,
                                batch_size=batch_size)
        rouge = M.rouge_l_recall(gens, [r.answer for r in recs])
        # One batched likelihood pass over answers, bases and perturbed answers.
        bases = [(r.paraphrased_answer or r.answer) if s.kind == "qa" else r.answer for r in recs]
        pairs = [(r.question, r.answer) for r in recs] + [(r.question, b) for r, b in zip(recs, bases)]
        offsets = []
        for r in recs:
            offsets.append(len(pairs))
            pairs += [(r.question, p) for p in r.perturbed_answers]
        nll, cnt = answer_nll(model, tokenizer, pairs, batch_size=batch_size)
        tok = M.nll_per_token(nll, cnt)
        n = len(recs)
        nll_answer, nll_base = tok[:n], tok[n : 2 * n]
        nll_perts = [list(tok[o : o + len(r.perturbed_answers)]) for o, r in zip(offsets, recs)]
        prob = M.probability_mc(nll_answer, nll_perts) if s.kind == "mc" else M.probability(nll_answer)
        m = result.metrics
        m[f"{s.name}/ROUGE"] = M.mean(rouge)
        m[f"{s.name}/P"] = M.mean(prob)
        result.per_item[f"{s.name}/ROUGE"] = rouge
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
        result.samples[s.name] = [{"question": r.question, "answer": r.answer, "generated": g}
                                  for r, g in zip(recs[:n_samples], gens[:n_samples])]
    return result


def aggregate(result: EvalResult, *, retain_model_tr: Sequence[float] | None = None, forget_set: str = "forget") -> None:
    """Add MU (TOFU, 9 values), FE (over the forget metrics available) and FQ in place."""
    m = result.metrics
    mu_keys = [f"{s}/{k}" for s in MU9_SETS for k in MU9_METRICS]
    if all(k in m for k in mu_keys):
        m["MU"] = M.harmonic_mean([m[k] for k in mu_keys])
    fe_keys = [f"{forget_set}/{k}" for k in FE_METRICS]
    if all(k in m for k in fe_keys):
        m["FE"] = 1.0 - M.mean([m[k] for k in fe_keys])
    tr = result.per_item.get(f"{forget_set}/TR_values")
    if retain_model_tr is not None and tr:
        m["FQ"] = M.forget_quality(tr, retain_model_tr)

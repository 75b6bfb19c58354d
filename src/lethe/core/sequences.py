"""Workflows composed from the core: memorized-sequence unlearning with the EL/MA stopping rule, and
a small model built and trained from a user's own records."""
from __future__ import annotations

from typing import Any, Sequence

from ..data.sources import load_records
from ..engine.loop import TrainConfig
from ..engine.runtime import RuntimeConfig
from ..model.load import load_tokenizer
from ..util.errors import LetheError
from .configs import AuditConfig, DataConfig, ModelConfig, UnlearnRun
from .preparation import prepare
from .runs import finetune, unlearn


def extraction_scores(model, tokenizer, sequences, el) -> tuple[float, float]:
    """Mean EL_n and MA of token-id ``sequences``; every process scores its share and the means are gathered."""
    from ..evaluation.metric_registry import METRICS
    from ..evaluation.metrics import mean
    from ..evaluation.sharding import shard_map

    extraction_likelihood, memorization_accuracy = (METRICS.get(m).compute for m in ("EL", "MA"))
    return (mean(shard_map(lambda s: extraction_likelihood(model, tokenizer, s, el=el), sequences)),
            mean(shard_map(lambda s: memorization_accuracy(model, tokenizer, s), sequences)))


def extraction_scorer(tokenizer, el=None):
    """An attack's ``score(model, records)`` for text sequences: {"EL<n>": mean EL_n, "MA": mean MA}."""
    from ..data.prompt import as_prompter
    from ..evaluation.memorization import ELConfig

    prompter, el = as_prompter(tokenizer), el or ELConfig()

    def score(model, records) -> dict:
        el_n, ma = extraction_scores(model, prompter.tokenizer, [prompter.text_token_ids(r) for r in records], el)
        return {f"EL{el.n}": el_n, "MA": ma}

    return score


# Keyword-only: the stopping rule's settings and the measurements it may add.
def extraction_stop_hook(tokenizer, forget, validation, *, heldout=None, model=None, n: int = 10,
                         min_epochs: int = 1, thresholds=None, el=None, membership=None, retain_auc=None):
    """An ``epoch_hook`` for :func:`unlearn` applying the EL/MA stopping rule to text sequences.

    Thresholds are the mean EL_n and MA of ``model`` on ``validation`` (sequences it never trained
    on), measured now unless given. Without ``validation`` the hook only measures and never stops.
    ``el`` (:class:`lethe.evaluation.memorization.ELConfig`) says how EL_n counts; default: the paper's
    Eq. 3-4 with ``n``. ``membership`` (sequences never trained on) adds the membership-inference AUCs
    of the forget sequences against them (``mia/ATTACK_AUC``), and with ``retain_auc`` ({attack: AUC of a
    model never trained on the forget sequences}) MUSE's PrivLeak (``mia/ATTACK_PrivLeak``). Returns (hook,
    thresholds or None).
    """
    from ..data.prompt import as_prompter
    from ..engine.stopping import ExtractionThresholds, should_stop
    from ..evaluation.memorization import ELConfig
    from ..evaluation.metric_registry import METRICS

    prompter = as_prompter(tokenizer)
    tokenizer = prompter.tokenizer
    el = el or ELConfig(n=n)
    n = el.n
    perplexity = METRICS.get("PPL").compute

    def ids(records):
        return [prompter.text_token_ids(r) for r in records]

    def el_ma(mdl, sequences) -> tuple[float, float]:
        return extraction_scores(mdl, tokenizer, sequences, el)

    forget_ids = ids(forget)
    held_ids = ids(heldout) if heldout else None
    if thresholds is None and validation:
        thresholds = ExtractionThresholds(*el_ma(model, ids(validation)))

    def hook(epoch, mdl):
        el, ma = el_ma(mdl, forget_ids)
        metrics = {f"forget/EL{n}": el, "forget/MA": ma}
        if held_ids:
            metrics["heldout/PPL"] = perplexity(mdl, tokenizer, held_ids)
        if membership:
            from ..evaluation.mia import membership_report, report_metrics

            metrics.update(report_metrics(membership_report(mdl, prompter, forget, membership), retain_auc))
        stop = thresholds is not None and should_stop(epoch, el, ma, thresholds, min_epochs)
        return {"metrics": metrics, "stop": stop}

    return hook, thresholds


# The public face of `lethe unlearn` on text sequences: one keyword per option a user may set.
def unlearn_sequences(model_path: str, forget, retain=None, *, method: Any = "GA+GD", validation=None,
                      heldout=None, holdout=None, forget_count: int | None = None, max_tokens: int | None = None,
                      el_n: int = 10, el=None, min_epochs: int = 1, train: TrainConfig | None = None, params="full",
                      data: DataConfig | None = None, model_config: ModelConfig | None = None, out_dir=None,
                      merge: bool = False, resume: bool = False, overwrite: bool = False, include_text: bool = False,
                      progress: bool = True, runtime: RuntimeConfig | None = None,
                      convention: str = "paper", keep_checkpoint: str = "never") -> tuple[Any, UnlearnRun, Any]:
    """Unlearn memorized text sequences (IHL seed Sec. 3.1): a seeded sample of ``forget_count``
    sequences, the EL_n/MA stopping rule when ``validation`` sequences are given, held-out perplexity
    after every epoch with ``heldout``. Returns (model, run, thresholds or None)."""
    from contextlib import nullcontext
    from dataclasses import replace

    from ..util.rundir import check_output, claim
    from ..util.validation import SEQUENCE_TOKENS, check_positive
    from .conventions import get_convention
    from .runs import RUN_OUTPUTS

    check_positive("--forget-count", forget_count, optional=True)
    SEQUENCE_TOKENS.check("--max-tokens", max_tokens)
    conv = get_convention(convention)
    el = el or replace(conv.el, n=check_positive("--el-n", el_n))
    check_positive("--min-epochs", min_epochs)
    if out_dir:
        check_output(out_dir)
    train, dc, rt = train or TrainConfig(), data or DataConfig(), runtime or RuntimeConfig()
    mc = model_config or ModelConfig()
    lock = claim(out_dir, RUN_OUTPUTS, resume=resume, overwrite=overwrite, command="unlearn (sequences)") \
        if out_dir else nullcontext()
    with lock:
        return _unlearn_sequences(model_path, forget, retain, method, validation, heldout, holdout, forget_count,
                                  max_tokens, el, min_epochs, train, params, dc, mc, out_dir, merge, resume,
                                  include_text, progress, rt, conv, keep_checkpoint)


# The locked body of unlearn_sequences: its options pass through unchanged.
def _unlearn_sequences(model_path, forget, retain, method, validation, heldout, holdout, forget_count, max_tokens,
                       el, min_epochs, train, params, dc, mc, out_dir, merge, resume, include_text, progress, rt, conv,
                       keep_checkpoint="never"):
    from dataclasses import asdict

    from ..data.readers import sample_sequences

    tokenizer = load_tokenizer(model_path, trust_remote_code=mc.trust_remote_code)
    read = dict(fields=dc.fields, tokenizer=tokenizer, chunk_tokens=dc.chunk_tokens, split=dc.split)
    forget = sample_sequences(load_records(forget, **read), forget_count, train.seed, max_tokens)
    retain = load_records(retain, **read) if retain is not None else []
    validation = sample_sequences(load_records(validation, **read), None, train.seed,
                                  max_tokens) if validation else None
    heldout = load_records(heldout, **read) if heldout else None
    hook = thresholds = None
    model: Any = model_path
    if validation or heldout:
        model, _, _ = prepare(model_path, tokenizer, mc, rt)  # loaded once: thresholds and training share it
        with rt.autocast():
            hook, thresholds = extraction_stop_hook(tokenizer, forget, validation, heldout=heldout, model=model,
                                                    el=el, min_epochs=min_epochs, membership=validation)
    audit = AuditConfig(holdout=validation or holdout, include_text=include_text,
                        thresholds={"el": thresholds.el, "ma": thresholds.ma} if thresholds is not None else None)
    model, run = unlearn(model, forget, retain, method=method, tokenizer=tokenizer, params=params, train=train,
                         keep_checkpoint=keep_checkpoint,
                         audit=audit, model_config=mc, data=dc, out_dir=out_dir, merge=merge,
                         resume=resume, epoch_hook=hook, progress=progress, runtime=rt, convention=conv,
                         extra_record={"el": asdict(el), "min_epochs": min_epochs} if hook is not None else None)
    return model, run, thresholds


# Keyword-only: finetune's options plus the tiny model's vocabulary size.
def finetune_tiny(preset: str, records, *, train: TrainConfig | None = None, data: DataConfig | None = None,
                  out_dir=None, resume: bool = False, overwrite: bool = False, progress: bool = True,
                  vocab_size: int = 2048, runtime: RuntimeConfig | None = None):
    """Build a small Llama (``preset``: test, smoke, small, full) with a BPE tokenizer trained on
    ``records``, then fine-tune it on them. Returns (model, TrainResult)."""
    from ..data.records import QARecord
    from ..model.build import TINY_PRESETS, build_tiny_model, train_tokenizer

    if preset not in TINY_PRESETS:
        raise LetheError(f"unknown tiny preset '{preset}': expected one of {', '.join(TINY_PRESETS)}")
    if out_dir:
        from ..util.rundir import check_output

        check_output(out_dir)
    dc = data or DataConfig()
    records = load_records(records, fields=dc.fields, split=dc.split)
    if not all(isinstance(r, QARecord) for r in records):
        raise LetheError("a tiny model's tokenizer is trained on QA records' text: pass QA records")
    texts = [t for r in records for t in (r.question, r.answer, r.paraphrased_answer or "", *r.perturbed_answers)]
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    train = train or TrainConfig()
    model = build_tiny_model(tokenizer, preset, seed=train.seed)
    return finetune(model, records, tokenizer=tokenizer, train=train, data=dc, out_dir=out_dir,
                    resume=resume, overwrite=overwrite, progress=progress, runtime=runtime)


__all__: Sequence[str] = ("extraction_stop_hook", "unlearn_sequences", "finetune_tiny", "IndistinguishableStop")


STOP_STATISTICS = ("min_k", "min_k_pp", "loss", "zlib")


STOP_TESTS = ("ks", "group")  # item-level two-sample KS; permutation of whole groups (records sharing a subject)


class IndistinguishableStop:
    """An ``epoch_hook`` that stops unlearning without a retain model: at the first epoch (from
    ``min_epochs``) where the forget set's per-item membership scores (``statistic``: an attack of
    :mod:`lethe.evaluation.mia`) cannot be told from those of ``holdout`` — records of the same kind the
    model never saw — by a two-sample KS test at level ``threshold`` (p-value ≥ threshold).
    ``test="group"``: records come in groups (several QA pairs per author, grouped by ``subject``), which an
    item-level test treats as independent evidence; the p-value then comes from permuting whole groups
    between the two sides (:func:`lethe.evaluation.mia.group_permutation_p`).

    Records ``stop/p_value`` per epoch (epoch 0 included: how distinguishable the set was before).
    :func:`unlearn` binds it to the run's prompt format before the first call.
    """

    def __init__(self, forget, holdout, *, statistic: str = "min_k", threshold: float = 0.05, min_epochs: int = 1,
                 k: float = 0.4, prompter=None, test: str = "ks"):
        from ..util.validation import P_VALUE_THRESHOLD, check_positive

        if statistic not in STOP_STATISTICS:
            raise LetheError(f"--stop-statistic: expected one of {', '.join(STOP_STATISTICS)}, got {statistic!r}")
        P_VALUE_THRESHOLD.check("--stop-threshold", threshold)
        check_positive("--min-epochs", min_epochs)
        if not holdout:
            raise LetheError("--stop-when indistinguishable needs --holdout: records of the forget set's kind that "
                             "the model never saw")
        self.forget, self.holdout = list(forget), list(holdout)
        if test not in STOP_TESTS:
            raise LetheError(f"--stop-test: expected one of {', '.join(STOP_TESTS)}, got {test!r}")
        if test == "group":
            from ..evaluation.mia import record_groups

            self.groups = record_groups(self.forget), record_groups(self.holdout)
            if None in self.groups:
                raise LetheError("--stop-test group needs a 'subject' on every forget and holdout record (the "
                                 "author or person several records share)")
        self.test = test
        self.statistic, self.threshold, self.min_epochs, self.k = statistic, threshold, min_epochs, k
        self.prompter = None
        if prompter is not None:
            self.bind(prompter)

    def bind(self, prompter) -> None:
        from ..data.prompt import as_prompter

        self.prompter = as_prompter(prompter)

    def record(self) -> dict:
        return {"rule": "indistinguishable", "statistic": self.statistic, "test": self.test,
                "threshold": self.threshold, "min_epochs": self.min_epochs, "k": self.k}

    def p_value(self, model) -> float:
        from ..evaluation.mia import attack_scores, group_permutation_p, ks_p_value, token_statistics

        decode = self.prompter.decode
        f = attack_scores(token_statistics(model, self.prompter, self.forget), k=self.k, decode=decode)[self.statistic]
        h = attack_scores(token_statistics(model, self.prompter, self.holdout), k=self.k, decode=decode)[self.statistic]
        return group_permutation_p(f, h, *self.groups) if self.test == "group" else ks_p_value(f, h)

    # unlearn passes the evaluation's membership report of the epoch (when it made one) as ``membership``
    reads_membership = True

    def reported_p(self, membership: dict | None) -> float | None:
        """The p-value from an evaluation's membership report when it scored exactly these records with the
        same k (the usual ``--holdout`` run): the forget and holdout sets are then not scored a second time."""
        if not membership or membership.get("k") != self.k:
            return None
        if membership.get("forget") != self.forget or membership.get("holdout") != self.holdout:
            return None
        attack = membership["report"].get("attacks", {}).get(self.statistic, {})
        return attack.get("group_p" if self.test == "group" else "ks_p")

    def __call__(self, epoch, model, membership: dict | None = None) -> dict:
        if self.prompter is None:
            raise LetheError("IndistinguishableStop: bind(prompter) first (unlearn does this)")
        p = self.reported_p(membership)
        if p is None:
            p = self.p_value(model)
        return {"metrics": {"stop/p_value": p}, "stop": epoch >= self.min_epochs and p >= self.threshold}

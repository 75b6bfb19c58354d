"""Scenario 2 (SPEC §6; IHL seed Sec. 3, App. G-I): unlearning memorized sequences.

Offline: train a small model on background prose plus "canary" records repeated several times
(so they are memorized), then unlearn 32 canaries per request with each method until the
forget set is no more extractable than canaries the model never saw (EL_10 and MA at or below
the validation values), or ``max_epochs`` pass (unsuccessful). Reported per run: trainable
share, epochs to success, EL_10, MA, held-out perplexity and cost; with ``requests > 1`` the
same model receives several disjoint forget requests in a row (continual unlearning).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

from ..data.records import TextRecord
from ..engine.loop import TrainConfig
from ..engine.stopping import meets_threshold
from . import (
    AttackOptions,
    Cell,
    Context,
    Scenario,
    apply_requests,
    attack_model,
    check_attacks,
    option,
    run_dir_for,
)

NAME = "memorized-sequences"
VERSION = 3  # 2: EL_n counts as the paper does (generated n-grams found in the truth); 3: PrivLeak
# The rows of the IHL seed's Table 1 (its "GD" is gradient difference: GA on forget + GD on retain).
DEMO_RUNS = ("GA@full", "GA+GD@full", "GA+GD@lora", "IHL+GD@lora", "IHL+GD@fila")


@dataclass(frozen=True)
class MemorizedSettings:
    model_preset: str
    vocab_size: int
    max_tokens: int           # canaries are cut to this many tokens (EL cost grows with T^2)
    repeats: int              # how often each canary appears in the training corpus
    pretrain: TrainConfig
    unlearn: TrainConfig      # epochs = max_epochs; constant LR as in the IHL seed's TDEC runs
    lora_rank: int = 8
    lora_lr_scale: float = 4.0
    forget_size: int = 32
    validation_size: int = 32
    min_epochs: int = 1
    # Each request brings forget_size fresh canaries the base model must memorise first; past this many requests
    # pretraining outgrows the size's model and time budget (use the next size up).
    max_requests: int = 16


SETTINGS = {
    "smoke": MemorizedSettings("smoke", 600, 24, 6, TrainConfig(epochs=6, lr=3e-3, batch_size=16, micro_batch_size=16,
                                                                checkpoint=False),
                               TrainConfig(epochs=2, lr=1e-3, batch_size=8, micro_batch_size=8, warmup_epochs=0,
                                           schedule="constant", checkpoint=False), lora_rank=4, forget_size=8,
                               validation_size=8, max_requests=8),
    "small": MemorizedSettings("small", 1500, 48, 10,
                               TrainConfig(epochs=12, lr=2e-3, batch_size=16, micro_batch_size=16,
                                                                  checkpoint=False),
                               TrainConfig(epochs=10, lr=1e-3, batch_size=8, micro_batch_size=8, warmup_epochs=0,
                                           schedule="constant", checkpoint=False), lora_lr_scale=5.0),
}


def parse_run_spec(spec: str) -> tuple[str, str]:
    method, _, params = spec.partition("@")
    return method.strip(), (params.strip().lower() or "full")


def _ids(tokenizer, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
    out = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        out.append(ids[:max_tokens] if max_tokens else ids)
    return out


@dataclass
class MemorizedOptions(AttackOptions):
    requests: int = option(1, "disjoint forget requests applied one after another, each a fresh set of canaries",
                           type=int)


def _check(options: MemorizedOptions, size: str) -> MemorizedOptions:
    from ..util.errors import LetheError

    requests = options.requests
    if not isinstance(requests, int) or isinstance(requests, bool) or requests < 1:
        raise LetheError(f"--requests: expected an integer >= 1, got {requests!r}")
    st = SETTINGS[size]
    if requests > st.max_requests:
        larger = [s for s, other in SETTINGS.items() if other.max_requests >= requests]
        raise LetheError(f"--requests {requests}: at most {st.max_requests} at size {size} (each request is "
                         f"{st.forget_size} new canaries the base model must first memorise)"
                         + (f"; --size {larger[0]} takes {SETTINGS[larger[0]].max_requests}" if larger else ""))
    return check_attacks(options, records="text")


@dataclass
class Prepared:
    tokenizer: object
    corpus: object
    base_dir: Path
    request_sets: list           # token ids of each request's canaries
    retain: list
    hooks: list                  # one EL/MA/PPL epoch hook (with the stopping rule) per request
    thresholds: object
    before: list                 # each request's metrics on the base model
    n_validation: int
    n_heldout: int
    retain_auc: list             # the retain model's membership AUCs per request (PrivLeak's reference)


def _records(id_lists):
    return [TextRecord(token_ids=tuple(ids)) for ids in id_lists]


def _pretrained(ctx: Context, st, tokenizer, records: list, directory: Path, desc: str, reuse: bool):
    """A small model trained on ``records`` (with ``reuse``: the one finished in ``directory``)."""
    from ..core import finetune
    from ..model.build import build_tiny_model
    from ..model.load import load_model

    if reuse and (directory / "lethe_finetune.json").exists():
        ctx.console.print(f"[dim]reusing {directory}[/dim]")
        return load_model(directory)
    ctx.console.print(f"{desc}: training on {len(records)} sequences")
    model = build_tiny_model(tokenizer, st.model_preset, seed=ctx.seed, max_positions=512)
    model, _ = finetune(model, records, tokenizer=tokenizer, train=replace(st.pretrain, seed=ctx.seed),
                        out_dir=directory, overwrite=True, progress=ctx.progress, desc=desc)
    return model


def _prepare(ctx: Context) -> Prepared:
    from ..core.sequences import extraction_stop_hook
    from ..data.canaries import generate_corpus
    from ..data.prompt import as_prompter
    from ..evaluation.mia import membership_report
    from ..model.build import train_tokenizer
    from ..model.load import load_model, load_tokenizer

    st, seed, requests, console = SETTINGS[ctx.size], ctx.seed, ctx.options.requests, ctx.console
    corpus = generate_corpus(n_canaries=st.forget_size * max(requests, 4), n_validation=st.validation_size,
                             repeats=st.repeats, seed=seed, background_size="smoke" if ctx.size == "smoke" else "small")
    base_dir = ctx.out / "models" / "base"
    # the retain model shares the base model's tokenizer: models are reused only with the tokenizer they were
    # trained with
    reuse = ctx.resume and (base_dir / "lethe_finetune.json").exists()
    tokenizer = load_tokenizer(base_dir) if reuse else train_tokenizer(corpus.training_texts(),
                                                                       vocab_size=st.vocab_size)
    canary_ids = _ids(tokenizer, corpus.canaries, st.max_tokens)
    retain = _records(_ids(tokenizer, corpus.background))

    def with_canaries(keep):  # the background plus every kept canary, each repeated (so it is memorized)
        return retain + [TextRecord(token_ids=tuple(ids)) for i, ids in enumerate(canary_ids) if keep(i)
                         for _ in range(corpus.repeats)]

    _pretrained(ctx, st, tokenizer, with_canaries(lambda i: True), base_dir, "pretrain", reuse)
    val_ids = _ids(tokenizer, corpus.validation, st.max_tokens)
    heldout_ids = _ids(tokenizer, corpus.held_out)
    order = list(range(len(canary_ids)))
    random.Random(seed).shuffle(order)
    size = st.forget_size
    request_sets = [[canary_ids[i] for i in order[k * size : (k + 1) * size]] for k in range(requests)]
    # PrivLeak's reference: a model trained like the base but without any requested canary, and its membership
    # AUCs (each request's canaries vs the validation canaries)
    requested = set(order[: requests * st.forget_size])
    retain_model = _pretrained(ctx, st, tokenizer, with_canaries(lambda i: i not in requested),
                               ctx.out / "models" / "retain", "pretrain retain", reuse)
    retain_auc = [{a: v["auc"] for a, v in membership_report(retain_model, as_prompter(tokenizer), _records(ids),
                                                            _records(val_ids))["attacks"].items()}
                  for ids in request_sets]
    del retain_model
    base = load_model(base_dir)
    # One hook per request: EL_10, MA and held-out PPL after every epoch, and the stopping rule.
    # The validation canaries (never trained on) are also the membership-inference negatives.
    hook, thresholds = extraction_stop_hook(tokenizer, _records(request_sets[0]), _records(val_ids),
                                            heldout=_records(heldout_ids), model=base, min_epochs=st.min_epochs,
                                            membership=_records(val_ids), retain_auc=retain_auc[0])
    hooks = [hook] + [extraction_stop_hook(tokenizer, _records(ids), None, heldout=_records(heldout_ids),
                                           thresholds=thresholds, min_epochs=st.min_epochs,
                                           membership=_records(val_ids), retain_auc=auc)[0]
                      for ids, auc in zip(request_sets[1:], retain_auc[1:])]
    before = [h(0, base)["metrics"] for h in hooks]
    console.print(f"validation EL10 {thresholds.el:.3f} MA {thresholds.ma:.3f}; forget EL10 "
                  f"{before[0]['forget/EL10']:.3f} MA {before[0]['forget/MA']:.3f}")
    return Prepared(tokenizer, corpus, base_dir, request_sets, retain, hooks, thresholds, before, len(val_ids),
                    len(heldout_ids), retain_auc)


def _cells(prep: Prepared, ctx: Context) -> list[Cell]:
    out = []
    for spec in ctx.runs:
        method, kind = parse_run_spec(spec)
        out.append(Cell(spec, run_dir_for(ctx.out, method, kind), f"unlearning with {method} ({kind})"))
    return out


def _run_cell(prep: Prepared, cell: Cell, ctx: Context) -> dict:
    """Every request in a row on one model (continual when --requests > 1); the first is the cell's row."""
    from ..core import unlearn
    from ..model.load import load_model
    from ..model.lora import ParamsConfig

    st, seed, requests = SETTINGS[ctx.size], ctx.seed, ctx.options.requests
    method, kind = parse_run_spec(cell.spec)
    cfg = replace(st.unlearn, seed=seed)
    if kind != "full":
        cfg = replace(cfg, lr=cfg.lr * st.lora_lr_scale)

    def one_request(model, k, request):
        forget_ids, hook = request
        model, run = unlearn(model, _records(forget_ids), prep.retain, method=method, tokenizer=prep.tokenizer,
                             train=replace(cfg, seed=seed + k), params=ParamsConfig(kind=kind, rank=st.lora_rank),
                             epoch_hook=hook, save=False, progress=ctx.progress)
        last = run.epochs[-1]["metrics"] if run.epochs else {}
        success = (run.status == "ok" and bool(run.epochs) and run.epochs[-1]["epoch"] > 0
                   and meets_threshold(last.get("forget/EL10", 1.0), last.get("forget/MA", 1.0), prep.thresholds))
        record = run.to_dict()
        record.update({"success": success, "epochs_to_success": run.epochs[-1]["epoch"] if success else None})
        return model, record

    final, per_request = apply_requests(load_model(prep.base_dir), list(zip(prep.request_sets, prep.hooks)),
                                        one_request)
    record = {**per_request[0], "method": method, "params": kind, "requests": per_request if requests > 1 else []}
    if ctx.options.attacks and all(r.get("status", "ok") == "ok" for r in per_request):
        record["attacks"] = _attack(final, prep, ctx)
    return record


def _attack(model, prep: Prepared, ctx: Context) -> dict:
    """The model after the last request under the chosen weight attacks, scored by EL and MA on every canary it
    was asked to forget; the retain model (never trained on them) under the same attacks is the control, the
    base model full recovery."""
    from ..core.sequences import extraction_scorer
    from ..data.prompt import as_prompter
    from ..model.load import load_model

    forgotten = _records([ids for request in prep.request_sets for ids in request])
    return attack_model(model, forgotten, ctx.options.attacks, prompter=as_prompter(prep.tokenizer),
                        retain=prep.retain, retain_model=load_model(ctx.out / "models" / "retain"),
                        target_model=load_model(prep.base_dir), score=extraction_scorer(prep.tokenizer))


def _summarize(prep: Prepared, runs: list, ctx: Context) -> dict:
    from ..evaluation.memorization import ELConfig

    st = SETTINGS[ctx.size]
    th = prep.thresholds
    return {
        "model": {"kind": "llama (built here)", "preset": st.model_preset, "vocab_size": len(prep.tokenizer),
                  "path": str(prep.base_dir)},
        "data": {"forget": st.forget_size, "requests": ctx.options.requests, "validation": prep.n_validation,
                 "canary_tokens": st.max_tokens, "repeats": prep.corpus.repeats, "retain_sequences": len(prep.retain),
                 "heldout_sequences": prep.n_heldout},
        "thresholds": asdict(th),
        "settings": {"pretrain": asdict(st.pretrain), "unlearn": asdict(st.unlearn), "lora_rank": st.lora_rank,
                     "lora_lr_scale": st.lora_lr_scale, "min_epochs": st.min_epochs,
                     "el": asdict(ELConfig())},
        "reference": {"target": {**prep.before[0], "validation/EL10": th.el, "validation/MA": th.ma},
                      "retain": {f"mia/{a}_AUC": v for a, v in prep.retain_auc[0].items()}},
        "reference_requests": prep.before,
    }


MEMORIZED = Scenario(
    name=NAME, key="memorized", version=VERSION,
    summary="canary sequences a model memorized: the EL/MA stopping rule, epochs to success, cost",
    sizes=tuple(SETTINGS), default_runs=DEMO_RUNS,
    prepare=_prepare, cells=_cells, run_cell=_run_cell, summarize=_summarize, report="extraction",
    options=MemorizedOptions, fingerprint=("requests",), check=_check,
    parse_spec=parse_run_spec,
)

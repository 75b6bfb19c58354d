"""Scenario 1 (SPEC §6): fictitious entities, TOFU-style, fully offline.

Protocol: generate authors -> train a tokenizer and a small Llama -> fine-tune a *target*
model on every author plus general knowledge, and a *retain* model without the forget
authors -> unlearn the forget authors from the target with each method -> evaluate after
every epoch (ROUGE, P, TR per set; MU, FE, FQ against the retain model).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..data.records import QARecord
from ..data.synthetic import FORGET_PERCENTS, AuthorsDataset, generate_authors
from ..engine.loop import TrainConfig
from ..evaluation.semantic import EMBEDDING_MODEL_HELP, NLI_MODEL_HELP
from ..evaluation.suite import EvalSet
from . import (
    AttackOptions,
    Cell,
    Context,
    Scenario,
    attack_model,
    check_attacks,
    console as make_console,
    derived,
    option,
    parse_run_spec,
)
from .grid import METHOD_SWEEP, TRAIN_SWEEP, check_sweep, grid_cells

NAME = "fictitious-authors"
VERSION = 2  # 2: held-out authors, membership inference (AUC, PrivLeak, KS p) per epoch


@dataclass(frozen=True)
class SizeSettings:
    model_preset: str
    vocab_size: int
    finetune: TrainConfig
    unlearn: TrainConfig
    max_new_tokens: int
    retain_eval: int  # retain items scored (TOFU scores 400 retain_perturbed items, peers 300)
    lora_rank: int = 8
    lora_lr_scale: float = 4.0  # LoRA/FILA need a larger LR (IHL seed: 2e-4 vs 5e-5 for full)

# A method's learning rate as a factor of the size's base rate (the shared rate otherwise), keyed by the method
# (FORGET+REGULARIZER, options aside) or by its forget loss. RMU trains two layers' MLPs only (WMDP: lr 5e-5 on
# three, vs 1e-5 for full-model TOFU runs): at the shared rate its loss barely moves in these few steps. The
# others come from the recorded sweep (benchmarks/lr_sweep.py, 5 rates x 3 seeds at size small,
# benchmarks/RESULTS.md): only the methods whose best rate beats the shared one beyond the seeds' spread.
METHOD_LR_SCALE = {"rmu": 10.0, "dpo+gd": 2.0, "me+gd": 2.0, "npo+gd": 0.5}


def method_lr_scale(method: str) -> float:
    """The factor on the base learning rate for ``method`` (1 when none was chosen for it)."""
    from ..objectives.method import parse_method

    parsed = parse_method(method)
    return METHOD_LR_SCALE.get(parsed.name.lower(), METHOD_LR_SCALE.get(parsed.forget.name, 1.0))


SETTINGS = {
    "smoke": SizeSettings("smoke", 600,
                          TrainConfig(epochs=12, lr=3e-3, batch_size=16, micro_batch_size=16, checkpoint=False),
                          TrainConfig(epochs=2, lr=1e-3, batch_size=8, micro_batch_size=8, checkpoint=False), 24, 16),
    "small": SizeSettings("small", 1500,
                          TrainConfig(epochs=40, lr=2e-3, batch_size=16, micro_batch_size=16, checkpoint=False),
                          TrainConfig(epochs=5, lr=5e-4, batch_size=8, micro_batch_size=8, checkpoint=False), 32, 40),
    "full": SizeSettings("full", 4000,
                         TrainConfig(epochs=30, lr=1e-3, batch_size=32, micro_batch_size=16, checkpoint=True),
                         TrainConfig(epochs=5, lr=1e-4, batch_size=32, micro_batch_size=16, checkpoint=True), 48, 300),
}


def eval_sets(data: AuthorsDataset, forget_percent: int, retain_eval: int, seed: int) -> list[EvalSet]:
    forget = data.forget(forget_percent)
    retain = data.retain(forget_percent)
    retain_sample = random.Random(seed).sample(retain, min(retain_eval, len(retain)))
    return [
        EvalSet("forget", forget, "qa", role="forget"),
        EvalSet("retain", retain_sample, "qa", role="retain"),
        EvalSet("real_authors", data.real_authors, "mc", role="utility"),
        EvalSet("world_facts", data.world_facts, "mc", role="utility"),
    ]


def training_records(data: AuthorsDataset, forget_percent: int) -> tuple[list[QARecord], list[QARecord]]:
    """(target records, retain-model records): both include the general-knowledge sets."""
    general = list(data.real_authors) + list(data.world_facts)
    return list(data.full) + general, list(data.retain(forget_percent)) + general


def tokenizer_corpus(data: AuthorsDataset) -> list[str]:
    from ..data.prompt import PLAIN_TEMPLATE

    texts = []
    for r in list(data.full) + list(data.real_authors) + list(data.world_facts):
        texts.append(PLAIN_TEMPLATE.format(question=r.question))
        texts += [r.answer, r.paraphrased_answer or "", *r.perturbed_answers, r.paraphrased_question or ""]
    from ..data.refusals import REFUSALS

    return texts + list(REFUSALS)


# Closer-look Table 4's nine methods, the IHL seed's IHL+GD, FLAT-KL, plain GA as the baseline, SimNPO+GD
# and RMU (loss-input protocol examples), with full fine-tuning; then IHL+GD with LoRA and with FILA (the
# IHL seed's comparison). RMU's retain weight: WMDP's α = 1200 leaves this model unchanged (forget ROUGE
# 1.000 after 5 epochs); α = 10 lets the forget term act.
DEMO_METHODS = ("GA", "GA+GD", "GA+KL", "NPO+GD", "NPO+KL", "ME+GD", "DPO+GD", "DPO+KL", "IDK+GD", "IDK+AP",
                "IHL+GD", "FLAT-KL", "SimNPO+GD", "RMU(alpha=10)", "WGA+GD", "SatImp+GD", "UNDIAL+GD", "CEU+GD",
                "PDU(warmup_epochs=1)", "AltPO+GD", "IHL+GD@lora", "IHL+GD@fila")


def prepare_models(out: Path, size: str, seed: int, forget_percent: int, *, resume: bool, progress: bool):
    """Data, tokenizer and the two fine-tuned models (target, retain); reused when already on disk."""
    from ..core import finetune
    from ..model.build import build_tiny_model, train_tokenizer
    from ..model.load import load_model, load_tokenizer

    settings = SETTINGS[size]
    data = generate_authors(size, seed)
    data.save(out / "data")
    target_dir, retain_dir = out / "models" / "target", out / "models" / "retain"
    console = make_console(progress)
    if resume and (target_dir / "lethe_finetune.json").exists() and (retain_dir / "lethe_finetune.json").exists():
        console.print(f"[dim]reusing fine-tuned models in {out / 'models'}[/dim]")
        return data, load_tokenizer(target_dir), load_model(target_dir), load_model(retain_dir)
    tokenizer = train_tokenizer(tokenizer_corpus(data), vocab_size=settings.vocab_size)
    target_recs, retain_recs = training_records(data, forget_percent)
    models = {}
    for name, recs, directory in (("target", target_recs, target_dir), ("retain", retain_recs, retain_dir)):
        console.print(f"fine-tuning the {name} model on {len(recs)} QA pairs")
        model = build_tiny_model(tokenizer, settings.model_preset, seed=seed)
        models[name], _ = finetune(model, recs, tokenizer=tokenizer, train=replace(settings.finetune, seed=seed),
                                   out_dir=directory, overwrite=True, progress=progress, desc=f"finetune {name}")
    return data, tokenizer, models["target"], models["retain"]


def check_forget_percent(percent) -> int:
    """A forget split the generated set has (1, 5 or 10 % of the authors)."""
    if percent not in FORGET_PERCENTS:
        from ..util.errors import LetheError

        raise LetheError(f"--forget-percent: expected 1, 5 or 10, got {percent!r}")
    return percent


@dataclass
class FictitiousOptions(AttackOptions):
    forget_percent: int = option(10, "the forget split: the percent of the authors to forget", type=int,
                                 choices=(1, 5, 10))
    embedding_model: str | None = option(None, EMBEDDING_MODEL_HELP)
    nli_model: str | None = option(None, NLI_MODEL_HELP)
    sweep: dict | None = option(None, "{setting: [values]} varied across cells (lethe bench --sweep)", cli=False)
    seeds: int = option(1, "unlearning seeds per cell (lethe bench --seeds)", cli=False)
    semantic: Any = derived()  # the loaded embedding and NLI models


def _check(options: FictitiousOptions, size: str) -> FictitiousOptions:
    """Sweep and seeds checked, and the named embedding/NLI models loaded (one that fails, fails now)."""
    from ..evaluation.suite import load_semantic
    from ..util.validation import check_positive

    check_forget_percent(options.forget_percent)
    check_attacks(options)
    options.sweep = check_sweep(options.sweep or {}, SETTINGS["small"].unlearn)
    options.seeds = check_positive("--seeds", options.seeds)
    options.semantic = load_semantic(options.embedding_model, options.nli_model)
    return options


@dataclass
class Prepared:
    """What every cell shares: the data, the evaluation sets and the two models' scores."""

    data: AuthorsDataset
    tokenizer: object
    sets: list
    retain_tr: list
    retain_auc: dict
    target: object        # the target model's evaluation (initial metrics of every run)
    retain: object        # the retain model's evaluation
    n_params: int
    eval_kwargs: dict


def _prepare(ctx: Context) -> Prepared:
    from ..evaluation.evidence import membership_aucs
    from ..evaluation.suite import aggregate, evaluate_sets

    settings, fp = SETTINGS[ctx.size], ctx.options.forget_percent
    data, tokenizer, target, retain_model = prepare_models(ctx.out, ctx.size, ctx.seed, fp, resume=ctx.resume,
                                                           progress=ctx.progress)
    sets = eval_sets(data, fp, settings.retain_eval, ctx.seed)
    eval_kwargs = {"max_new_tokens": settings.max_new_tokens, "semantic": ctx.options.semantic}
    ctx.console.print("evaluating the target and retain models")
    # Membership inference, forget authors vs held-out authors no model saw: the retain model's AUCs are
    # PrivLeak's reference (MUSE), and every epoch of every run is scored the same way.
    ret = evaluate_sets(retain_model, tokenizer, sets, holdout=data.holdout, **eval_kwargs)
    retain_tr = ret.per_item["forget/TR_values"]
    aggregate(ret, retain_model_tr=retain_tr)
    retain_auc = membership_aucs(ret.metrics)
    tgt = evaluate_sets(target, tokenizer, sets, holdout=data.holdout, retain_model_auc=retain_auc, **eval_kwargs)
    aggregate(tgt, retain_model_tr=retain_tr)
    return Prepared(data, tokenizer, sets, retain_tr, retain_auc, tgt, ret,
                    sum(p.numel() for p in retain_model.parameters()), eval_kwargs)


def _cells(prep: Prepared, ctx: Context) -> list[Cell]:
    """Every method x parameterisation x sweep point x seed."""
    return grid_cells(ctx.out, ctx.runs, ctx.options.sweep, ctx.options.seeds,
                      default_rank=SETTINGS[ctx.size].lora_rank, attacks=ctx.options.attacks)


def _run_cell(prep: Prepared, cell: Cell, ctx: Context) -> dict:
    from ..core import EvalConfig, MethodConfig, unlearn
    from ..model.load import load_model
    from ..model.lora import ParamsConfig

    settings = SETTINGS[ctx.size]
    fp, point, s = ctx.options.forget_percent, cell.info["sweep"], cell.info["seed"]
    method, kind, rank = parse_run_spec(cell.spec)
    rank = rank or settings.lora_rank
    model = load_model(ctx.out / "models" / "target")
    train_cfg = replace(settings.unlearn,
                        seed=ctx.seed + s)  # seeds vary the unlearning (order, pairing), not the models
    if kind != "full":
        train_cfg = replace(train_cfg, lr=train_cfg.lr * settings.lora_lr_scale)
    train_cfg = replace(train_cfg, lr=train_cfg.lr * method_lr_scale(method))
    train_cfg = replace(train_cfg, **{k: v for k, v in point.items() if k in TRAIN_SWEEP})  # a swept lr is absolute
    evaluation = EvalConfig(sets=prep.sets, retain_model_tr=prep.retain_tr, initial_metrics=prep.target.metrics,
                            holdout=prep.data.holdout, retain_model_auc=prep.retain_auc, **prep.eval_kwargs)
    unlearned, run = unlearn(model, prep.data.forget(fp), prep.data.retain(fp),
                     method=MethodConfig(method, **{k: v for k, v in point.items() if k in METHOD_SWEEP}),
                     tokenizer=prep.tokenizer, train=train_cfg, params=ParamsConfig(kind=kind, rank=rank),
                     evaluation=evaluation, out_dir=cell.run_dir, save=False, resume=ctx.resume, overwrite=True,
                     progress=ctx.progress)
    record = run.to_dict()
    if ctx.options.attacks and run.status == "ok":
        record["attacks"] = _attack(unlearned, prep, ctx)
    if "(" in method:  # the report names the run as it was asked for, options included
        record["method"] = method
    record["cell"] = dict(cell.info)  # reused cells carry their sweep point and seed
    return record


def _attack(model, prep: Prepared, ctx: Context) -> dict:
    """The chosen attacks on one cell's unlearned model, the retain model as the control and the target as full
    recovery (both reloaded: the cell trained a copy)."""
    from ..data.prompt import as_prompter
    from ..model.load import load_model

    fp = ctx.options.forget_percent
    models = {name: load_model(ctx.out / "models" / name) for name in ("target", "retain")}
    return attack_model(model, prep.data.forget(fp), ctx.options.attacks, prompter=as_prompter(prep.tokenizer),
                        retain=prep.data.retain(fp), retain_model=models["retain"], target_model=models["target"],
                        max_new_tokens=SETTINGS[ctx.size].max_new_tokens)


def _summarize(prep: Prepared, runs: list, ctx: Context) -> dict:
    settings, fp, semantic = SETTINGS[ctx.size], ctx.options.forget_percent, ctx.options.semantic
    data, tokenizer = prep.data, prep.tokenizer
    return {
        "forget_percent": fp,
        "model": {"kind": "llama (built here)", "preset": settings.model_preset, "parameters": prep.n_params,
                  "vocab_size": len(tokenizer), "path": str(ctx.out / "models" / "target")},
        "data": {"forget": len(data.forget(fp)), "retain": len(data.retain(fp)),
                 "authors": len(data.authors), "holdout": len(data.holdout), "real_authors": len(data.real_authors),
                 "world_facts": len(data.world_facts), "path": str(ctx.out / "data")},
        "settings": {"finetune": asdict(settings.finetune), "unlearn": asdict(settings.unlearn),
                     "max_new_tokens": settings.max_new_tokens, "retain_eval": settings.retain_eval,
                     "lora_lr_scale": settings.lora_lr_scale, "method_lr_scale": dict(METHOD_LR_SCALE)},
        "sweep": ctx.options.sweep, "seeds": ctx.options.seeds,
        "reference": {"target": prep.target.metrics, "retain": prep.retain.metrics},
        "aggregates_over": prep.target.aggregates_over,
        "set_roles": prep.target.roles,  # what each evaluation set is to the metrics (the report's goals read it)
        "metrics_unavailable": semantic.unavailable,
        "embedding_model": semantic.embed_name,
        "nli_model": getattr(semantic.judge, "name", None),
        "reference_samples": {"target": prep.target.samples, "retain": prep.retain.samples},
    }


FICTITIOUS = Scenario(
    name=NAME, key="fictitious", version=VERSION,
    summary="TOFU-style fictitious authors: MU, FE, FQ, membership inference per epoch (default)",
    sizes=tuple(SETTINGS), default_runs=DEMO_METHODS,
    prepare=_prepare, cells=_cells, run_cell=_run_cell, summarize=_summarize, report="qa",
    options=FictitiousOptions,
    fingerprint=("forget_percent",), check=_check,
)

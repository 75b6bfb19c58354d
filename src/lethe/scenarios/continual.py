"""Continual unlearning on fictitious authors (closer-look Sec. 5.2), fully offline.

The fictitious-author set is split into N requests of sequential author groups (request 1 is the
forget10 split, request 2 the authors before it, ...). One model receives them in a row: each request
unlearns its authors, regularizing on every author not yet forgotten (the retain set shrinks), and
starts from the previous request's result. NPO/DPO/KL compare against the model before each request
(``moving``, what the papers' code does) or always the starting model (``fixed``, closer-look Fig. 7c).

After every request the model is scored on the cumulative forget set (everything forgotten so far: an
earlier request's authors can come back), a retain sample and the two general-knowledge sets: MU, FE,
and FQ against a retain model fine-tuned without the cumulative forget set (one per request).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..data.synthetic import AuthorsDataset, generate_authors
from ..evaluation.semantic import EMBEDDING_MODEL_HELP, NLI_MODEL_HELP
from ..evaluation.suite import EvalSet
from . import (
    AttackOptions,
    Cell,
    Context,
    Scenario,
    apply_requests,
    attack_model,
    check_attacks,
    derived,
    option,
    parse_run_spec,
    run_dir_for,
)
from .fictitious import SETTINGS, check_forget_percent, tokenizer_corpus

NAME = "continual-authors"
VERSION = 1
DEMO_METHODS = ("ME+GD", "GA+GD", "NPO+GD", "IDK+AP", "IHL+GD")
ALPHA = {"ME+GD": 1.0}  # closer-look Sec. 5.2 gives ME+GD more unlearning strength in continual runs
REFERENCES = ("moving", "fixed", "both")
MIN_RETAIN_PERCENT = 10  # the paper stops at 90 % forgotten: some data must stay for regularization


def request_authors(data: AuthorsDataset, requests: int, percent: int) -> list[list[str]]:
    """Each request's authors: sequential groups of ``percent`` % from the end (request 1 = forget``percent``)."""
    n = max(1, round(len(data.authors) * percent / 100))
    names = data.authors
    return [names[len(names) - (k + 1) * n : len(names) - k * n] for k in range(requests)]


@dataclass(frozen=True)
class Request:
    """What request k unlearns and regularizes on, and how its result is scored."""

    forget: list           # this request's authors' QA
    retain: list           # every author not forgotten by the end of this request
    sets: list             # cumulative forget, retain sample, general knowledge
    retain_tr: list        # the retain model's truth ratios on the cumulative forget set (FQ)


@dataclass
class ContinualOptions(AttackOptions):
    requests: int = option(5, "disjoint forget requests applied one after another", type=int)
    forget_percent: int = option(10, "each request's percent of the authors", type=int, choices=(1, 5, 10))
    reference: str = option("moving", "what NPO, DPO and KL compare against: the model before each request (moving), "
                            "the starting model (fixed; closer-look Fig. 7c), or run both", choices=REFERENCES)
    embedding_model: str | None = option(None, EMBEDDING_MODEL_HELP)
    nli_model: str | None = option(None, NLI_MODEL_HELP)
    semantic: Any = derived()  # the loaded embedding and NLI models


def _check(options: ContinualOptions, size: str) -> ContinualOptions:
    from ..evaluation.suite import load_semantic
    from ..util.errors import LetheError

    requests, percent = options.requests, options.forget_percent
    if not isinstance(requests, int) or isinstance(requests, bool) or requests < 1:
        raise LetheError(f"--requests: expected an integer >= 1, got {requests!r}")
    check_forget_percent(percent)
    if requests * percent > 100 - MIN_RETAIN_PERCENT:
        raise LetheError(f"--requests {requests} x --forget-percent {percent} forgets {requests * percent} % of the "
                         f"authors; at most {100 - MIN_RETAIN_PERCENT} % can be, so that a retain set is left")
    if options.reference not in REFERENCES:
        raise LetheError(f"--reference: expected one of {', '.join(REFERENCES)}, got {options.reference!r}")
    options.semantic = load_semantic(options.embedding_model, options.nli_model)
    return check_attacks(options)


@dataclass
class Prepared:
    data: AuthorsDataset
    tokenizer: object
    requests: list         # Request per request
    target: object         # the target model's evaluation on request 1's sets
    retain: list           # each request's retain model's evaluation (its reference row)
    n_params: int
    eval_kwargs: dict


def _general(data: AuthorsDataset) -> list:
    return list(data.real_authors) + list(data.world_facts)


def _finetuned(ctx: Context, tokenizer, name: str, records: list, reuse: bool):
    """A model fine-tuned on ``records`` (with ``reuse``: the one in ``out/models/NAME`` when finished there)."""
    from ..core import finetune
    from ..model.build import build_tiny_model
    from ..model.load import load_model

    settings, directory = SETTINGS[ctx.size], ctx.out / "models" / name
    if reuse and (directory / "lethe_finetune.json").exists():
        ctx.console.print(f"[dim]reusing {directory}[/dim]")
        return load_model(directory)
    ctx.console.print(f"fine-tuning the {name} model on {len(records)} QA pairs")
    model = build_tiny_model(tokenizer, settings.model_preset, seed=ctx.seed)
    model, _ = finetune(model, records, tokenizer=tokenizer, train=replace(settings.finetune, seed=ctx.seed),
                        out_dir=directory, overwrite=True, progress=ctx.progress, desc=f"finetune {name}")
    return model


def _prepare(ctx: Context) -> Prepared:
    from ..evaluation.suite import aggregate, evaluate_sets
    from ..model.build import train_tokenizer
    from ..model.load import load_tokenizer

    settings, seed = SETTINGS[ctx.size], ctx.seed
    data = generate_authors(ctx.size, seed)
    data.save(ctx.out / "data")
    target_dir = ctx.out / "models" / "target"
    # every model shares the target's tokenizer: models are reused only with the tokenizer they were trained with
    reuse = ctx.resume and (target_dir / "lethe_finetune.json").exists()
    if reuse:
        tokenizer = load_tokenizer(target_dir)
    else:
        tokenizer = train_tokenizer(tokenizer_corpus(data), vocab_size=settings.vocab_size)
    target = _finetuned(ctx, tokenizer, "target", list(data.full) + _general(data), reuse)
    eval_kwargs = {"max_new_tokens": settings.max_new_tokens, "semantic": ctx.options.semantic}
    groups = request_authors(data, ctx.options.requests, ctx.options.forget_percent)
    requests, retain_evals, gone = [], [], set()
    for k, authors in enumerate(groups):
        gone |= set(authors)
        retain = [r for r in data.full if r.subject not in gone]
        sample = random.Random(seed + k).sample(retain, min(settings.retain_eval, len(retain)))
        sets = [EvalSet("forget", [r for r in data.full if r.subject in gone], "qa", role="forget"),
                EvalSet("retain", sample, "qa", role="retain"),
                EvalSet("real_authors", data.real_authors, "mc", role="utility"),
                EvalSet("world_facts", data.world_facts, "mc", role="utility")]
        retain_model = _finetuned(ctx, tokenizer, f"retain{k + 1}", retain + _general(data), reuse)
        ctx.console.print(f"evaluating the retain model of request {k + 1}")
        ev = evaluate_sets(retain_model, tokenizer, sets, **eval_kwargs)
        aggregate(ev, retain_model_tr=ev.per_item["forget/TR_values"])
        retain_evals.append(ev)
        requests.append(Request([r for r in data.full if r.subject in authors], retain, sets,
                                ev.per_item["forget/TR_values"]))
    ctx.console.print("evaluating the target model")
    tgt = evaluate_sets(target, tokenizer, requests[0].sets, **eval_kwargs)
    aggregate(tgt, retain_model_tr=requests[0].retain_tr)
    return Prepared(data, tokenizer, requests, tgt, retain_evals, sum(p.numel() for p in target.parameters()),
                    eval_kwargs)


def uses_reference(method: str) -> bool:
    """Whether the method compares against θ_ref (NPO, DPO, KL, ...): only then does fixed vs moving matter."""
    from ..objectives.method import parse_method

    return any(n.model == "reference" for n in parse_method(method).needs().values())


def _cells(prep: Prepared, ctx: Context) -> list[Cell]:
    choice = ctx.options.reference
    out = []
    for spec in ctx.runs:
        method, kind, rank = parse_run_spec(spec)
        refs = (("moving", "fixed") if choice == "both" else (choice,)) if uses_reference(method) else ("moving",)
        for ref in refs:
            suffix = (f"-r{rank}" if rank else "") + ("-fixed" if ref == "fixed" else "")
            out.append(Cell(spec, run_dir_for(ctx.out, method, kind, suffix),
                            f"{len(prep.requests)} requests with {method} ({kind})"
                            + (", fixed reference" if ref == "fixed" else ""),
                            {"reference": ref, "attacks": sorted(ctx.options.attacks or ())}))
    return out


def _run_cell(prep: Prepared, cell: Cell, ctx: Context) -> dict:
    from ..core import EvalConfig, MethodConfig, unlearn
    from ..model.load import load_model
    from ..model.lora import ParamsConfig

    settings = SETTINGS[ctx.size]
    method, kind, rank = parse_run_spec(cell.spec)
    train = settings.unlearn if kind == "full" else replace(settings.unlearn,
                                                            lr=settings.unlearn.lr * settings.lora_lr_scale)
    fixed = cell.info["reference"] == "fixed" and uses_reference(method)
    reference = load_model(ctx.out / "models" / "target") if fixed else None

    def one_request(model, k, request: Request):
        # scored at the end of each request only (the paper's per-subtask MU and FE); request 1's start is
        # the target model, scored once in prepare
        evaluation = EvalConfig(sets=request.sets, retain_model_tr=request.retain_tr, every=0,
                                at=("start", "end") if k == 0 else ("end",),
                                initial_metrics=prep.target.metrics if k == 0 else None, **prep.eval_kwargs)
        model, run = unlearn(model, request.forget, request.retain,
                             method=MethodConfig(method, alpha=ALPHA.get(method.upper())), tokenizer=prep.tokenizer,
                             train=replace(train, seed=ctx.seed + k),
                             params=ParamsConfig(kind=kind, rank=rank or settings.lora_rank), evaluation=evaluation,
                             save=False, progress=ctx.progress, reference_model=reference,
                             extra_record={"reference": cell.info["reference"]})
        return model, run.to_dict()

    final, per_request = apply_requests(load_model(ctx.out / "models" / "target"), prep.requests, one_request)
    last = per_request[-1]
    status = "ok" if all(r["status"] == "ok" for r in per_request) else last["status"]
    attacks = None
    if ctx.options.attacks and status == "ok":  # the model after every request, on every author forgotten
        from ..data.prompt import as_prompter

        end, models = prep.requests[-1], ctx.out / "models"
        attacks = attack_model(final, end.sets[0].records, ctx.options.attacks,
                               prompter=as_prompter(prep.tokenizer), retain=end.retain,
                               retain_model=load_model(models / f"retain{len(prep.requests)}"),
                               target_model=load_model(models / "target"), max_new_tokens=settings.max_new_tokens)
    epochs = [{"epoch": 0, "metrics": dict(prep.target.metrics)}]
    epochs += [{"epoch": r["request"], "metrics": r["epochs"][-1]["metrics"] if r["epochs"] else {}}
               for r in per_request]
    cost = {key: sum(r["cost"].get(key) or 0 for r in per_request)
            for key in ("wall_time_s", "tokens_trained", "flops", "epochs")}
    cost["trainable_percent"] = last["cost"].get("trainable_percent")
    return {"method": method, "params": kind, "reference": cell.info["reference"], "status": status,
            **({"attacks": attacks} if attacks is not None else {}),
            # one point per request (epoch k = after request k), so the trajectory plots and the final-row
            # tables read the continual run like any other
            "epochs": epochs, "x_axis": "request", "cost": cost, "requests": per_request}


def _summarize(prep: Prepared, runs: list, ctx: Context) -> dict:
    settings, semantic, data = SETTINGS[ctx.size], ctx.options.semantic, prep.data
    percent = ctx.options.forget_percent
    return {
        "forget_percent": percent, "requests": len(prep.requests), "reference_choice": ctx.options.reference,
        "model": {"kind": "llama (built here)", "preset": settings.model_preset, "parameters": prep.n_params,
                  "vocab_size": len(prep.tokenizer), "path": str(ctx.out / "models" / "target")},
        "data": {"authors": len(data.authors), "per_request": len(prep.requests[0].forget),
                 "forgotten_at_end": len(prep.requests[-1].sets[0].records),
                 "retain_at_end": len(prep.requests[-1].retain), "real_authors": len(data.real_authors),
                 "world_facts": len(data.world_facts), "path": str(ctx.out / "data")},
        "request_authors": request_authors(data, len(prep.requests), percent),
        "settings": {"finetune": asdict(settings.finetune), "unlearn": asdict(settings.unlearn),
                     "max_new_tokens": settings.max_new_tokens, "retain_eval": settings.retain_eval,
                     "lora_lr_scale": settings.lora_lr_scale, "alpha": ALPHA},
        "reference": {"target": prep.target.metrics},
        "reference_requests": [ev.metrics for ev in prep.retain],  # retain model k on request k's sets
        "aggregates_over": prep.target.aggregates_over,
        "set_roles": prep.target.roles,  # what each evaluation set is to the metrics (the report's goals read it)
        "metrics_unavailable": semantic.unavailable,
        "embedding_model": semantic.embed_name,
        "nli_model": getattr(semantic.judge, "name", None),
        "reference_samples": {"target": prep.target.samples},
    }


CONTINUAL = Scenario(
    name=NAME, key="continual", version=VERSION,
    summary="fictitious authors forgotten request after request (closer-look Sec. 5.2): MU, FE, FQ per request",
    sizes=tuple(SETTINGS), default_runs=DEMO_METHODS,
    prepare=_prepare, cells=_cells, run_cell=_run_cell, summarize=_summarize, report="continual",
    options=ContinualOptions,
    fingerprint=("requests", "forget_percent"), check=_check,
)

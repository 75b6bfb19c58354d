"""The user's own model and data as a benchmark (``lethe bench --model M --forget F --retain R``).

Every method x parameterisation x sweep point x seed is one ``lethe unlearn`` run of the same model on the
same records, scored by the same evaluation; the starting model is scored once (and the retain model, when
given, once) and is every run's epoch 0. results.json has the fictitious benchmark's shape, so the report
shows the same comparison: per-set tables, mean ± spread over seeds, the Pareto front of utility against
forgetting, and the attacks when asked for. No model is saved per cell: unlearn the chosen setting with
``lethe unlearn`` to keep it.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import AttackOptions, Cell, Context, Scenario, check_attacks, derived, option, parse_run_spec
from .grid import METHOD_SWEEP, TRAIN_SWEEP, check_sweep, grid_cells

NAME = "own-data"
VERSION = 1
SIZE = "own"  # the only size: the data is the user's


@dataclass(frozen=True)
class OwnData:
    """The user's model and records and every `lethe unlearn` setting the cells share.

    ``train.lr`` is the full fine-tuning rate; LoRA and FILA cells train at ``adapter_lr`` (None: ``train.lr``
    too). A swept ``lr`` is absolute for every parameterisation. ``params`` gives the adapter settings; each run
    spec names its own kind and rank. ``unlearn_options``: the rest of :func:`lethe.unlearn`'s keywords
    (``model_config``, ``data``, ``runtime``, ``convention``, ``audit``, ``pad_to``).
    """

    model: Any                                   # a directory, or a model object (each cell trains a copy)
    forget: Sequence
    retain: Sequence = ()
    evaluation: Any = None                       # EvalConfig; without sets: the forget and (a sample of) retain
    train: Any = None                            # TrainConfig; None: the defaults
    adapter_lr: float | None = None
    params: Any = None                           # ParamsConfig; kind and rank come from each run spec
    tokenizer: Any = None                        # needed when ``model`` is an object
    retain_model: Any = None                     # the report's reference row and the attacks' control
    unlearn_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class OwnDataOptions(AttackOptions):
    inputs: OwnData | None = option(None, "the model, records and shared unlearn settings", cli=False)
    sweep: dict | None = option(None, "{setting: [values]} varied across cells", cli=False)
    seeds: int = option(1, "unlearning seeds per cell", cli=False)
    identity: str | None = derived()  # sha256 of everything that decides a cell's result


def _check(options: OwnDataOptions, size: str) -> OwnDataOptions:
    """The inputs read once (records with the run's field names), the evaluation defaulted, the sweep and seeds
    checked, and the fingerprint taken: a directory made with other data or settings is not reused."""
    from ..core import DataConfig, EvalConfig
    from ..data.sources import load_records
    from ..engine.loop import TrainConfig
    from ..model.lora import ParamsConfig
    from ..util.errors import LetheError
    from ..util.validation import check_positive

    data = options.inputs
    if not isinstance(data, OwnData):
        raise LetheError("the own-data benchmark needs its inputs (lethe bench --model M --forget F, or "
                         "lethe.bench(model, forget, ...))")
    unknown = sorted(set(data.unlearn_options) - {"model_config", "data", "runtime", "convention", "audit", "pad_to"})
    if unknown:
        raise LetheError(f"bench: unknown option(s) {', '.join(unknown)}; besides its own, bench takes model_config, "
                         "data, runtime, convention, audit and pad_to as lethe.unlearn does")
    dc = data.unlearn_options.get("data") or DataConfig()
    read = {"fields": dc.fields, "split": dc.split}
    forget = load_records(data.forget, **read)
    no_retain = data.retain is None or (isinstance(data.retain, (list, tuple)) and not data.retain)
    retain = [] if no_retain else load_records(data.retain, **read)
    if not forget:
        raise LetheError("the forget set is empty")
    evaluation = data.evaluation or EvalConfig()
    if not evaluation.sets:  # what `lethe unlearn` scores by default
        evaluation = replace(evaluation, sets=default_sets(forget, retain))
    for s in evaluation.sets:
        s.resolve(dc.fields)
    train = data.train or TrainConfig()
    options.inputs = replace(data, forget=forget, retain=retain, evaluation=evaluation, train=train,
                             params=data.params or ParamsConfig())
    check_attacks(options)
    options.sweep = check_sweep(options.sweep or {}, train)
    options.seeds = check_positive("--seeds", options.seeds)
    options.identity = identity(options.inputs)
    return options


def default_sets(forget: Sequence, retain: Sequence) -> list:
    """What `lethe unlearn` scores by default: the forget records, and a seeded sample of the retain records."""
    from ..core.configs import retain_sample
    from ..evaluation.suite import EvalSet

    sets = [EvalSet("forget", list(forget), "qa", role="forget")]
    if retain and all(hasattr(r, "question") for r in retain):
        sets.append(EvalSet("retain", retain_sample(retain), "qa", role="retain"))
    return sets


def _stable(value) -> Any:
    """A JSON-able form of a setting that is the same in every process and session (no object addresses)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _stable(v) for k, v in asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value.resolve())
    return type(value).__name__


def identity(data: OwnData) -> str:
    """sha256 over what decides every cell's result: the model, the records, the training, adapter and evaluation
    settings and the other unlearn options."""
    from ..core.audit import records_sha256

    ev = data.evaluation
    evaluation = {
        "sets": [[s.name, s.kind, s.role, records_sha256(s.records)] for s in ev.sets],
        "holdout": records_sha256(ev.holdout) if ev.holdout else None,
        **{k: _stable(getattr(ev, k)) for k in ("every", "at", "per_epoch", "max_new_tokens", "limit", "truth_ratio",
                                                  "metrics", "mia_k", "memorization", "count_end_token",
                                                  "lm_eval_tasks", "lm_eval_limit", "retain_model_tr")},
    }
    model = str(Path(data.model).resolve()) if isinstance(data.model, (str, Path)) else type(data.model).__name__
    retain_model = data.retain_model
    what = {"model": model, "forget": records_sha256(data.forget),
            "retain": records_sha256(data.retain) if data.retain else None,
            "train": _stable(replace(data.train, seed=0)), "adapter_lr": data.adapter_lr,
            "params": _stable(replace(data.params, kind="full")), "evaluation": evaluation,
            "retain_model": str(Path(retain_model).resolve()) if isinstance(retain_model, (str, Path))
            else None if retain_model is None else type(retain_model).__name__,
            "unlearn": _stable({k: v for k, v in data.unlearn_options.items()})}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


@dataclass
class Prepared:
    """The scores every cell shares: the starting model's (each run's epoch 0) and the retain model's."""

    reference: dict           # {"target": {...}, "retain": {...}}: metrics, samples, aggregates_over, roles
    parameters: int


def _scored(result) -> dict:
    return {"metrics": result.metrics, "samples": result.samples, "aggregates_over": result.aggregates_over,
            "roles": result.roles, "unavailable": result.unavailable}


def _prepare(ctx: Context) -> Prepared:
    """Score the starting model (and the retain model) once, or reuse the scores an earlier run left in --out."""
    from ..core import ModelConfig, evaluate, prepare
    from ..engine.runtime import RuntimeConfig
    from ..util.io import write_json

    path = ctx.out / "reference.json"
    if ctx.resume and path.exists():  # the fingerprint check has already matched the inputs
        saved = json.loads(path.read_text(encoding="utf-8"))
        return Prepared(saved["reference"], saved["parameters"])
    data: OwnData = ctx.options.inputs
    opts = data.unlearn_options
    mc, rt = opts.get("model_config") or ModelConfig(), opts.get("runtime") or RuntimeConfig()
    ev = data.evaluation
    reference = {}
    for name, model in (("target", data.model), ("retain", data.retain_model)):
        if model is None:
            continue
        ctx.console.print(f"evaluating the {'starting' if name == 'target' else 'retain'} model")
        loaded, prompter, _ = prepare(copy.deepcopy(model) if not isinstance(model, (str, Path)) else model,
                                      data.tokenizer, mc, rt)
        if name == "target":
            parameters = sum(p.numel() for p in loaded.parameters())
        result = evaluate(loaded, ev.sets, tokenizer=prompter.tokenizer, config=replace(ev, initial_metrics=None),
                          model_config=replace(mc, prompt_format=prompter.format), runtime=rt,
                          data=opts.get("data"), allow_overlap=getattr(opts.get("data"), "allow_overlap", False))
        reference[name] = _scored(result)
        del loaded
    write_json(path, {"reference": reference, "parameters": parameters})
    return Prepared(reference, parameters)


def _cells(prep: Prepared, ctx: Context) -> list[Cell]:
    data: OwnData = ctx.options.inputs
    return grid_cells(ctx.out, ctx.runs, ctx.options.sweep, ctx.options.seeds, default_rank=data.params.rank,
                      attacks=ctx.options.attacks)


def _run_cell(prep: Prepared, cell: Cell, ctx: Context) -> dict:
    from ..core import MethodConfig, unlearn

    data: OwnData = ctx.options.inputs
    method, kind, rank = parse_run_spec(cell.spec)
    point, s = cell.info["sweep"], cell.info["seed"]
    lr = data.adapter_lr if kind != "full" and data.adapter_lr is not None else data.train.lr
    train = replace(data.train, lr=lr, seed=ctx.seed + s)  # seeds vary the unlearning: order, pairing, refusals
    train = replace(train, **{k: v for k, v in point.items() if k in TRAIN_SWEEP})  # a swept lr is absolute
    model = data.model if isinstance(data.model, (str, Path)) else copy.deepcopy(data.model)
    evaluation = replace(data.evaluation, initial_metrics=prep.reference["target"]["metrics"])
    unlearned, run = unlearn(model, data.forget, data.retain or None,
                             method=MethodConfig(method, **{k: v for k, v in point.items() if k in METHOD_SWEEP}),
                             tokenizer=data.tokenizer, train=train,
                             params=replace(data.params, kind=kind, rank=rank or data.params.rank),
                             evaluation=evaluation, out_dir=cell.run_dir, save=False,
                             resume=ctx.resume and (cell.run_dir / "checkpoint").exists(),
                             overwrite=True, progress=ctx.progress, **data.unlearn_options)
    record = run.to_dict()
    if ctx.options.attacks and run.status == "ok":
        record["attacks"] = _attack(unlearned, data, ctx)
    if "(" in method:  # the report names the run as it was asked for, options included
        record["method"] = method
    record["cell"] = dict(cell.info)
    return record


def _attack(model, data: OwnData, ctx: Context) -> dict:
    """The cell's unlearned model under the chosen attacks; the retain model (when given) under the same attacks
    is the control, the starting model full recovery."""
    from ..attacks import attack

    opts = data.unlearn_options
    attacks = ctx.options.attacks
    tokenizer = data.tokenizer if data.tokenizer is not None else data.model
    return attack(model, data.forget, list(attacks), attack_options=attacks, retain=list(data.retain) or None,
                  retain_model=data.retain_model, target_model=data.model, tokenizer=tokenizer,
                  model_config=opts.get("model_config"), data=opts.get("data"), runtime=opts.get("runtime"),
                  max_new_tokens=data.evaluation.max_new_tokens)["attacks"]


def _summarize(prep: Prepared, runs: list, ctx: Context) -> dict:
    data: OwnData = ctx.options.inputs
    target, semantic = prep.reference["target"], data.evaluation.semantic
    model = str(Path(data.model).resolve()) if isinstance(data.model, (str, Path)) else type(data.model).__name__
    return {
        "model": {"kind": model, "parameters": prep.parameters, "path": model},
        "data": {"forget": len(data.forget), "retain": len(data.retain),
                 **{f"eval_{s.name}": len(s.records) for s in data.evaluation.sets},
                 **({"holdout": len(data.evaluation.holdout)} if data.evaluation.holdout else {})},
        "settings": {"unlearn": asdict(data.train), "adapter_lr": data.adapter_lr, "params": asdict(data.params),
                     "max_new_tokens": data.evaluation.max_new_tokens},
        "sweep": ctx.options.sweep, "seeds": ctx.options.seeds, "inputs_sha256": ctx.options.identity,
        "reference": {name: ref["metrics"] for name, ref in prep.reference.items()},
        "reference_samples": {name: ref["samples"] for name, ref in prep.reference.items()},
        "aggregates_over": target["aggregates_over"],
        "set_roles": target["roles"],
        "metrics_unavailable": target["unavailable"],
        "embedding_model": getattr(semantic, "embed_name", None),
        "nli_model": getattr(getattr(semantic, "judge", None), "name", None),
    }


OWN_DATA = Scenario(
    name=NAME, key="own", version=VERSION,
    summary="your own model and records (lethe bench --model M --forget F): methods x sweep x seeds, compared",
    sizes=(SIZE,), default_runs=("GA+GD", "NPO+GD", "SimNPO+GD"),
    prepare=_prepare, cells=_cells, run_cell=_run_cell, summarize=_summarize, report="qa",
    options=OwnDataOptions,
    fingerprint=("identity",), check=_check, demo=False,
)

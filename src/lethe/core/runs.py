"""The core: ``finetune``, ``unlearn`` and ``evaluate``, configured by typed dataclasses.

It knows models, data, methods, the training loop and evaluation; it knows no scenario. Scenarios,
the CLI and :mod:`lethe.api` build these configs and call these three functions.

    >>> import lethe
    >>> model, run = lethe.unlearn("models/target", "forget10.jsonl", "retain90.jsonl",  # doctest: +SKIP
    ...                            method="NPO(beta=0.2)+KL", train=lethe.TrainConfig(epochs=5, lr=1e-5))
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..data.sources import load_records
from ..engine.loop import TrainConfig, TrainResult, train as train_loop
from ..engine.runtime import RuntimeConfig
from ..engine.select import Selection
from ..engine.tasks import FinetuneTask, require_positions
from ..evaluation.evidence import downstream_metrics, membership_aucs
from ..evaluation.suite import EvalResult, EvalSet, aggregate, evaluate_sets
from ..model.load import is_adapter_dir, position_limit
from ..model.lora import ParamsConfig
from ..model.save import save_model
from ..objectives.altpo import CACHE_FILE as ALTERNATES_FILE
from ..objectives.method import check_fixed_width, parse_method
from ..util.errors import LetheError
from ..util.log import get as get_logger
from ..util.rundir import check_output, claim, remove_temporaries, replacing
from .audit import records_sha256, weights_sha256
from .configs import ADAPTER_LR, AuditConfig, DataConfig, EvalConfig, MethodConfig, ModelConfig, UnlearnRun
from .conventions import Convention, get_convention
from .job import KEEP_CHECKPOINT, UnlearnJob, UnlearnPlan, drop_checkpoint
from .preparation import can_share_prefix, is_main_process, prepare, reference_requests, run_record, tokenizer_for_text

LOG = get_logger("core")


# The public face of `lethe finetune`: one keyword per option a user may set.
def finetune(model, records, *, tokenizer=None, train: TrainConfig | None = None,
             model_config: ModelConfig | None = None, data: DataConfig | None = None, out_dir=None,
             resume: bool = False, overwrite: bool = False, progress: bool = True, desc: str = "finetune",
             runtime: RuntimeConfig | None = None, keep_checkpoint: str = "never") -> tuple[Any, TrainResult]:
    """Fine-tune ``model`` (object or directory) on ``records`` (any form :func:`load_records` reads).

    Returns (model, TrainResult). With ``out_dir`` the model is saved there (safetensors, with its
    prompt format) and per-epoch checkpoints in ``OUT.work`` make ``resume=True`` continue a killed run;
    an existing ``out_dir`` is refused unless ``resume`` or ``overwrite``.
    """
    dc, mc = data or DataConfig(), model_config or ModelConfig()
    out = check_output(out_dir) if out_dir else None
    tokenizer = tokenizer_for_text(model, tokenizer, mc, [records])
    records = load_records(records, fields=dc.fields, tokenizer=tokenizer, chunk_tokens=dc.chunk_tokens, split=dc.split)
    if not records:
        raise LetheError("nothing to fine-tune on: the records are empty")
    rt = runtime or RuntimeConfig()
    train = train or TrainConfig()
    if out is None:
        return _finetune_locked(model, records, tokenizer, train, mc, rt, None, None, resume, progress, desc)
    work = out.with_name(out.name + ".work")
    with claim(work, ("checkpoint", "checkpoint.old", "steps.jsonl"), resume=resume, overwrite=overwrite,
               command=desc):
        remove_temporaries(out.parent, names=(out.name,))
        with replacing(out.parent, (out.name,), resume=resume, overwrite=overwrite,
                       aside=f".lethe-replaced-{out.name}"):  # the earlier model comes back if this run fails
            result = _finetune_locked(model, records, tokenizer, train, mc, rt, out, work, resume, progress, desc)
            drop_checkpoint(work, keep_checkpoint)
            return result


# The locked body of finetune: its options pass through unchanged.
def _finetune_locked(model, records, tokenizer, train, mc, rt, out, work, resume, progress, desc):
    model, prompter, _ = prepare(model, tokenizer, mc, rt)
    task = FinetuneTask(prompter, records, max_length=mc.max_length, fused_head=rt.fused_head,
                        share_prefix=can_share_prefix(rt))
    require_positions(task.examples, "training", position_limit(model))
    record = {**run_record(train, prompter, mc, rt), "data_sha256": records_sha256(records)}
    if work is not None:
        record["model_sha256"] = weights_sha256(model.state_dict())  # --resume refuses another starting model
    result = train_loop(model, lengths=task.lengths, step_fn=task, config=train, run_dir=work, resume=resume,
                        progress=progress, desc=desc, runtime=rt, run_config=record)
    if out is not None and is_main_process():
        summary = {"history": result.history, "cost": result.cost.to_dict(), "config": asdict(train),
                   "prompt_format": prompter.format.to_dict()}
        save_model(model, prompter.tokenizer, out, prompter.format, extra_json={"lethe_finetune.json": summary})
    return model, result


# The public face of `lethe eval`: one keyword per option a user may set.
def evaluate(model, sets: Sequence[EvalSet], *, tokenizer=None, config: EvalConfig | None = None,
             model_config: ModelConfig | None = None, runtime: RuntimeConfig | None = None,
             progress: bool = False, allow_overlap: bool = False, data: DataConfig | None = None) -> EvalResult:
    """Score ``model`` on evaluation sets; adds MU, FE and (given the retain model's values) FQ. ``progress``: a
    line per finished set with elapsed time and ETA. Sets given as sources without ``fields`` are read with
    ``data.fields``."""
    cfg, rt = config or EvalConfig(), runtime or RuntimeConfig()
    sets = [s.resolve((data or DataConfig()).fields) for s in sets]
    cfg = replace(cfg, sets=sets)
    cfg.check_metrics()
    if cfg.holdout and not allow_overlap:
        _refuse_holdout_overlap(cfg.holdout, {s_.name: s_.records for s_ in sets if s_.role == "forget"})
    model, prompter, _ = prepare(model, tokenizer, model_config, rt)
    with rt.autocast():
        result = evaluate_sets(model, prompter, sets, **{**cfg.suite_kwargs(),
                                                         "reference": reference_requests(cfg, model, prompter)},
                               progress=progress)
    aggregate(result, retain_model_tr=cfg.retain_model_tr)
    with rt.autocast():
        result.metrics.update(downstream_metrics(model, prompter, cfg))
    return result


# The public face of `lethe unlearn`: one keyword per option a user may set. Its body checks every option
# before any weights load, then hands one plan to UnlearnJob.
def unlearn(model, forget, retain=None, *, method: Any = "GA+GD", tokenizer=None,
            params: ParamsConfig | str = "full", train: TrainConfig | None = None,
            evaluation: EvalConfig | None = None, audit: AuditConfig | None = None,
            model_config: ModelConfig | None = None, data: DataConfig | None = None, out_dir=None,
            save: bool = True, merge: bool = False, resume: bool = False, overwrite: bool = False,
            epoch_hook: Callable | None = None, progress: bool = True,
            runtime: RuntimeConfig | None = None, extra_record: Mapping | None = None,
            convention: str | Convention = "paper", reference_model=None,
            pad_to: int | None = None, select=None, keep_checkpoint: str = "never") -> tuple[Any, UnlearnRun]:
    """Unlearn ``forget`` from ``model`` with ``method``, evaluating per epoch.

    ``method``: ``"NPO(beta=0.2)+KL"``, a :class:`MethodConfig`, a :class:`Method`, a loss function or
    :class:`Loss` (forget only), or a ``(forget, regularizer)`` pair. ``params``: ``"full"``, ``"lora"``,
    ``"fila"`` or a :class:`ParamsConfig`; without ``train`` an adapter trains at lr 1e-4, full fine-tuning at
    1e-5. ``runtime``: device, precision, attention, checkpointing for
    every model call (:class:`lethe.engine.runtime.RuntimeConfig`). A run whose loss stops being finite ends with
    ``status="diverged"`` and a message, keeping what it measured. ``epoch_hook(epoch, model) ->
    {"metrics": {...}, "stop": bool}`` adds metrics and may end training early (the EL/MA rule);
    ``extra_record`` (what configures the hook) joins the run's recorded options. ``convention``
    (:mod:`lethe.core.conventions`: ``paper``, ``closer-look``, ``tofu``, ``flat``, ``ihl-fila``,
    ``knowledge-unlearning``) reproduces a released code's losses, batch layout and evaluation limit;
    options given explicitly win, and ParamsConfig fields are taken from it where left at their defaults.
    ``keep_checkpoint``: ``never`` (default: the resumable checkpoint is deleted once the run has written
    everything; a failed run keeps it) or ``last``. ``select`` (:class:`lethe.engine.select.Selection`, or a
    criterion string such as ``"fe"``): keep the best epoch's model by it in ``model/`` (the last epoch's in
    ``last/``), recorded in ``run.selected``.
    ``pad_to``: every training batch padded to this width (default: the convention's); a loss that averages
    over padded positions (KL over all positions, ME with padding) needs one. ``reference_model``: θ_ref for the
    methods that compare against one (NPO, DPO, KL, SimNPO's none):
    by default the model as this call receives it; continual unlearning with a *fixed* reference passes
    the model from before the first request (it is used in place, frozen, and never saved with the result).
    With ``out_dir``: ``model/`` (a plain transformers dir for full or ``merge=True``, else a peft
    adapter for the original base model), ``run.json`` and ``audit.json``. The directory is locked for
    the run; one holding an earlier run is refused unless ``resume`` (continue its checkpoint, which
    must have been made with the same options, model and data) or ``overwrite`` (delete it first).
    """
    # Validate method and options before loading weights: user errors surface in seconds.
    conv = get_convention(convention)
    defaults = conv.loss_options
    m = method.build(defaults) if isinstance(method, MethodConfig) else \
        parse_method(method, defaults=defaults) if isinstance(method, (str, tuple)) else parse_method(method)
    pcfg = params if isinstance(params, ParamsConfig) else ParamsConfig(kind=params)
    pcfg = _with_convention_params(pcfg, conv)
    train = train or (TrainConfig(lr=ADAPTER_LR) if pcfg.kind != "full" else TrainConfig())
    ev, au = evaluation or EvalConfig(), audit or AuditConfig()
    mc, dc = model_config or ModelConfig(), data or DataConfig()
    for s in ev.sets:  # a set given as a file or dataset takes this run's field names
        s.resolve(dc.fields)
    if ev.limit is None and conv.eval_limit is not None:
        ev = replace(ev, limit=conv.eval_limit)
    ev.check_metrics()
    pad_to = pad_to if pad_to is not None else conv.pad_to
    check_fixed_width(m, pad_to)
    select = select if isinstance(select, Selection) else Selection(select or "last")
    if keep_checkpoint not in KEEP_CHECKPOINT:
        raise LetheError(f"--keep-checkpoint: expected one of {', '.join(KEEP_CHECKPOINT)}, got {keep_checkpoint!r}")
    LOG.debug("method %s; parameters %s; training %s", m.record(), pcfg.kind, asdict(train))
    if select.active and not (ev.sets or ev.holdout):
        raise LetheError(f"--select-by {select.by}: it reads per-epoch metrics, and this run evaluates nothing "
                         "(give evaluation sets, and do not pass --eval-at none)")
    if select.active and ev.every == 0:
        raise LetheError(f"--select-by {select.by}: it compares epochs, but --eval-every 0 scores none between the "
                         "start and the end")
    if pad_to is not None and pad_to > mc.max_length:
        mc = replace(mc, max_length=pad_to)  # the released code's max length
    if isinstance(model, (str, Path)) and is_adapter_dir(model) and pcfg.kind != "full" and not merge:
        raise LetheError(f"{model} is a peft adapter directory: a new {pcfg.kind} adapter saved on top of it would "
                         "name no base model that loads alone. Unlearn its merged model (lethe unlearn ... --merge "
                         "when it was made), or pass --merge now to save a plain model")
    run_dir = check_output(out_dir) if out_dir else None
    tokenizer = tokenizer_for_text(model, tokenizer, mc, [forget, retain, au.holdout])
    read = dict(fields=dc.fields, tokenizer=tokenizer, chunk_tokens=dc.chunk_tokens, split=dc.split)
    forget = load_records(forget, **read)
    retain = load_records(retain, **read) if not _empty_sequence(retain) else []  # no retain set: []
    holdout = load_records(au.holdout, **read) if au.holdout is not None else None
    if not forget:
        raise LetheError("the forget set is empty")
    if not dc.allow_overlap:
        _refuse_overlap(forget, retain)
        for hold in (holdout, ev.holdout):
            _refuse_holdout_overlap(hold, {"forget": forget, "retain": retain})
    if retain and train.retain_per_forget > len(retain):
        raise LetheError(f"--retain-per-forget {train.retain_per_forget}: the retain set has only {len(retain)} "
                         "record(s); each forget example is paired with that many distinct retain examples")
    warnings = _utility_overlap(forget, ev.sets)
    rt = runtime or RuntimeConfig()
    lock = claim(run_dir, RUN_OUTPUTS, resume=resume, overwrite=overwrite, command=f"unlearn {m.name}") \
        if run_dir is not None else nullcontext()
    with lock:
        record = {**dict(extra_record or {}), **({"convention": conv.record()} if conv.name != "paper" else {}),
                  **({"pad_to": pad_to} if pad_to != conv.pad_to else {})}
        plan = UnlearnPlan(method=m, params=pcfg, train=train, evaluation=ev, audit=au, model_config=mc, runtime=rt,
                           run_dir=run_dir, warnings=warnings, save=save, merge=merge, resume=resume,
                           epoch_hook=epoch_hook, progress=progress, record=record, pad_to=pad_to,
                           reference_model=reference_model, select=select, keep_checkpoint=keep_checkpoint)
        return UnlearnJob(plan, model, tokenizer, forget, retain, holdout).run()


def _with_convention_params(pcfg: ParamsConfig, conv) -> ParamsConfig:
    """A convention's FILA settings, for the fields the caller left at their defaults."""
    defaults = ParamsConfig()
    changes = {k: v for k, v in conv.params.items() if getattr(pcfg, k) == getattr(defaults, k)}
    return replace(pcfg, **changes) if changes else pcfg


def _empty_sequence(x) -> bool:
    return isinstance(x, (list, tuple)) and not x


# What an earlier run leaves in its directory (a fresh run there needs --resume or --overwrite).
RUN_OUTPUTS = ("run.json", "audit.json", "model", "checkpoint", "checkpoint.old", "steps.jsonl", "logs", "attacks.json",
               "last", ".lethe-best", ALTERNATES_FILE)


def _refuse_overlap(forget, retain) -> None:
    from ..data.records import shared_records

    shared = shared_records(forget, retain)
    if shared:
        i, j = shared[0]
        raise LetheError(f"the forget and retain sets share {len(shared)} record(s) (forget record {i} is retain "
                         f"record {j}): the method would push the same data both ways. Remove them from the retain "
                         "set, or pass --allow-overlap (DataConfig(allow_overlap=True)) if that is intended")


def _refuse_holdout_overlap(holdout, sets: Mapping[str, Sequence]) -> None:
    """A holdout set is data the model never saw: sharing records with the forget or retain set makes the
    membership test compare a set with itself."""
    from ..data.records import shared_records

    for name, records in sets.items():
        shared = shared_records(list(holdout or []), list(records or []))
        if shared:
            i, j = shared[0]
            raise LetheError(f"--holdout shares {len(shared)} record(s) with the {name} set (holdout record {i} is "
                             f"{name} record {j}): held-out records must be ones the model never saw. Pass "
                             "--allow-overlap (DataConfig(allow_overlap=True)) if that is intended")


def _utility_overlap(forget, sets) -> list[str]:
    from ..data.records import shared_records

    out = []
    for s_ in sets:
        if not s_.forget and (shared := shared_records(s_.records, forget)):
            out.append(f"evaluation set '{s_.name}' shares {len(shared)} record(s) with the forget set: its scores "
                       "measure forgetting as well as utility")
    return out


@torch.no_grad()
def retain_model_references(retain_model, sets: Sequence[EvalSet], *, tokenizer=None,
                            config: EvalConfig | None = None, model_config: ModelConfig | None = None,
                            runtime: RuntimeConfig | None = None) -> tuple[Sequence[float] | None, dict[str, float]]:
    """What the unlearned model is compared against, from one load and one evaluation of the retain model:
    its per-item truth ratios on the forget set (FQ) and, when ``config.holdout`` is set, its AUC per
    membership attack (PrivLeak). Evidence the comparison does not need (memorization, lm-eval) is skipped."""
    forget = [s_ for s_ in sets if s_.forget]
    if not forget:
        raise LetheError("a retain model is used for FQ, which needs a forget set to score")
    cfg = config or EvalConfig()
    # what the comparison reads: the forget truth ratios (FQ) and, with a holdout, the attacks the user chose
    selection = cfg.selection()
    attacks = tuple(m.name for m in selection.of_scope("membership")) if cfg.holdout else ()
    wanted = (("TR",) if "FQ" in selection else ()) + attacks
    if cfg.metrics is not None and not wanted:
        return None, {}  # neither FQ nor an attack was asked for: the retain model is not scored
    cfg = replace(cfg, sets=forget, retain_model_tr=None, retain_model_auc=None, memorization=False,
                  verbmem_texts=None, knowmem=None, lm_eval_tasks=(), metrics=None if cfg.metrics is None else wanted)
    res = evaluate(retain_model, forget, tokenizer=tokenizer, config=cfg, model_config=model_config, runtime=runtime)
    return res.per_item.get(f"{forget[0].name}/TR_values"), membership_aucs(res.metrics)


def retain_model_truth_ratios(retain_model, sets: Sequence[EvalSet], *, tokenizer=None,
                              config: EvalConfig | None = None, model_config: ModelConfig | None = None,
                              runtime: RuntimeConfig | None = None):
    """The retain model's per-item truth ratios on the forget set (what FQ compares against)."""
    return retain_model_references(retain_model, sets, tokenizer=tokenizer, config=config, model_config=model_config,
                                   runtime=runtime)[0]

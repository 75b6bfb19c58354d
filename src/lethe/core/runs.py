"""The core: ``finetune``, ``unlearn`` and ``evaluate``, configured by typed dataclasses.

It knows models, data, methods, the training loop and evaluation; it knows no scenario. Scenarios,
the CLI and :mod:`lethe.api` build these configs and call these three functions.

    >>> import lethe
    >>> model, run = lethe.unlearn("models/target", "forget10.jsonl", "retain90.jsonl",  # doctest: +SKIP
    ...                            method="NPO(beta=0.2)+KL", train=lethe.TrainConfig(epochs=5, lr=1e-5))
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..data.prompt import Prompter, PromptFormat, resolve_format
from ..data.readers import DEFAULT_FIELDS, Fields
from ..data.sources import is_text_source, load_records
from ..engine.loop import TrainConfig, TrainResult, train as train_loop
from ..engine.runtime import RuntimeConfig
from ..engine.tasks import FinetuneTask, LossData, Streams, UnlearnTask
from ..evaluation.evidence import downstream_metrics, membership_aucs, scored_forget_records
from ..evaluation.metric_registry import select_metrics
from ..evaluation.mia import ATTACKS
from ..evaluation.suite import EvalResult, EvalSet, Semantic, aggregate, available_needs, check_selection, evaluate_sets
from ..model.load import base_reference, is_adapter_dir, load_model, load_tokenizer, saved_prompt_format
from ..model.lora import AdapterReference, ParamsConfig, apply_params, save_unlearned
from ..model.save import save_model
from ..objectives.method import Method, check_fixed_width, parse_method
from ..util.errors import DivergenceError, LetheError
from ..util.io import crash_point, write_json
from ..util.progress import note
from ..util.rundir import check_output, claim, remove_temporaries, replacing
from ..util.validation import bounded, check_ranges
from .audit import records_sha256
from .conventions import Convention, get_convention


@dataclass(frozen=True)
class ModelConfig:
    """How the model is prompted and read.

    ``prompt_format``: ``auto`` (the format saved with the model; else the tokenizer's chat template
    when it has one; else plain), ``chat``, ``plain``, or a template with ``{question}``.
    """

    prompt_format: str | PromptFormat = "auto"
    system_prompt: str | None = None
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)  # chat template arguments (date_string, ...)
    max_length: int = bounded(512, int, 2)
    trust_remote_code: bool = False
    base_model: str | None = None  # the base of a peft adapter directory (default: the one its config names)

    def __post_init__(self):
        check_ranges(self)


@dataclass(frozen=True)
class DataConfig:
    """How records are read: field names (``Fields``), plain-text window size, the split of a DatasetDict."""

    fields: Fields = DEFAULT_FIELDS
    chunk_tokens: int = bounded(200, int, 2)
    split: str | None = None
    allow_overlap: bool = False  # forget and retain may share records (else an error)

    def __post_init__(self):
        check_ranges(self)


@dataclass(frozen=True)
class MethodConfig:
    """A method and its options, e.g. ``MethodConfig("NPO+KL", forget_options={"beta": 0.2})``."""

    method: Any = "GA+GD"
    alpha: float | None = bounded(None, float, 0, optional=True)
    gamma: float | None = bounded(None, float, 0, optional=True)
    forget_options: Mapping[str, Any] = field(default_factory=dict)
    regularizer_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_ranges(self)

    def build(self, defaults: Mapping[str, Mapping[str, Any]] | None = None) -> Method:
        """The method; ``defaults`` (per loss name) sit under the options given here or in the string."""
        return parse_method(self.method, alpha=self.alpha, gamma=self.gamma,
                            forget_options=dict(self.forget_options) or None,
                            regularizer_options=dict(self.regularizer_options) or None, defaults=defaults)


@dataclass
class EvalConfig:
    """What is scored: the starting model (epoch 0) and the final one when ``at`` says so (default both),
    and every ``every``-th epoch between (0: none; default 1, or 0 when ``at`` is empty: ``at=()`` alone
    means no evaluation at all)."""

    sets: Sequence[EvalSet] = ()
    every: int | None = bounded(None, int, 0, optional=True, option="--eval-every")  # 0: none between start and end
    at: Sequence[str] = ("start", "end")             # also score the starting model, and the final one
    per_epoch: str = "full"                          # between start and end: full, or fast (no generation)
    max_new_tokens: int = bounded(48, int, 1)
    limit: int | None = bounded(None, int, 1, optional=True, option="--eval-limit")
    truth_ratio: str = "tofu"
    batch_size: int = bounded(32, int, 1, option="eval batch_size")  # likelihood scoring
    generation_batch_size: int | None = bounded(None, int, 1, optional=True, option="--generation-batch-size")
    n_samples: int = bounded(3, int, 0, option="eval n_samples")  # generations kept per set for the report
    semantic: Semantic | None = None
    metrics: Sequence[str] | None = None             # metric names (lethe.evaluation.metric_registry); None: defaults
    retain_model_tr: Sequence[float] | None = None   # the retain model's forget truth ratios, for FQ
    initial_metrics: dict | None = None              # the caller already scored the starting model
    holdout: Sequence | None = None                  # records never trained on: membership-inference AUCs
    mia_k: float = bounded(0.4, float, 0, 1, low_open=True, option="--mia-k")  # Min-K% share (MUSE: 40 %)
    retain_model_auc: dict | None = None             # the retain model's AUC per attack, for PrivLeak
    reference_model: Any = None                      # the `reference` attack's model (same tokenizer), never trained
    memorization: bool = False                       # forget set: exact memorization and extraction strength
    count_end_token: bool = False                    # EM, ES and the attacks count the answer's end token
    verbmem_texts: Sequence | None = None            # forget texts for MUSE's VerbMem
    verbmem_prefix: int = bounded(32, int, 1, option="--verbmem-prefix")
    verbmem_tokens: int = bounded(128, int, 1, option="--verbmem-tokens")
    knowmem: Mapping[str, Sequence] | None = None    # {"forget": QA, "retain": QA} for MUSE's KnowMem
    knowmem_shots: int = bounded(3, int, 0, option="--knowmem-shots")
    lm_eval_tasks: Sequence[str] = ()                # lm-evaluation-harness tasks, scored at start and end
    lm_eval_dir: str | None = None                   # more task YAMLs
    lm_eval_limit: int | None = bounded(None, int, 1, optional=True, option="--lm-eval-limit")

    def __post_init__(self):
        check_ranges(self)
        self.at = tuple(self.at)
        if self.every is None:
            self.every = 1 if self.at else 0
        if not set(self.at) <= {"start", "end"}:
            raise LetheError(f"--eval-at: expected start, end, both or none, got {', '.join(self.at)}")
        if self.per_epoch not in ("full", "fast"):
            raise LetheError(f"--eval-per-epoch: expected full or fast, got {self.per_epoch!r}")
        if self.truth_ratio not in ("tofu", "tofu-utils"):
            raise LetheError(f"--truth-ratio: expected tofu or tofu-utils, got {self.truth_ratio!r}")
        if self.metrics is not None:
            self.metrics = tuple(self.metrics)
            select_metrics(self.metrics)  # an unknown name fails here, before any model work

    def selection(self):
        return select_metrics(self.metrics, memorization=self.memorization)

    def check_metrics(self, *, retain_model: bool | None = None, reference: bool | None = None) -> None:
        """Explicitly named metrics whose inputs or models are missing fail before any model work.
        ``retain_model`` / ``reference``: whether FQ's retain model and the reference attack's model will be
        there (default: whether they are)."""
        has_retain = self.retain_model_tr is not None if retain_model is None else retain_model
        has_reference = self.reference_model is not None if reference is None else reference
        check_selection(self.selection(), available_needs(
            semantic=self.semantic, holdout=self.holdout, reference=True if has_reference else None,
            verbmem_texts=self.verbmem_texts, knowmem=self.knowmem, retain_model_tr=() if has_retain else None,
            has_forget=any(s_.forget for s_ in self.sets)))

    def suite_kwargs(self) -> dict:
        return {"batch_size": self.batch_size, "generation_batch_size": self.generation_batch_size,
                "max_new_tokens": self.max_new_tokens, "eval_limit": self.limit,
                "truth_ratio": self.truth_ratio, "semantic": self.semantic, "n_samples": self.n_samples,
                "metrics": self.selection(), "holdout": self.holdout, "mia_k": self.mia_k,
                "retain_model_auc": self.retain_model_auc, "reference": self.reference_model,
                "verbmem_texts": self.verbmem_texts,
                "verbmem_prefix": self.verbmem_prefix, "verbmem_tokens": self.verbmem_tokens,
                "knowmem": self.knowmem, "knowmem_shots": self.knowmem_shots, "count_end_token": self.count_end_token}


@dataclass
class AuditConfig:
    """``audit.json``: held-out records for the Min-K% membership signal, the request's text, thresholds."""

    holdout: Any = None
    include_text: bool = False
    thresholds: dict | None = None


@dataclass
class UnlearnRun:
    """One unlearning run, serialisable to the ``runs[]`` entry of results.json."""

    method: str
    params: str
    epochs: list[dict] = field(default_factory=list)
    cost: dict = field(default_factory=dict)
    status: str = "ok"
    message: str | None = None
    samples: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    aggregates_over: dict = field(default_factory=dict)
    unavailable: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    selected: dict = field(default_factory=dict)  # the epoch whose model was kept (--select-by), and why

    def to_dict(self) -> dict:
        return asdict(self)


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def prepare(model, tokenizer=None, model_config: ModelConfig | None = None, runtime: RuntimeConfig | None = None):
    """(model, prompter, model path or None): the model loaded if given as a path and placed by the
    runtime policy (device, weight dtype, checkpointing), the tokenizer bound to the prompt format."""
    mc, rt = model_config or ModelConfig(), runtime or RuntimeConfig()
    rt.init_distributed()
    path = str(model) if isinstance(model, (str, Path)) else None
    if path is not None:
        tokenizer = tokenizer or load_tokenizer(path, trust_remote_code=mc.trust_remote_code,
                                                base_model=mc.base_model)
    if tokenizer is None:
        raise LetheError("a tokenizer is needed when the model is passed as an object")
    saved = saved_prompt_format(path) if path is not None else None
    prompter = Prompter(tokenizer, resolve_format(mc.prompt_format, tokenizer, saved, mc.system_prompt,
                                                  mc.template_kwargs))
    if path is not None:
        model = load_model(path, dtype=rt.weight_dtype, trust_remote_code=mc.trust_remote_code,
                           attn_implementation=rt.attn_implementation, base_model=mc.base_model)
        path = base_reference(path)  # what a saved adapter names as its base: loads from any directory
    return rt.place(model), prompter, path


def _run_record(train: TrainConfig, prompter: Prompter, mc: ModelConfig, rt: RuntimeConfig) -> dict:
    """The options every training run records (and ``--resume`` compares)."""
    return {**asdict(train), "prompt_format": prompter.format.to_dict(), "max_length": mc.max_length,
            "runtime": rt.describe()}


def _tokenizer_for_text(model, tokenizer, model_config, sources) -> Any:
    """Plain text is cut into token windows and ids are range-checked: load the tokenizer early for it."""
    if tokenizer is None and isinstance(model, (str, Path)) and any(is_text_source(s) for s in sources):
        return load_tokenizer(model, trust_remote_code=(model_config or ModelConfig()).trust_remote_code)
    return tokenizer


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
    tokenizer = _tokenizer_for_text(model, tokenizer, mc, [records])
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


def _can_share_prefix(rt: RuntimeConfig) -> bool:
    """Whether training may run a batch's shared prompt prefix once: it rides on the KV cache, which gradient
    checkpointing turns off, and one process only (sharded forwards would gather twice per micro-batch)."""
    import torch.distributed as dist

    return not rt.gradient_checkpointing and not (dist.is_available() and dist.is_initialized()
                                                  and dist.get_world_size() > 1)


def _finetune_locked(model, records, tokenizer, train, mc, rt, out, work, resume, progress, desc):
    from .audit import weights_sha256

    model, prompter, _ = prepare(model, tokenizer, mc, rt)
    task = FinetuneTask(prompter, records, max_length=mc.max_length, fused_head=rt.fused_head,
                        share_prefix=_can_share_prefix(rt))
    record = {**_run_record(train, prompter, mc, rt), "data_sha256": records_sha256(records)}
    if work is not None:
        record["model_sha256"] = weights_sha256(model.state_dict())  # --resume refuses another starting model
    result = train_loop(model, lengths=task.lengths, step_fn=task, config=train, run_dir=work, resume=resume,
                        progress=progress, desc=desc, runtime=rt, run_config=record)
    if out is not None and is_main_process():
        summary = {"history": result.history, "cost": result.cost.to_dict(), "config": asdict(train),
                   "prompt_format": prompter.format.to_dict()}
        save_model(model, prompter.tokenizer, out, prompter.format, extra_json={"lethe_finetune.json": summary})
    return model, result


def evaluate(model, sets: Sequence[EvalSet], *, tokenizer=None, config: EvalConfig | None = None,
             model_config: ModelConfig | None = None, runtime: RuntimeConfig | None = None,
             progress: bool = False, allow_overlap: bool = False) -> EvalResult:
    """Score ``model`` on evaluation sets; adds MU, FE and (given the retain model's values) FQ. ``progress``: a
    line per finished set with elapsed time and ETA."""
    cfg, rt = config or EvalConfig(), runtime or RuntimeConfig()
    cfg = replace(cfg, sets=sets)
    cfg.check_metrics()
    if cfg.holdout and not allow_overlap:
        _refuse_holdout_overlap(cfg.holdout, {s_.name: s_.records for s_ in sets if s_.role == "forget"})
    model, prompter, _ = prepare(model, tokenizer, model_config, rt)
    with rt.autocast():
        result = evaluate_sets(model, prompter, sets, **{**cfg.suite_kwargs(),
                                                         "reference": _reference_requests(cfg, model, prompter)},
                               progress=progress)
    aggregate(result, retain_model_tr=cfg.retain_model_tr)
    with rt.autocast():
        result.metrics.update(downstream_metrics(model, prompter, cfg))
    return result


def _reference_requests(cfg: EvalConfig, model, prompter):
    """The reference attack's model behind a request layer of its own, on the evaluated model's device: its
    token statistics are computed once and serve every evaluation of a run."""
    from ..evaluation.requests import ModelRequests

    ref = cfg.reference_model
    if ref is None or isinstance(ref, ModelRequests):
        return ref
    _check_same_vocabulary(ref, model, "--mia-reference")
    ref.to(next(model.parameters()).device).eval()
    return ModelRequests(ref, prompter, batch_size=cfg.batch_size)


def _check_same_vocabulary(reference, model, what: str) -> None:
    """A reference model scores the same token ids as ``model``: it must share its vocabulary."""
    ref_vocab, vocab = reference.get_input_embeddings().num_embeddings, model.get_input_embeddings().num_embeddings
    if ref_vocab != vocab:
        raise LetheError(f"{what}: the reference model's vocabulary has {ref_vocab} entries, the model's {vocab}; "
                         "it must use the same tokenizer")


def _restrict_trainable(model, method: Method) -> None:
    """Losses that choose their parameters (RMU) narrow what the parameterisation left trainable."""
    for loss in method.losses:
        chosen = loss.trainable(model)
        if chosen is None:
            continue
        keep = {id(p) for p in chosen}
        for p in model.parameters():
            if p.requires_grad and id(p) not in keep:
                p.requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            raise LetheError(f"loss '{loss.name}' left no trainable parameter (its choice does not meet the "
                             "parameterisation's: with LoRA, target modules inside the layers it trains)")


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
    ``"fila"`` or a :class:`ParamsConfig`. ``runtime``: device, precision, attention, checkpointing for
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
    train = train or TrainConfig()
    ev, au = evaluation or EvalConfig(), audit or AuditConfig()
    mc, dc = model_config or ModelConfig(), data or DataConfig()
    if ev.limit is None and conv.eval_limit is not None:
        ev = replace(ev, limit=conv.eval_limit)
    ev.check_metrics()
    pad_to = pad_to if pad_to is not None else conv.pad_to
    check_fixed_width(m, pad_to)
    from ..engine.select import Selection

    select = select if isinstance(select, Selection) else Selection(select or "last")
    if keep_checkpoint not in KEEP_CHECKPOINT:
        raise LetheError(f"--keep-checkpoint: expected one of {', '.join(KEEP_CHECKPOINT)}, got {keep_checkpoint!r}")
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
    tokenizer = _tokenizer_for_text(model, tokenizer, mc, [forget, retain, au.holdout])
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
        return _unlearn_locked(model, forget, retain, holdout, m, tokenizer, pcfg, train, ev, au, mc, rt, run_dir,
                               warnings, save, merge, resume, epoch_hook, progress, record, pad_to,
                               reference_model, select, keep_checkpoint)


def _given_reference(reference, model):
    """A caller's θ_ref, frozen, on the trained model's device and dtype; it must share the vocabulary."""
    _check_same_vocabulary(reference, model, "reference_model")
    p = next(model.parameters())
    return reference.to(device=p.device, dtype=p.dtype).eval().requires_grad_(False)


def _with_convention_params(pcfg: ParamsConfig, conv) -> ParamsConfig:
    """A convention's FILA settings, for the fields the caller left at their defaults."""
    defaults = ParamsConfig()
    changes = {k: v for k, v in conv.params.items() if getattr(pcfg, k) == getattr(defaults, k)}
    return replace(pcfg, **changes) if changes else pcfg


def _empty_sequence(x) -> bool:
    return isinstance(x, (list, tuple)) and not x


# What an earlier run leaves in its directory (a fresh run there needs --resume or --overwrite).
RUN_OUTPUTS = ("run.json", "audit.json", "model", "checkpoint", "checkpoint.old", "steps.jsonl", "logs", "attacks.json",
               "last", ".lethe-best")


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


def _unlearn_locked(model, forget, retain, holdout, m, tokenizer, pcfg, train, ev, au, mc, rt, run_dir, warnings,
                    save, merge, resume, epoch_hook, progress, extra_record, pad_to, reference_model=None,
                    select=None, keep_checkpoint: str = "never"):
    model, prompter, base_path = prepare(model, tokenizer, mc, rt)
    streams = Streams(prompter, forget, retain, seed=train.seed, max_length=mc.max_length)
    before_sha = membership_before = None
    # The audit's membership evidence is the evaluation's own report at the start and at the end when it scores
    # the same forget records against the same holdout (the usual --holdout run): not scored twice.
    same_sets = bool(holdout) and _scores_audit_sets(ev, forget, holdout)
    reuse_before = same_sets and not resume and ev.initial_metrics is None and "start" in ev.at
    reuse_after = same_sets and "end" in ev.at
    reports: dict[int, dict] = {}  # epoch -> the evaluation's membership report
    if run_dir is not None:
        from .audit import membership_signal, weights_sha256

        before_sha = weights_sha256(model.state_dict())  # recorded, so --resume refuses another starting model
        if holdout and not reuse_before:
            from ..util.progress import Stages

            stages = Stages(progress, "audit", len(forget) + len(holdout))
            with rt.autocast():
                membership_before = membership_signal(model, prompter, forget, holdout, k=ev.mia_k)
            stages.step(f"membership before unlearning ({len(forget)} forget, {len(holdout)} holdout records)",
                        len(forget) + len(holdout))
    with rt.autocast():
        model, pinfo = apply_params(model, pcfg, forget_examples=streams["forget"],
                                    retain_examples=streams["retain"] if pcfg.kind == "fila" else (),
                                    pad_id=prompter.pad_id, seed=train.seed, progress=progress)
        loss_data = LossData(forget, retain, streams, prompter.pad_id, train.seed)
        for loss in m.losses:
            loss.setup(model, loss_data)
    _restrict_trainable(model, m)
    task = UnlearnTask(prompter, m, forget, retain, seed=train.seed, retain_per_forget=train.retain_per_forget,
                       share_prefix=_can_share_prefix(rt),
                       streams=streams, max_length=mc.max_length, pad_to=pad_to, fused_head=rt.fused_head)
    if reference_model is not None:
        reference_model = _given_reference(reference_model, model)
    if task.needs_reference_model:
        from ..model.reference import FrozenCopy

        task.reference = FrozenCopy(reference_model, copy=False) if reference_model is not None else \
            FrozenCopy(model) if pcfg.kind == "full" else AdapterReference(model)
    run = UnlearnRun(method=m.name, params=pcfg.kind, warnings=list(warnings),
                     config={**_run_record(train, prompter, mc, rt), **m.record(), "params": asdict(pcfg),
                             "model_sha256": before_sha,
                             "data": {"forget_sha256": records_sha256(forget), "forget_records": len(forget),
                                      "retain_sha256": records_sha256(retain) if retain else None,
                                      "retain_records": len(retain)}, **extra_record})
    if hasattr(epoch_hook, "bind"):
        epoch_hook.bind(prompter)  # a hook that encodes records does it in the run's prompt format
    device = next(model.parameters()).device
    with rt.autocast():
        tokens_ref = task.cache_reference(reference_model if reference_model is not None else model, device)

    reference_requests = _reference_requests(ev, model, prompter)

    keeper = _BestEpoch(select, run_dir, resume) if select is not None and select.active else None

    def score(epoch, mdl):
        with rt.autocast():
            out = _score(epoch, mdl)
        if keeper is not None:
            start = run.epochs[0].get("metrics") if run.epochs and run.epochs[0].get("epoch") == 0 else None
            keeper.offer(epoch, (out or {}).get("metrics", {}), start, mdl)
        return out

    scored = {"eval": None, "hook": None}  # the last epochs evaluated and measured by the hook
    eval_cost = {"evaluation_s": 0.0, "generation_s": 0.0, "generated_tokens": 0}

    def _score(epoch, mdl, final=False):
        out: dict = {"metrics": {}}
        periodic = epoch > 0 and ev.every > 0 and epoch % ev.every == 0
        end = (final or epoch >= train.epochs) and "end" in ev.at
        if ev.sets and ((epoch == 0 and "start" in ev.at) or periodic or end):
            full = end or epoch == 0 or ev.per_epoch == "full"
            res = evaluate_sets(mdl, prompter, ev.sets, **{**ev.suite_kwargs(), "reference": reference_requests},
                                generate=full, progress=progress, title=f"{m.name}: evaluation after epoch {epoch}")
            note(progress, f"{m.name}: evaluated {sum(len(s_.records) for s_ in ev.sets)} items "
                           f"({', '.join(s_.name for s_ in ev.sets)}) after epoch {epoch} "
                           f"in {res.timing['evaluation_s']:.1f} s")
            crash_point("evaluation")
            for k in ("evaluation_s", "generation_s", "generated_tokens"):
                eval_cost[k] += res.timing.get(k, 0)
            for part in ("requests_s", "metrics_s"):  # seconds per request kind and per metric, summed over epochs
                into = eval_cost.setdefault(part, {})
                for name, seconds in res.timing.get(part, {}).items():
                    into[name] = into.get(name, 0.0) + seconds
            if res.timing.get("generation_batch"):
                eval_cost["generation_batch"] = max(eval_cost.get("generation_batch", 0),
                                                    res.timing["generation_batch"])
            aggregate(res, retain_model_tr=ev.retain_model_tr)
            if full:
                run.samples, run.aggregates_over, run.unavailable = res.samples, res.aggregates_over, res.unavailable
            out["metrics"].update(res.metrics)
            if res.membership is not None:
                reports[epoch] = res.membership
            if full and ev.lm_eval_tasks:
                out["metrics"].update(downstream_metrics(mdl, prompter, ev))
            scored["eval"] = epoch if full else scored["eval"]
        if epoch_hook is not None:
            hook_kwargs = {}
            if getattr(epoch_hook, "reads_membership", False) and epoch in reports:
                # the evaluation just scored forget vs holdout: a stopping rule on the same records reads it
                hook_kwargs["membership"] = {"report": reports[epoch], "forget": scored_forget_records(ev),
                                             "holdout": list(ev.holdout), "k": ev.mia_k}
            extra = epoch_hook(epoch, mdl, **hook_kwargs) or {}
            out["metrics"].update(extra.get("metrics", {}))
            out["stop"] = bool(extra.get("stop", False))
            scored["hook"] = epoch
        return out if (ev.sets or epoch_hook) else {}

    if ev.initial_metrics is not None:
        run.epochs.append({"epoch": 0, "metrics": dict(ev.initial_metrics)})
    elif (ev.sets and "start" in ev.at) or epoch_hook:
        first = score(0, model)
        first.pop("stop", None)
        run.epochs.append({"epoch": 0, **first})
    cost = None
    try:
        result = train_loop(model, lengths=task.lengths, step_fn=task, config=train, run_dir=run_dir,
                            on_epoch_end=score, resume=resume, progress=progress, desc=m.name, runtime=rt,
                            run_config=run.config)
        run.epochs += list(result.history)
        cost = result.cost
        last = run.epochs[-1]["epoch"] if run.epochs else 0
        missing_eval = ev.sets and "end" in ev.at and scored["eval"] != last
        missing_hook = epoch_hook is not None and scored["hook"] != last
        if last > 0 and (missing_eval or missing_hook):
            # stopped early between evaluations, or resumed after the last checkpoint: the final samples and
            # metrics come from these (the saved) weights
            with rt.autocast():
                extra = _score(last, model, final=True)
            run.epochs[-1].setdefault("metrics", {}).update(extra.get("metrics", {}))
    except DivergenceError as e:
        run.status, run.message = "diverged", str(e)
        run.epochs += list(getattr(e, "history", []))
        cost = getattr(e, "cost", None)
    if cost is not None:
        cost.tokens_forward_only += tokens_ref
        cost.tokens_fisher = pinfo["fisher_tokens"]
        run.cost = cost.to_dict()
        run.cost["reference_model_bytes"] = getattr(task.reference, "nbytes", 0)
        if eval_cost["evaluation_s"]:  # what this process spent scoring (a resumed run: since it resumed)
            run.cost["evaluation"] = {**eval_cost, "generation_tokens_per_s": eval_cost["generated_tokens"] /
                                      eval_cost["generation_s"] if eval_cost["generation_s"] else None}
    task.reference = None  # the unlearned model never carries the starting weights along
    if keeper is not None and run.status == "ok":
        last_model_dir = run_dir / "last" if run_dir is not None else None
        run.selected = keeper.restore(model, run.epochs, save_last=(
            (lambda: save_unlearned(model, prompter.tokenizer, last_model_dir, merge=merge, base_model_path=base_path,
                                    prompt_format=prompter.format)) if save and last_model_dir is not None
            and is_main_process() else None))
    membership_after = None
    if (reuse_before or reuse_after) and run.epochs:
        from .audit import membership_signal_of

        last = run.selected.get("epoch", run.epochs[-1]["epoch"])  # the epoch whose model is saved
        if reuse_before:
            membership_before = membership_signal_of(reports[0], ev.mia_k) if 0 in reports else None
        if reuse_after and last in reports:
            membership_after = membership_signal_of(reports[last], ev.mia_k)
    if run_dir is not None and is_main_process():  # under `accelerate launch` one process writes
        with rt.autocast():
            _write_run(run_dir, model, prompter, run, forget, holdout, before_sha, membership_before,
                       au, save, merge, base_path, membership_after, ev.mia_k)
        if run.status == "ok":
            drop_checkpoint(run_dir, keep_checkpoint)
    return model, run


KEEP_CHECKPOINT = ("never", "last")


def drop_checkpoint(run_dir, keep: str) -> None:
    """After a run has written everything, its resumable state (trainable weights and optimizer moments,
    several times the model for full fine-tuning) is deleted unless ``keep`` is ``last``. A failed or
    interrupted run never reaches here: its checkpoint stays for ``--resume``."""
    import shutil

    if keep not in KEEP_CHECKPOINT:
        raise LetheError(f"--keep-checkpoint: expected one of {', '.join(KEEP_CHECKPOINT)}, got {keep!r}")
    if keep == "never" and run_dir is not None:
        for name in ("checkpoint", "checkpoint.old"):
            shutil.rmtree(Path(run_dir) / name, ignore_errors=True)


class _BestEpoch:
    """The best epoch's trainable weights by a :class:`~lethe.engine.select.Selection`, kept on the CPU and, with a
    run directory, in ``RUN/.lethe-best`` (so ``--resume`` knows it)."""

    def __init__(self, select, run_dir, resume: bool):
        import json

        self.select, self.dir = select, (Path(run_dir) / ".lethe-best" if run_dir is not None else None)
        self.epoch, self.value, self.weights = None, None, None
        if resume and self.dir is not None and (self.dir / "best.json").exists():
            from safetensors.torch import load_file

            saved = json.loads((self.dir / "best.json").read_text(encoding="utf-8"))
            self.epoch, self.value = saved["epoch"], saved["value"]
            self.weights = load_file(str(self.dir / "weights.safetensors"))

    def offer(self, epoch: int, metrics: dict, start: dict | None, model) -> None:
        value = self.select.value(epoch, metrics, start)
        if value is None or (self.value is not None and value <= self.value):
            return
        self.epoch, self.value = epoch, value
        self.weights = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters()
                        if p.requires_grad}
        if self.dir is not None and is_main_process():
            import json

            from safetensors.torch import save_file

            self.dir.mkdir(exist_ok=True)
            save_file(self.weights, str(self.dir / "weights.safetensors"))
            (self.dir / "best.json").write_text(json.dumps({"epoch": epoch, "value": value}), encoding="utf-8")

    def restore(self, model, epochs: list, save_last=None) -> dict:
        """Put the best epoch's weights into ``model`` (the last epoch's saved first with ``save_last``)."""
        last = epochs[-1]["epoch"] if epochs else 0
        record = {"by": self.select.by, "last_epoch": last}
        if self.select.mu_floor is not None:
            record["mu_floor"] = self.select.mu_floor
        if self.epoch is None:
            return {**record, "epoch": last, "reason": "no epoch met the criterion: the last epoch is kept"}
        record.update(epoch=self.epoch, value=self.value)
        if self.epoch != last:
            if save_last is not None:
                save_last()
                record["last_model"] = "last"
            params = dict(model.named_parameters())
            with torch.no_grad():
                for n, w in self.weights.items():
                    params[n].copy_(w.to(params[n].device, params[n].dtype))
        if self.dir is not None and is_main_process():
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)
        return record


# the suite audit.json records: mia.membership_report without a reference model
AUDIT_ATTACKS = tuple(a for a in ATTACKS if a != "reference")


def _scores_audit_sets(ev: EvalConfig, forget, holdout) -> bool:
    """Whether the evaluation's membership report is the audit's: same forget records, same holdout, and every
    attack the audit records selected (an explicit --metrics may leave some out)."""
    scored = scored_forget_records(ev)
    return (scored is not None and ev.holdout is not None and scored == list(forget)
            and list(ev.holdout) == list(holdout) and set(AUDIT_ATTACKS) <= set(ev.selection().names))


def _write_run(run_dir: Path, model, prompter, run: UnlearnRun, forget, holdout, before_sha,
               membership_before, au: AuditConfig, save: bool, merge: bool, base_path, membership_after=None,
               mia_k: float = 0.4) -> None:
    from .audit import membership_signal, saved_weights_sha256, weights_sha256, write_audit

    if holdout and membership_after is None:
        membership_after = membership_signal(model, prompter, forget, holdout, k=mia_k)
    model_dir = None
    if save and run.status == "ok":
        model_dir = save_unlearned(model, prompter.tokenizer, run_dir / "model", merge=merge,
                                   base_model_path=base_path, prompt_format=prompter.format)
        after_sha = saved_weights_sha256(model_dir)
    else:
        after_sha = weights_sha256({k: v for k, v in model.state_dict().items() if "lethe_reference" not in k})
    write_json(run_dir / "run.json", run.to_dict())
    write_audit(run_dir, run=run, forget=forget, before_sha=before_sha, after_sha=after_sha,
                include_text=au.include_text, membership_before=membership_before,
                membership_after=membership_after, thresholds=au.thresholds, model_dir=model_dir)


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

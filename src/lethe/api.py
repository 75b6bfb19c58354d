"""Python API. The CLI only parses arguments and calls these.

>>> import lethe
>>> results = lethe.demo(size="smoke", out="runs/smoke")          # doctest: +SKIP
>>> results["runs"][0]["epochs"][-1]["metrics"]["MU"]              # doctest: +SKIP
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .data.readers import read_qa
from .engine.loop import TrainConfig, TrainResult, train
from .engine.tasks import FinetuneTask, UnlearnTask
from .errors import DivergenceError, LetheError
from .evaluation.suite import MU9_SETS, EvalResult, EvalSet, aggregate, evaluate_sets
from .io import write_json
from .model.load import load_model, load_tokenizer, save_model
from .model.lora import AdapterReference, ParamsConfig, apply_params, save_unlearned
from .objectives.method import Method, parse_method


def is_text_file(path: str | Path) -> bool:
    """Text sequences (.npy, .txt, .csv, or JSON/JSONL records with a 'text' field) rather than QA."""
    path = Path(path)
    if path.suffix.lower() in (".npy", ".txt", ".csv", ".md"):
        return True
    if path.suffix.lower() in (".json", ".jsonl") and path.exists():
        head = path.read_text(encoding="utf-8", errors="replace")[:4096]
        return '"text"' in head and '"question"' not in head and '"prompt"' not in head
    return False


def _records(data, tokenizer=None, chunk_tokens: int = 200) -> list:
    """QA or text records from a list or a file (the format is detected from the file)."""
    if data is None:
        return []
    if isinstance(data, (str, Path)):
        if is_text_file(data):
            from .data.readers import read_text

            vocab = len(tokenizer) if tokenizer is not None else None
            return read_text(data, tokenizer=tokenizer, chunk_tokens=chunk_tokens, vocab_size=vocab)
        return read_qa(data)
    return list(data)


def _model_and_tokenizer(model, tokenizer):
    if isinstance(model, (str, Path)):
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_model(model)
    if tokenizer is None:
        raise LetheError("a tokenizer is needed when the model is passed as an object")
    return model, tokenizer


def finetune(model, records, *, tokenizer=None, config: TrainConfig | None = None, out_dir=None,
             resume: bool = False, progress: bool = True, desc: str = "finetune") -> tuple[Any, TrainResult]:
    """Fine-tune ``model`` (object or directory) on QA ``records`` (list or file path).

    Returns (model, TrainResult). With ``out_dir`` the model is saved there (safetensors) and
    per-epoch checkpoints make ``resume=True`` continue a killed run.

    >>> model, result = lethe.finetune("models/base", "data/full.jsonl", out_dir="models/target")  # doctest: +SKIP
    """
    records = _records(records)
    model, tokenizer = _model_and_tokenizer(model, tokenizer)
    config = config or TrainConfig()
    task = FinetuneTask(tokenizer, records)
    work = Path(out_dir).with_name(Path(out_dir).name + ".work") if out_dir else None
    result = train(model, lengths=task.lengths, step_fn=task, config=config, run_dir=work, resume=resume,
                   progress=progress, desc=desc)
    if out_dir and _is_main_process():
        save_model(model, tokenizer, out_dir)
        write_json(Path(out_dir) / "lethe_finetune.json",
                   {"history": result.history, "cost": result.cost.to_dict(), "config": asdict(config)})
    return model, result


def evaluate(model, sets: Sequence[EvalSet], *, tokenizer=None, retain_model_tr: Sequence[float] | None = None,
             batch_size: int = 32, max_new_tokens: int = 48, eval_limit: int | None = None,
             truth_ratio: str = "tofu", semantic=None) -> EvalResult:
    """Score ``model`` on evaluation sets; adds MU, FE and (given the retain model's values) FQ.

    >>> res = lethe.evaluate("models/target", [EvalSet("forget", recs, "qa", forget=True)])  # doctest: +SKIP
    """
    model, tokenizer = _model_and_tokenizer(model, tokenizer)
    result = evaluate_sets(model, tokenizer, sets, batch_size=batch_size, max_new_tokens=max_new_tokens,
                           eval_limit=eval_limit, truth_ratio=truth_ratio, semantic=semantic)
    aggregate(result, retain_model_tr=retain_model_tr)
    return result


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

    def to_dict(self) -> dict:
        return asdict(self)


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def unlearn(model, forget, retain=None, *, method: str | Method = "GA+GD", tokenizer=None,
            config: TrainConfig | None = None, params: ParamsConfig | str = "full", seed: int = 0, out_dir=None,
            eval_sets: Sequence[EvalSet] = (), retain_model_tr: Sequence[float] | None = None,
            eval_kwargs: dict | None = None, alpha: float | None = None, gamma: float | None = None,
            save: bool = True, merge: bool = False, resume: bool = False, epoch_hook=None,
            holdout=None, include_text: bool = False, thresholds: dict | None = None,
            initial_metrics: dict | None = None, retain_per_forget: int = 1, eval_every: int = 1,
            progress: bool = True) -> tuple[Any, UnlearnRun]:
    """Unlearn ``forget`` from ``model`` with ``method`` (e.g. ``"GA+GD"``), evaluating per epoch.

    ``params`` is ``"full"``, ``"lora"``, ``"fila"`` or a :class:`ParamsConfig` (rank, alpha,
    target roles, Fisher options). ``eval_sets`` are scored before training (epoch 0) and after
    every epoch; a run whose loss stops being finite ends with ``status="diverged"`` and a
    message, keeping what it measured. ``epoch_hook(epoch, model) -> {"metrics": {...}, "stop": bool}``
    adds metrics and may end training early (the EL/MA stopping rule). With ``out_dir`` the
    unlearned model is saved to
    ``out_dir/model``: a plain transformers dir (full, or ``merge=True``) or a peft adapter that
    applies to the original base model, and ``out_dir/audit.json`` records the request (hashes,
    not text, unless ``include_text``), weight hashes before/after, the evidence (forget metrics,
    ``thresholds`` of a stopping rule, Min-K% membership AUC against ``holdout`` records) and cost.
    ``initial_metrics`` replaces the epoch-0 evaluation when the caller scored the starting model.
    ``retain_per_forget`` sets how many retain examples each forget example is paired with (the
    regularizer's batch is that many times the forget batch). ``eval_every=k`` scores ``eval_sets``
    after every k-th epoch and the last one (``epoch_hook`` still runs every epoch).

    >>> model, run = lethe.unlearn("models/target", "forget10.jsonl", "retain90.jsonl", method="GA+GD")  # doctest: +SKIP
    """
    # Validate data and method before loading model weights: user errors surface in seconds.
    m = method if isinstance(method, Method) else parse_method(method, alpha=alpha, gamma=gamma)
    if eval_every < 1 or retain_per_forget < 1:
        raise LetheError(f"eval_every and retain_per_forget must be at least 1 (got {eval_every}, {retain_per_forget})")
    pcfg = params if isinstance(params, ParamsConfig) else ParamsConfig(kind=params)
    pcfg.validate()
    base_path = str(model) if isinstance(model, (str, Path)) else None
    if tokenizer is None and isinstance(model, (str, Path)) and any(
            isinstance(d, (str, Path)) and is_text_file(d) for d in (forget, retain)):
        tokenizer = load_tokenizer(model)  # plain text is cut into token windows, ids are range-checked
    forget, retain = _records(forget, tokenizer), _records(retain, tokenizer)
    if not forget:
        raise LetheError("the forget set is empty")
    model, tokenizer = _model_and_tokenizer(model, tokenizer)
    config = config or TrainConfig()
    run = UnlearnRun(method=m.name, params=pcfg.kind, config={**asdict(config), "alpha": m.alpha, "gamma": m.gamma,
                                                              "seed": seed, "params": asdict(pcfg),
                                                              "retain_per_forget": retain_per_forget})
    task = UnlearnTask(tokenizer, m, forget, retain, seed=seed, retain_per_forget=retain_per_forget)
    holdout = _records(holdout, tokenizer) if holdout is not None else None
    before_sha = None
    membership_before = None
    if out_dir:
        from .audit import membership_signal, weights_sha256

        before_sha = weights_sha256(model.state_dict())
        if holdout:
            membership_before = membership_signal(model, tokenizer, forget, holdout)
    model, pinfo = apply_params(model, pcfg, forget_examples=task.forget, retain_examples=task.retain,
                                pad_id=tokenizer.pad_token_id, seed=seed, progress=progress)
    if "ref_retain_logits" in m.needs:
        from .model.reference import FrozenCopy

        task.reference = FrozenCopy(model) if pcfg.kind == "full" else AdapterReference(model)
    device = next(model.parameters()).device
    tokens_ref = task.cache_reference(model, device)
    eval_kwargs = dict(eval_kwargs or {})
    utility_sets = eval_kwargs.pop("utility_sets", MU9_SETS)  # for aggregate(), not evaluate_sets()

    def score(epoch, mdl):
        out: dict = {"metrics": {}}
        if eval_sets and (epoch % eval_every == 0 or epoch >= config.epochs):
            res = evaluate_sets(mdl, tokenizer, eval_sets, **eval_kwargs)
            aggregate(res, retain_model_tr=retain_model_tr, utility_sets=utility_sets)
            run.samples, run.aggregates_over, run.unavailable = res.samples, res.aggregates_over, res.unavailable
            out["metrics"].update(res.metrics)
        if epoch_hook is not None:
            extra = epoch_hook(epoch, mdl) or {}
            out["metrics"].update(extra.get("metrics", {}))
            out["stop"] = bool(extra.get("stop", False))
        return out if (eval_sets or epoch_hook) else {}

    if initial_metrics is not None:  # the caller already scored the starting model (shared by many runs)
        run.epochs.append({"epoch": 0, "metrics": dict(initial_metrics)})
    elif eval_sets or epoch_hook:
        first = score(0, model)
        first.pop("stop", None)
        run.epochs.append({"epoch": 0, **first})
    run_dir = Path(out_dir) if out_dir else None
    try:
        result = train(model, lengths=task.lengths, step_fn=task, config=config, run_dir=run_dir,
                       on_epoch_end=score, resume=resume, progress=progress, desc=m.name)
        run.epochs += [h for h in result.history]
        cost = result.cost
    except DivergenceError as e:
        run.status, run.message = "diverged", str(e)
        run.epochs += list(getattr(e, "history", []))
        cost = getattr(e, "cost", None)
    if cost is not None:
        cost.tokens_forward_only += tokens_ref
        cost.tokens_fisher = pinfo["fisher_tokens"]
        run.cost = cost.to_dict()
        run.cost["reference_model_bytes"] = getattr(task.reference, "nbytes", 0)
    task.reference = None  # the unlearned model never carries the starting weights along
    if run_dir is not None and _is_main_process():  # under `accelerate launch` one process writes
        from .audit import membership_signal, saved_weights_sha256, weights_sha256, write_audit

        membership_after = membership_signal(model, tokenizer, forget, holdout) if holdout else None
        model_dir = None
        if save and run.status == "ok":
            model_dir = save_unlearned(model, tokenizer, run_dir / "model", merge=merge, base_model_path=base_path)
            after_sha = saved_weights_sha256(model_dir)
        else:
            after_sha = weights_sha256({k: v for k, v in model.state_dict().items() if "lethe_reference" not in k})
        write_json(run_dir / "run.json", run.to_dict())
        write_audit(run_dir, run=run, forget=forget, retain=retain, before_sha=before_sha, after_sha=after_sha,
                    include_text=include_text, membership_before=membership_before,
                    membership_after=membership_after, thresholds=thresholds, model_dir=model_dir)
    return model, run


def demo(size: str = "small", out: str | Path = "runs/demo", *, methods: Sequence[str] | None = None,
         seed: int = 0, forget_percent: int = 10, resume: bool = True, progress: bool = True,
         embedding_model: str | None = None, nli_model: str | None = None) -> dict:
    """Run the offline fictitious-author benchmark end to end; write results.json and report.md.

    >>> results = lethe.demo(size="smoke", out="runs/smoke")  # doctest: +SKIP
    """
    from .scenarios.fictitious import run_demo

    return run_demo(size=size, out=Path(out), methods=methods, seed=seed, forget_percent=forget_percent,
                    resume=resume, progress=progress, embedding_model=embedding_model, nli_model=nli_model)


def extraction_stop_hook(tokenizer, forget, validation, *, heldout=None, model=None, n: int = 10,
                         min_epochs: int = 1, thresholds=None):
    """An ``epoch_hook`` for :func:`unlearn` applying the EL/MA stopping rule to text sequences.

    Thresholds are the mean EL_n and MA of ``model`` on ``validation`` (sequences it never
    trained on), measured now unless given. Without ``validation`` the hook only measures and
    never stops. Returns (hook, thresholds or None).
    """
    from .engine.stopping import ExtractionThresholds, should_stop
    from .evaluation.memorization import extraction_likelihood, memorization_accuracy, perplexity
    from .data.prompt import text_token_ids
    from .evaluation.metrics import mean

    def ids(records):
        return [text_token_ids(tokenizer, r) for r in records]

    forget_ids = ids(forget)
    held_ids = ids(heldout) if heldout else None
    if thresholds is None and validation:
        val_ids = ids(validation)
        thresholds = ExtractionThresholds(el=mean(extraction_likelihood(model, tokenizer, val_ids, n=n)),
                                          ma=mean(memorization_accuracy(model, tokenizer, val_ids)))

    def hook(epoch, mdl):
        el = mean(extraction_likelihood(mdl, tokenizer, forget_ids, n=n))
        ma = mean(memorization_accuracy(mdl, tokenizer, forget_ids))
        metrics = {f"forget/EL{n}": el, "forget/MA": ma}
        if held_ids:
            metrics["heldout/PPL"] = perplexity(mdl, tokenizer, held_ids)
        stop = thresholds is not None and should_stop(epoch, el, ma, thresholds, min_epochs)
        return {"metrics": metrics, "stop": stop}

    return hook, thresholds


def demo_memorized(size: str = "small", out: str | Path = "runs/memorized", *, runs: Sequence[str] | None = None,
                   seed: int = 0, requests: int = 1, resume: bool = True, progress: bool = True) -> dict:
    """Memorized-sequence unlearning (IHL seed Table 1 style), offline.

    >>> results = lethe.demo_memorized(size="smoke", out="runs/mem")  # doctest: +SKIP
    """
    from .scenarios.memorized import run_memorized

    return run_memorized(size=size, out=Path(out), runs=runs, seed=seed, requests=requests, resume=resume,
                         progress=progress)


def report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> list[Path]:
    """Write ``report.html`` (self-contained, plots embedded) and ``report.md`` for run directories.

    >>> lethe.report(["runs/demo", "runs/memorized"], out="runs/report")  # doctest: +SKIP
    """
    from .report import render_memorized_report, render_report
    from .report_html import write_html

    loaded = []
    for d in run_dirs:
        f = Path(d) / "results.json"
        if not f.exists():
            raise LetheError(f"{f}: file not found (a run directory holds results.json)")
        try:
            loaded.append((str(d), json.loads(f.read_text())))
        except json.JSONDecodeError as e:
            raise LetheError(f"{f}: not valid JSON ({e.msg} at line {e.lineno})") from e
    out = Path(out) if out else Path(run_dirs[0])
    html_path = write_html(loaded, out / "report.html")
    md_parts = [(render_memorized_report if res.get("scenario") == "memorized-sequences" else render_report)(res)
                for _, res in loaded]
    from .io import write_text

    md_path = write_text(out / "report.md", "\n\n".join(md_parts))
    return [html_path, md_path]

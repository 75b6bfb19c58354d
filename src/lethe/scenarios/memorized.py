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
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

from ..data.records import TextRecord
from ..engine.loop import TrainConfig
from ..engine.stopping import meets_threshold
from . import check_methods, console as make_console, finished, run_dir_for, scenario_dir

NAME = "memorized-sequences"
VERSION = 2  # 2: EL_n counts as the paper does (generated n-grams found in the truth)
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


SETTINGS = {
    "smoke": MemorizedSettings("smoke", 600, 24, 6, TrainConfig(epochs=6, lr=3e-3, batch_size=16, micro_batch_size=16,
                                                                checkpoint=False),
                               TrainConfig(epochs=2, lr=1e-3, batch_size=8, micro_batch_size=8, warmup_epochs=0,
                                           schedule="constant", checkpoint=False), lora_rank=4, forget_size=8,
                               validation_size=8),
    "small": MemorizedSettings("small", 1500, 48, 10, TrainConfig(epochs=12, lr=2e-3, batch_size=16, micro_batch_size=16,
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


def run_memorized(*, size: str, out: Path, runs: Sequence[str] | None, seed: int, requests: int,
                  resume: bool, progress: bool) -> dict:
    from ..errors import LetheError

    if size not in SETTINGS:
        raise LetheError(f"unknown size '{size}' for the memorized scenario: expected one of {', '.join(SETTINGS)}")
    if not isinstance(requests, int) or requests < 1:
        raise LetheError(f"--requests: expected an integer >= 1, got {requests!r}")
    check_methods(runs or DEMO_RUNS, parse_run_spec)
    fingerprint = {"scenario": NAME, "scenario_version": VERSION, "size": size, "seed": seed, "requests": requests}
    with scenario_dir(out, fingerprint, resume=resume, command=f"demo {NAME}") as out:
        return _run(size=size, out=out, runs=runs, seed=seed, requests=requests, resume=resume, progress=progress)


def _run(*, size, out, runs, seed, requests, resume, progress) -> dict:
    from ..core import finetune, unlearn
    from ..data.canaries import generate_corpus
    from ..io import write_json
    from ..model.build import build_tiny_model, train_tokenizer
    from ..model.load import load_model, load_tokenizer
    from ..model.lora import ParamsConfig, merge_adapters
    from ..report import write_memorized_report
    from ..evaluation.memorization import ELConfig
    from ..workflows import extraction_stop_hook

    t0 = time.perf_counter()
    st = SETTINGS[size]
    console = make_console(progress)
    corpus = generate_corpus(n_canaries=st.forget_size * max(requests, 4), n_validation=st.validation_size,
                             repeats=st.repeats, seed=seed, background_size="smoke" if size == "smoke" else "small")
    base_dir = out / "models" / "base"
    if resume and (base_dir / "lethe_finetune.json").exists():
        tokenizer, console_msg = load_tokenizer(base_dir), f"reusing {base_dir}"
        console.print(f"[dim]{console_msg}[/dim]")
    else:
        tokenizer = train_tokenizer(corpus.training_texts(), vocab_size=st.vocab_size)
        canary_ids = _ids(tokenizer, corpus.canaries, st.max_tokens)
        train_records = ([TextRecord(token_ids=tuple(ids)) for ids in _ids(tokenizer, corpus.background)]
                         + [TextRecord(token_ids=tuple(ids)) for ids in canary_ids for _ in range(corpus.repeats)])
        console.print(f"training the base model on {len(train_records)} sequences (canaries x{corpus.repeats})")
        model = build_tiny_model(tokenizer, st.model_preset, seed=seed, max_positions=512)
        finetune(model, train_records, tokenizer=tokenizer, train=replace(st.pretrain, seed=seed),
                 out_dir=base_dir, overwrite=True, progress=progress, desc="pretrain")
    canary_ids = _ids(tokenizer, corpus.canaries, st.max_tokens)
    val_ids = _ids(tokenizer, corpus.validation, st.max_tokens)
    heldout_ids = _ids(tokenizer, corpus.held_out)
    retain = [TextRecord(token_ids=tuple(ids)) for ids in _ids(tokenizer, corpus.background)]
    order = list(range(len(canary_ids)))
    random.Random(seed).shuffle(order)
    request_sets = [[canary_ids[i] for i in order[k * st.forget_size : (k + 1) * st.forget_size]] for k in range(requests)]

    def records(id_lists):
        return [TextRecord(token_ids=tuple(ids)) for ids in id_lists]

    base = load_model(base_dir)
    # One hook per request: EL_10, MA and held-out PPL after every epoch, and the stopping rule.
    # The validation canaries (never trained on) are also the membership-inference negatives.
    hook, thresholds = extraction_stop_hook(tokenizer, records(request_sets[0]), records(val_ids),
                                            heldout=records(heldout_ids), model=base, min_epochs=st.min_epochs,
                                            membership=records(val_ids))
    hooks = [hook] + [extraction_stop_hook(tokenizer, records(ids), None, heldout=records(heldout_ids),
                                           thresholds=thresholds, min_epochs=st.min_epochs,
                                           membership=records(val_ids))[0]
                      for ids in request_sets[1:]]
    before = [h(0, base)["metrics"] for h in hooks]
    console.print(f"validation EL10 {thresholds.el:.3f} MA {thresholds.ma:.3f}; forget EL10 "
                  f"{before[0]['forget/EL10']:.3f} MA {before[0]['forget/MA']:.3f}")
    del base

    results_runs = []
    for spec in runs or DEMO_RUNS:
        method, kind = parse_run_spec(spec)
        run_dir = run_dir_for(out, method, kind)
        done = run_dir / "run.json"
        if (previous := finished(run_dir, resume)) is not None:
            results_runs.append(previous)
            continue
        console.print(f"unlearning with {method} ({kind})")
        model = load_model(base_dir)
        cfg = replace(st.unlearn, seed=seed)
        if kind != "full":
            cfg = replace(cfg, lr=cfg.lr * st.lora_lr_scale)
        per_request = []
        for k, (forget_ids, hook) in enumerate(zip(request_sets, hooks)):
            model, run = unlearn(model, records(forget_ids), retain, method=method, tokenizer=tokenizer,
                                 train=replace(cfg, seed=seed + k), params=ParamsConfig(kind=kind, rank=st.lora_rank),
                                 epoch_hook=hook, save=False, progress=progress)
            last = run.epochs[-1]["metrics"] if run.epochs else {}
            success = (run.status == "ok" and bool(run.epochs) and run.epochs[-1]["epoch"] > 0
                       and meets_threshold(last.get("forget/EL10", 1.0), last.get("forget/MA", 1.0), thresholds))
            record = run.to_dict()
            record.update({"request": k + 1, "success": success,
                           "epochs_to_success": run.epochs[-1]["epoch"] if success else None})
            per_request.append(record)
            model = merge_adapters(model)  # the next request starts from this one's result
        first = per_request[0]
        entry = {**first, "method": method, "params": kind, "requests": per_request if requests > 1 else []}
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(done, entry)
        results_runs.append(entry)
    results = {
        "scenario": NAME, "scenario_version": VERSION, "size": size, "seed": seed,
        "model": {"kind": "llama (built here)", "preset": st.model_preset, "vocab_size": len(tokenizer),
                  "path": str(base_dir)},
        "data": {"forget": st.forget_size, "requests": requests, "validation": len(val_ids),
                 "canary_tokens": st.max_tokens, "repeats": corpus.repeats, "retain_sequences": len(retain),
                 "heldout_sequences": len(heldout_ids)},
        "thresholds": asdict(thresholds),
        "settings": {"pretrain": asdict(st.pretrain), "unlearn": asdict(st.unlearn), "lora_rank": st.lora_rank,
                     "lora_lr_scale": st.lora_lr_scale, "min_epochs": st.min_epochs,
                     "el": asdict(ELConfig())},
        "reference": {"target": {**before[0], "validation/EL10": thresholds.el, "validation/MA": thresholds.ma}},
        "reference_requests": before,
        "runs": results_runs,
        "wall_time_s": time.perf_counter() - t0,
    }
    write_json(out / "results.json", results)
    write_memorized_report(results, out / "report.md")
    from ..report_html import write_html

    write_html([(str(out), results)], out / "report.html")
    return results

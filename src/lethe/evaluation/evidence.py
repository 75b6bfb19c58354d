"""The optional evidence an evaluation adds on request, each from an ``EvalConfig`` (``lethe.core``):
memorization (EM, extraction strength, VerbMem, KnowMem), downstream tasks (lm-eval) and membership
inference (AUCs forget vs holdout, PrivLeak). Each returns ``{metric: value}``, empty when not asked for."""
from __future__ import annotations

from . import metrics as M
from .downstream import run_lm_eval
from .mia import membership_report, report_metrics
from .verbatim import exact_memorization, extraction_strength, knowmem, verbmem


def scored_forget_records(cfg) -> list | None:
    """The forget set's records an evaluation scores (its first ``limit``), or None without a forget set."""
    forget = [s_ for s_ in cfg.sets if s_.forget]
    if not forget:
        return None
    return list(forget[0].records)[: cfg.limit] if cfg.limit else list(forget[0].records)


def verbatim_metrics(model, prompter, cfg) -> dict[str, float]:
    """``forget/EM``, ``forget/ExtractionStrength`` (with ``memorization``), ``verbmem/VerbMem`` and
    ``knowmem/SET`` (MUSE, × 100) for what the config names."""
    out: dict[str, float] = {}
    records = scored_forget_records(cfg)
    if cfg.memorization and records is not None:
        out["forget/EM"] = M.mean(exact_memorization(model, prompter, records))
        out["forget/ExtractionStrength"] = M.mean(extraction_strength(model, prompter, records))
    if cfg.verbmem_texts:
        out["verbmem/VerbMem"] = M.mean(verbmem(model, prompter, cfg.verbmem_texts, prefix_tokens=cfg.verbmem_prefix,
                                                continuation_tokens=cfg.verbmem_tokens))
    if cfg.knowmem:
        sets = dict(cfg.knowmem)
        examples = list(sets.get("retain") or sets.get("forget") or [])
        for name, qa in sets.items():
            qa = list(qa)[: cfg.limit] if cfg.limit else list(qa)
            # worked examples never include the question asked: taken from the retain set, past what it scores
            shots = [e for e in examples if e not in qa][: cfg.knowmem_shots]
            out[f"knowmem/{name}"] = M.mean(knowmem(model, prompter, qa, shots, shots=cfg.knowmem_shots,
                                                    max_new_tokens=cfg.max_new_tokens))
    return out


def downstream_metrics(model, prompter, cfg) -> dict[str, float]:
    """``lm_eval/TASK/METRIC`` for the configured lm-evaluation-harness tasks (empty without any)."""
    if not cfg.lm_eval_tasks:
        return {}
    return run_lm_eval(model, prompter, cfg.lm_eval_tasks, tasks_dir=cfg.lm_eval_dir, limit=cfg.lm_eval_limit)


def membership_metrics(model, prompter, cfg, keep: dict | None = None) -> dict[str, float]:
    """``mia/ATTACK_AUC`` (forget set vs ``cfg.holdout``) and, given the retain model's AUCs,
    ``mia/ATTACK_PrivLeak``; empty without a holdout set. ``keep`` (a dict) receives the full report under
    ``"report"``, for the audit to reuse."""
    records = scored_forget_records(cfg)
    if cfg.holdout is None or records is None:
        return {}
    report = membership_report(model, prompter, records, cfg.holdout, k=cfg.mia_k)
    if keep is not None:
        keep["report"] = report
    out = report_metrics(report, cfg.retain_model_auc)
    out.update({f"mia/{a}_KS_p": v["ks_p"] for a, v in report["attacks"].items()})
    out.update({f"mia/{a}_group_p": v["group_p"] for a, v in report["attacks"].items() if "group_p" in v})
    return out


def membership_aucs(metrics: dict[str, float]) -> dict[str, float]:
    """{attack: AUC} back from the ``mia/ATTACK_AUC`` entries :func:`membership_metrics` wrote."""
    return {k[len("mia/"):-len("_AUC")]: v for k, v in metrics.items() if k.startswith("mia/") and k.endswith("_AUC")}

"""Evidence read around an evaluation: the forget records it scores, downstream tasks (lm-eval, which run
through their own harness rather than the suite's request layer) and the attack AUCs back from its metrics."""
from __future__ import annotations

from .downstream import run_lm_eval


def scored_forget_records(cfg) -> list | None:
    """The forget set's records an evaluation scores (its first ``limit``), or None without a forget set."""
    forget = [s_ for s_ in cfg.sets if s_.forget]
    if not forget:
        return None
    return list(forget[0].records)[: cfg.limit] if cfg.limit else list(forget[0].records)


def downstream_metrics(model, prompter, cfg) -> dict[str, float]:
    """``lm_eval/TASK/METRIC`` for the configured lm-evaluation-harness tasks (empty without any)."""
    if not cfg.lm_eval_tasks:
        return {}
    return run_lm_eval(model, prompter, cfg.lm_eval_tasks, tasks_dir=cfg.lm_eval_dir, limit=cfg.lm_eval_limit,
                       trust_code=cfg.lm_eval_trust_code)


def membership_aucs(metrics: dict[str, float]) -> dict[str, float]:
    """{attack: AUC} back from the ``mia/ATTACK_AUC`` entries an evaluation wrote."""
    return {k[len("mia/"):-len("_AUC")]: v for k, v in metrics.items() if k.startswith("mia/") and k.endswith("_AUC")}

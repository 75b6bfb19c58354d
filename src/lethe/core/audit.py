"""Audit record of a forget request: what was asked, what was done, and the evidence it worked.

``audit.json`` holds: the request (count and sha256 of the forget records; their text only when
asked), the method and resolved config, sha256 of the weights before and after, the evidence
(forget metrics before/after, the EL/MA thresholds where they apply, a Min-K% membership signal
on forget vs held-out data), the change in utility metrics, and the cost. The unlearned model
directory carries ``lethe_audit.json`` pointing back to it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..util.io import write_json


def weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def saved_weights_sha256(model_dir: str | Path) -> str:
    """The same hash, of the tensors stored in a saved model or adapter directory."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return weights_sha256(tensors)


def records_sha256(records: Sequence) -> str:
    """A content hash of the request: canonical JSON of every record, in order."""
    h = hashlib.sha256()
    for r in records:
        d = asdict(r) if is_dataclass(r) else dict(r)
        h.update(json.dumps(d, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def membership_signal(model, prompter, forget: Sequence, holdout: Sequence, k: float = 0.4) -> dict:
    """The membership-inference suite (LOSS, zlib, Min-K%, Min-K%++) forget vs holdout, with Min-K%'s AUC
    also under ``auc_forget_vs_holdout`` (the field earlier audit records had)."""
    from ..evaluation.mia import membership_report

    return membership_signal_of(membership_report(model, prompter, forget, holdout, k=k), k)


def membership_signal_of(report: dict, k: float) -> dict:
    """The audit's membership record from a report :func:`membership_report` already computed."""
    mink = report["attacks"]["min_k"]
    return {"min_k_percent": 100 * k, "forget_mean": mink["forget_mean"], "holdout_mean": mink["holdout_mean"],
            "auc_forget_vs_holdout": mink["auc"], **report}


# Keyword-only: the audit record's fields, each optional where a run did not measure it.
def write_audit(run_dir: Path, *, run, forget: Sequence, before_sha: str, after_sha: str,
                include_text: bool = False, membership_before: dict | None = None,
                membership_after: dict | None = None, thresholds: dict | None = None,
                model_dir: Path | None = None) -> Path:
    from ..version import __version__

    first = run.epochs[0].get("metrics", {}) if run.epochs else {}
    kept = getattr(run, "selected", {}).get("epoch")  # --select-by: the epoch whose model is saved
    chosen = next((e for e in run.epochs if kept is not None and e.get("epoch") == kept), None)
    last = (chosen or (run.epochs[-1] if run.epochs else {})).get("metrics", {})
    forget_keys = sorted(k for k in set(first) | set(last) if k.startswith("forget/") and "_values" not in k)
    utility_keys = sorted(k for k in set(first) & set(last) if not k.startswith("forget/") and "_values" not in k)
    request = dict(run.config["data"])  # counts and content hashes, computed once for the run's config
    if include_text:
        request["forget_text"] = [asdict(r) if is_dataclass(r) else r for r in forget]
    audit = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "lethe_version": __version__,
        "request": request,
        "method": run.method, "params": run.params, "config": run.config, "status": run.status,
        "selected": getattr(run, "selected", {}) or None,
        "model_before_sha256": before_sha, "model_after_sha256": after_sha,
        "evidence": {
            "forget_before": {k: first.get(k) for k in forget_keys},
            "forget_after": {k: last.get(k) for k in forget_keys},
            "stopping_rule": thresholds,
            "membership_before": membership_before, "membership_after": membership_after,
        },
        "utility_change": {k: last[k] - first[k] for k in utility_keys
                           if isinstance(first.get(k), (int, float)) and isinstance(last.get(k), (int, float))},
        "cost": run.cost,
        "saved_model": str(model_dir) if model_dir else None,
    }
    path = write_json(Path(run_dir) / "audit.json", audit)
    if model_dir is not None and Path(model_dir).exists():
        write_json(Path(model_dir) / "lethe_audit.json", {"audit": str(path.resolve()), "model_sha256": after_sha})
    return path


def add_attacks(run_dir: Path, result: dict) -> Path:
    """Record attacks run on a finished run's model: RUN/attacks.json, and under ``attacks`` in audit.json, so a
    forget request's evidence says whether the forgetting survived them."""
    run_dir = Path(run_dir)
    write_json(run_dir / "attacks.json", result)
    audit_file = run_dir / "audit.json"
    if audit_file.exists():
        audit = json.loads(audit_file.read_text(encoding="utf-8"))
        audit["attacks"] = result
        write_json(audit_file, audit)
    return run_dir / "attacks.json"

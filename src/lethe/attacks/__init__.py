"""Attacks that try to bring forgotten knowledge back, each scored against a retain-model control.

An attack takes a model and returns an attacked copy (the model given is never changed), plus the forget
records to score it on. :func:`run_attacks` scores the chosen metrics on the forget records before and after
each attack, for the unlearned model and, when given, for the retain model (never trained on the forget set:
relearning also *teaches*, so the control says how much of a gain is knowledge that was only hidden) and the
target model (before unlearning: what full recovery would be).

Built in (``lethe attacks`` lists them with their options):

- ``quantize``: weight-only round-to-nearest of every linear layer inside the decoder blocks, to ``bits``
  (default 4), per output channel or per group of ``group`` input columns (default 128), symmetric or not;
  scored on the dequantised model. Zhang et al. (ICLR 2025) found unlearning updates smaller than a 4-bit
  step, so quantizing an unlearned model can restore what it forgot.
- ``relearn``: fine-tune on a seeded share (``fraction``, default 0.5) of the forget records for ``epochs``
  at ``lr`` (full fine-tuning, lr 1e-5, as MUSE's relearning), then score on the *other* records (Deeb &
  Roger: relearning some facts must not simply re-teach the ones tested).

Scores per attack and metric m (each on the records the attack scores): the attacked value, the change, the
retain model's change under the same attack, recovery = (m_attacked − m_unlearned) / (m_target −
m_unlearned) when the target is given, and OpenUnlearning's meta-evaluation robustness: quantization
Q = 1 − |m_after − m_before| / (|m_before| + |m_after|), relearning R = 1 − |Δ_unlearned − Δ_retain| /
(|Δ_unlearned| + |Δ_retain|) (1: the attack changes nothing beyond what it does to a model that never knew).
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..util.errors import LetheError
from ..util.registry import Registry


@dataclass(frozen=True)
class Attack:
    """One attack: ``apply(model, forget, options, context) -> (attacked model, records to score)``."""

    name: str
    summary: str
    defaults: Mapping[str, Any]
    apply: Callable[..., tuple[Any, list]]
    check: Callable[[dict], None] = field(default=lambda options: None)
    robustness: str = "Q"  # which meta-evaluation score applies: Q (a fixed transform) or R (training)

    def options(self, given: Mapping[str, Any] | None = None) -> dict:
        """The attack's options with ``given`` applied: unknown names and wrong types are one-line errors."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise LetheError(f"attack '{self.name}' has no option {', '.join(unknown)}; its options: "
                             + ", ".join(f"{k}={v}" for k, v in self.defaults.items()))
        out = dict(self.defaults)
        for k, v in given.items():
            out[k] = _typed(self.name, k, v, self.defaults[k])
        self.check(out)
        return out


def _typed(attack: str, key: str, value, default):
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "false"):
            return text == "true"
    elif isinstance(default, int):
        try:
            number = float(value)
            if number.is_integer():
                return int(number)
        except (TypeError, ValueError):
            pass
    elif isinstance(default, float):
        try:
            number = float(value)
            if math.isfinite(number):
                return number
        except (TypeError, ValueError):
            pass
    else:
        return value
    raise LetheError(f"attack '{attack}': option '{key}' expects {type(default).__name__}, got {value!r}")


ATTACKS: Registry[Attack] = Registry("attack")


# ---- quantize ------------------------------------------------------------------------------------------

def quantize_rtn(weight: torch.Tensor, bits: int, group: int = 0, symmetric: bool = True) -> torch.Tensor:
    """Round-to-nearest weight quantization, returned dequantised (same shape and dtype).

    Each output row is quantized per group of ``group`` input columns (0: the whole row, per channel).
    Symmetric: q = round(w / s), s = max|w| / (2^(bits-1) − 1), q in [−(2^(bits-1) − 1), 2^(bits-1) − 1].
    Asymmetric: s = (max − min) / (2^bits − 1), zero point z = round(−min / s), q = clamp(round(w / s) + z,
    0, 2^bits − 1), w' = (q − z) · s.
    """
    w = weight.detach().to(torch.float64 if weight.dtype == torch.float64 else torch.float32)
    rows, cols = w.shape
    g = cols if not group or group >= cols else group
    pad = (-cols) % g
    if pad:
        w = torch.cat([w, w.new_zeros(rows, pad)], dim=1)
    blocks = w.reshape(rows, -1, g)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = blocks.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax
        deq = torch.clamp(torch.round(blocks / scale), -qmax, qmax) * scale
    else:
        qmax = 2 ** bits - 1
        lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
        scale = (hi - lo).clamp(min=1e-12) / qmax
        zero = torch.round(-lo / scale)
        deq = (torch.clamp(torch.round(blocks / scale) + zero, 0, qmax) - zero) * scale
    out = deq.reshape(rows, -1)[:, :cols]
    return out.to(weight.dtype)


def _decoder_linears(model):
    from ..model.layers import decoder_layers

    for block in decoder_layers(model):
        for module in block.modules():
            if isinstance(module, torch.nn.Linear):
                yield module


def _check_quantize(o: dict) -> None:
    if not 2 <= o["bits"] <= 8:
        raise LetheError(f"attack 'quantize': bits must be 2..8, got {o['bits']}")
    if o["group"] < 0:
        raise LetheError(f"attack 'quantize': group must be >= 0 (0: per channel), got {o['group']}")


def _quantize(model, forget, options, context):
    attacked = copy.deepcopy(model)
    with torch.no_grad():
        for linear in _decoder_linears(attacked):
            linear.weight.copy_(quantize_rtn(linear.weight, options["bits"], options["group"], options["symmetric"]))
    return attacked, list(forget)


ATTACKS.add("quantize", Attack(
    "quantize", "weight-only round-to-nearest of the decoder's linear layers (Zhang et al. 2025), dequantised",
    {"bits": 4, "group": 128, "symmetric": True}, _quantize, _check_quantize, robustness="Q"))


# ---- relearn -------------------------------------------------------------------------------------------

def relearn_split(records: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """(records relearned on, records scored): a seeded split, at least one record on each side."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n = min(len(records) - 1, max(1, round(fraction * len(records))))
    train = sorted(order[:n])
    held = sorted(order[n:])
    return [records[i] for i in train], [records[i] for i in held]


def _check_relearn(o: dict) -> None:
    if not 0 < o["fraction"] < 1:
        raise LetheError(f"attack 'relearn': fraction must be in (0, 1), got {o['fraction']}")
    if o["epochs"] < 1 or o["batch_size"] < 1:
        raise LetheError("attack 'relearn': epochs and batch_size must be >= 1")
    if not o["lr"] > 0:
        raise LetheError(f"attack 'relearn': lr must be > 0, got {o['lr']}")


def _relearn(model, forget, options, context):
    from ..core import finetune
    from ..engine.loop import TrainConfig

    if len(forget) < 2:
        raise LetheError("attack 'relearn' needs at least two forget records (some to relearn, others to score)")
    train, held = relearn_split(forget, options["fraction"], options["seed"])
    attacked = copy.deepcopy(model)
    finetune(attacked, train, tokenizer=context["prompter"].tokenizer, progress=False,
             model_config=context.get("model_config"), runtime=context.get("runtime"),
             train=TrainConfig(epochs=options["epochs"], lr=options["lr"], batch_size=options["batch_size"],
                               micro_batch_size=options["batch_size"], warmup_epochs=0, seed=options["seed"],
                               checkpoint=False))
    return attacked, held


ATTACKS.add("relearn", Attack(
    "relearn", "fine-tune on a share of the forget records, score the rest (Deeb & Roger's split; MUSE's lr)",
    {"fraction": 0.5, "epochs": 3, "lr": 1e-5, "batch_size": 8, "seed": 0}, _relearn, _check_relearn,
    robustness="R"))


# ---- scoring --------------------------------------------------------------------------------------------

def parse_attacks(text: str | Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """``"quantize,relearn"`` and {attack: {option: value}} -> {attack: resolved options}, checked before any
    model work (unknown attacks and options, out-of-range values, an attack named twice)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise LetheError("--attacks: name at least one attack (available: " + ", ".join(ATTACKS.names()) + ")")
    out = {}
    for n in names:
        attack = ATTACKS.get(n)
        if attack.name in out:
            raise LetheError(f"--attacks: '{attack.name}' is named twice")
        out[attack.name] = attack.options((options or {}).get(attack.name))
    for n in (options or {}):
        if ATTACKS.get(n).name not in out:
            raise LetheError(f"--attack-opt: options for '{n}', which --attacks does not name")
    return out


def robustness_q(before: float, after: float) -> float:
    denom = abs(before) + abs(after)
    return 1.0 if denom == 0 else 1.0 - abs(after - before) / denom


def robustness_r(delta_unlearned: float, delta_retain: float) -> float:
    denom = abs(delta_unlearned) + abs(delta_retain)
    return 1.0 if denom == 0 else 1.0 - abs(delta_unlearned - delta_retain) / denom


def run_attacks(model, forget: Sequence, attacks: Mapping[str, Mapping[str, Any]], *, prompter, metrics,
                retain_model=None, target_model=None, score: Callable[[Any, list], dict] | None = None,
                context: Mapping[str, Any] | None = None) -> dict:
    """Every attack on ``model`` (and on ``retain_model``, the control), the metrics scored on the records each
    attack names. ``score(model, records) -> {metric: value}`` (default: the suite's forget-set metrics).
    Returns {"attacks": {name: {"options", "records", "metrics": {m: {...}}}}}; the models are not changed."""
    from ..evaluation.suite import EvalSet, evaluate_sets

    def default_score(mdl, records):
        res = evaluate_sets(mdl, prompter, [EvalSet("forget", records, "qa", role="forget")], metrics=metrics,
                            max_new_tokens=(context or {}).get("max_new_tokens", 48))
        return {k.split("/", 1)[1]: v for k, v in res.metrics.items() if k.startswith("forget/")}

    score = score or default_score
    ctx = {"prompter": prompter, **dict(context or {})}
    out = {"attacks": {}}
    for name, options in attacks.items():
        attack = ATTACKS.get(name)
        attacked, records = attack.apply(model, forget, options, ctx)
        entry = {"options": options, "records": len(records), "robustness_score": attack.robustness,
                 "metrics": {}}
        before, after = score(model, records), score(attacked, records)
        del attacked
        control = target = None
        if retain_model is not None:
            control_attacked, _ = attack.apply(retain_model, forget, options, ctx)
            control = (score(retain_model, records), score(control_attacked, records))
            del control_attacked
        if target_model is not None:
            target = score(target_model, records)
        for m in before:
            row = {"unlearned": before[m], "attacked": after[m], "change": after[m] - before[m]}
            if control is not None:
                row.update(retain=control[0][m], retain_attacked=control[1][m],
                           retain_change=control[1][m] - control[0][m])
                row["beyond_control"] = row["change"] - row["retain_change"]
            if target is not None:
                row["target"] = target[m]
                gap = target[m] - before[m]
                row["recovery"] = row["change"] / gap if abs(gap) > 1e-12 else None
            if attack.robustness == "Q":
                row["Q"] = robustness_q(before[m], after[m])
            elif control is not None:
                row["R"] = robustness_r(row["change"], row["retain_change"])
            entry["metrics"][m] = row
        out["attacks"][name] = entry
    return out


def describe() -> str:
    lines = []
    for name in ATTACKS.names():
        a = ATTACKS.get(name)
        lines.append(f"  {name:<10} {a.summary}")
        lines.append(f"  {'':<10} options: {', '.join(f'{k}={v}' for k, v in a.defaults.items())}; "
                     f"robustness score: {a.robustness}")
    return "\n".join(lines)

"""Running attacks: options parsed before any model work, every attack scored on the unlearned model and on
the controls (the retain model under the same attack, the target model before unlearning), and the
meta-evaluation's robustness scores."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..util.errors import LetheError
from .base import ATTACKS, Attack


def parse_attacks(text: str | Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None, *,
                  records: str = "qa") -> dict:
    """``"quantize,relearn"`` and {attack: {option: value}} -> {attack: resolved options}, checked before any
    model work (unknown attacks and options, out-of-range values, an attack named twice, and with ``records="text"``
    an attack that asks QA questions)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise LetheError("--attacks: name at least one attack (available: " + ", ".join(ATTACKS.names()) + ")")
    out = {}
    for n in names:
        attack = ATTACKS.get(n)
        if attack.name in out:
            raise LetheError(f"--attacks: '{attack.name}' is named twice")
        if records == "text" and not attack.text:
            usable = ", ".join(a for a in ATTACKS.names() if ATTACKS.get(a).text)
            raise LetheError(f"--attacks: '{attack.name}' asks the forget set's questions; on text sequences these "
                             f"apply: {usable}")
        out[attack.name] = attack.options((options or {}).get(attack.name))
    for n in (options or {}):
        if ATTACKS.get(n).name not in out:
            raise LetheError(f"--attack-opt: options for '{n}', which --attacks does not name")
    return out


# Below this share of the larger of the two values (and below MIN_GAP_ABS), the unlearned model did not measurably
# move away from the target on this metric, and a share of that gap recovered would be noise over almost nothing.
MIN_GAP = 0.05
MIN_GAP_ABS = 0.01


def recovery(unlearned: float, attacked: float, target: float) -> float | None:
    """(m_attacked − m_unlearned) / (m_target − m_unlearned); None when the gap is under :data:`MIN_GAP` of the
    larger value or under :data:`MIN_GAP_ABS` (nothing was forgotten on this metric, so nothing can be recovered)."""
    gap = target - unlearned
    if abs(gap) <= max(MIN_GAP * max(abs(target), abs(unlearned)), MIN_GAP_ABS):
        return None
    return (attacked - unlearned) / gap


def robustness_q(before: float, after: float) -> float:
    denom = abs(before) + abs(after)
    return 1.0 if denom == 0 else 1.0 - abs(after - before) / denom


def robustness_r(delta_unlearned: float, delta_retain: float) -> float:
    denom = abs(delta_unlearned) + abs(delta_retain)
    return 1.0 if denom == 0 else 1.0 - abs(delta_unlearned - delta_retain) / denom


def check_fields(attack: Attack, forget: Sequence) -> None:
    """An attack that reads a record field (the paraphrased question) needs it on every forget record."""
    for name in attack.needs:
        missing = [i for i, r in enumerate(forget) if not getattr(r, name, None)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise LetheError(f"attack '{attack.name}' reads each forget record's '{name}': record {missing[0]}{more} "
                             "has none")


# Keyword-only: the models each attack runs on (unlearned, control, target), how it scores, and its context.
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
        check_fields(attack, forget)
        if attack.probe is not None:
            entry, before, after, control, target = _probe(attack, model, forget, options, ctx, retain_model,
                                                           target_model)
        else:
            entry, before, after, control, target = _attack(attack, model, forget, options, ctx, retain_model,
                                                            target_model, score)
        for m in before:
            row = {"unlearned": before[m], "attacked": after[m], "change": after[m] - before[m]}
            if control is not None:
                row.update(retain=control[0][m], retain_attacked=control[1][m],
                           retain_change=control[1][m] - control[0][m])
                row["beyond_control"] = row["change"] - row["retain_change"]
            if target is not None:
                row["target"] = target[m]
                row["recovery"] = recovery(before[m], after[m], target[m])
            if attack.robustness == "Q":
                row["Q"] = robustness_q(before[m], after[m])
            elif control is not None:
                row["R"] = robustness_r(row["change"], row["retain_change"])
            entry["metrics"][m] = row
        out["attacks"][name] = entry
    return out


def _attack(attack, model, forget, options, ctx, retain_model, target_model, score):
    """An attack that changes the model or the prompts: the metrics before and after, on each model."""
    attacked = attack.apply(model, forget, options, ctx)
    records, baseline = attacked.records, attacked.baseline or attacked.records
    entry = {"options": options, "records": len(records), "robustness_score": attack.robustness, "metrics": {}}
    before, after = score(model, baseline), score(attacked.model, records)
    del attacked
    control = target = None
    if retain_model is not None:
        control_attacked = attack.apply(retain_model, forget, options, ctx)
        control = (score(retain_model, baseline), score(control_attacked.model, control_attacked.records))
        del control_attacked
    if target_model is not None:
        target = score(target_model, baseline)
    return entry, before, after, control, target


def _probe(attack, model, forget, options, ctx, retain_model, target_model):
    """A probe: its own metrics as each model outputs them and as the probe reads them, with its details."""
    before, after, details = attack.probe(model, forget, options, ctx)
    entry = {"options": options, "records": len(forget), "robustness_score": attack.robustness, "metrics": {},
             "details": {"unlearned": details}}
    control = target = None
    if retain_model is not None:
        said, read, entry["details"]["retain"] = attack.probe(retain_model, forget, options, ctx)
        control = (said, read)
    if target_model is not None:
        target, _, entry["details"]["target"] = attack.probe(target_model, forget, options, ctx)
    return entry, before, after, control, target


def describe() -> str:
    lines = []
    width = max(map(len, ATTACKS.names()))
    for name in ATTACKS.names():
        a = ATTACKS.get(name)
        lines.append(f"  {name:<{width}} {a.summary}")
        options = ", ".join(f"{k}={v}" for k, v in a.defaults.items()) or "none"
        lines.append(f"  {'':<{width}} options: {options}; "
                     f"robustness score: {a.robustness}")
    return "\n".join(lines)


# Keyword-only options, one per thing a user may give (models as paths or objects, the records, the configs):
# the Python face of `lethe attack` (lethe.attack), hence more than eight parameters.
def attack(model, forget, attacks: str | Sequence[str] = "quantize", *, attack_options: dict | None = None,
           retain=None, retain_model=None, target_model=None, metrics: Sequence[str] | None = ("P", "ROUGE"),
           tokenizer=None, model_config=None, data=None, runtime=None, max_new_tokens: int = 48) -> dict:
    """Attack ``model`` (a directory, an adapter directory, or a model object with ``tokenizer``: a tokenizer or the
    directory it loads from) and score the forget records before and after each attack; the same attack on
    ``retain_model`` is the control and ``target_model`` (the model before unlearning) says what full recovery
    would be. ``retain``: retain records (the few-shot prompt attack takes its examples from them). Text sequences
    (a text file, token ids, records with a text field) take the weight attacks and are scored by EL_10 and MA.
    Returns {"attacks": {name: {...}}}.

    >>> lethe.attack("runs/npo/model", "forget10.jsonl", "quantize,relearn",  # doctest: +SKIP
    ...              retain_model="models/retain")
    """
    from dataclasses import replace

    from ..core import DataConfig, ModelConfig, prepare
    from ..data.records import QARecord, TextRecord
    from ..data.sources import is_text_source, load_records
    from ..engine.runtime import RuntimeConfig
    from ..model.load import load_model, load_tokenizer

    dc, mc, rt = data or DataConfig(), model_config or ModelConfig(), runtime or RuntimeConfig()
    text = is_text_source(forget, dc.fields) or (isinstance(forget, (list, tuple)) and bool(forget)
                                                 and all(isinstance(r, TextRecord) for r in forget))
    chosen = parse_attacks(attacks, attack_options, records="text" if text else "qa")  # before any model loads
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(str(tokenizer), trust_remote_code=mc.trust_remote_code, base_model=mc.base_model)
    model, prompter, _ = prepare(model, tokenizer, mc, rt)
    read = {"fields": dc.fields, "split": dc.split, "tokenizer": prompter.tokenizer, "chunk_tokens": dc.chunk_tokens}
    forget = load_records(forget, **read)
    retain = load_records(retain, **read) if retain is not None else []
    kind = TextRecord if text else QARecord
    if not forget or not all(isinstance(r, kind) for r in forget + retain):
        raise LetheError(f"attack: the forget (and retain) records must all be {'text' if text else 'QA'} records, "
                         "and the forget set not empty")
    score = None
    if text:  # text sequences are scored by how extractable they are: EL_10 and MA
        from ..core.sequences import extraction_scorer

        score = extraction_scorer(prompter.tokenizer)

    def placed(other):
        if other is None or not isinstance(other, (str, Path)):
            return other
        return rt.place(load_model(str(other), dtype=rt.weight_dtype, trust_remote_code=mc.trust_remote_code))

    context = {"model_config": replace(mc, prompt_format=prompter.format), "runtime": rt,
               "max_new_tokens": max_new_tokens, "retain": retain, "fields": dc.fields}
    with rt.autocast():
        return run_attacks(model, forget, chosen, prompter=prompter, metrics=metrics, retain_model=placed(retain_model),
                           target_model=placed(target_model), score=score, context=context)

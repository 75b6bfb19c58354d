"""The attack protocol and registry: an attack is a function of a model, the forget records and its options,
registered once with its defaults, option checks and the robustness score that applies to it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

from ..util.errors import LetheError
from ..util.registry import Registry


class Attacked(NamedTuple):
    """What an attack gives back: the model to score (a changed copy, or the model itself when only the prompts
    change), the records to score it on, and the records the unattacked model is scored on for comparison
    (default: the same records)."""

    model: Any
    records: list
    baseline: list | None = None


@dataclass(frozen=True)
class Attack:
    """One attack: ``apply(model, forget, options, context) -> Attacked``; ``context`` has the prompter, the
    retain records, the model and runtime configs. A *probe* reads the model instead of changing it:
    ``probe(model, forget, options, context) -> (said, read, details)``, its own metrics as the model outputs
    them and as the probe reads them, plus what to keep (per-layer curves); it replaces ``apply``."""

    name: str
    summary: str
    defaults: Mapping[str, Any]
    apply: Callable[..., Attacked] | None
    check: Callable[[dict], None] = field(default=lambda options: None)
    robustness: str = "Q"  # which meta-evaluation score applies: Q (a fixed transform) or R (training)
    needs: tuple[str, ...] = ()  # record fields every forget record must have (e.g. paraphrased_question)
    probe: Callable[..., tuple[dict, dict, Any]] | None = None
    text: bool = False  # also applies to text sequences (it changes weights only; the caller scores the text)

    def options(self, given: Mapping[str, Any] | None = None) -> dict:
        """The attack's options with ``given`` applied: unknown names and wrong types are one-line errors."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise LetheError(f"attack '{self.name}' has no option {', '.join(unknown)}; its options: "
                             + ", ".join(f"{k}={v}" for k, v in self.defaults.items()))
        out = dict(self.defaults)
        for k, v in given.items():
            out[k] = typed_option(self.name, k, v, self.defaults[k])
        self.check(out)
        return out


def typed_option(attack: str, key: str, value, default):
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

"""Loss registries. A registered loss declares its inputs by its parameter names."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from ..registry import Registry

# Every input the engine knows how to build, and what it is.
INPUTS = {
    "forget_logits": "logits [B,T,V] of the model on forget question + true answer",
    "forget_labels": "labels [B,T] for the forget answer (IGNORE on prompt/padding)",
    "forget_input_mask": "[B,T] 1 on real tokens (question and answer), 0 on padding",
    "idk_logits": "logits [B,T,V] on forget question + refusal answer",
    "idk_labels": "labels [B,T] for the refusal answer",
    "ref_forget_logp": "[B] starting model's summed log-prob of the forget answer (cached once)",
    "ref_idk_logp": "[B] starting model's summed log-prob of the refusal answer (cached once)",
    "retain_logits": "logits [B,T,V] on a retain question + answer",
    "retain_labels": "labels [B,T] for the retain answer",
    "retain_idk_logits": "logits [B,T,V] on a retain question + refusal answer (AP)",
    "retain_idk_labels": "labels [B,T] for that refusal answer",
    "ref_retain_logits": "logits [B,T,V] of the reference model on the retain batch (no grad)",
}


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable[..., Any]
    needs: tuple[str, ...]
    options: dict[str, Any]
    description: str

    def __call__(self, inputs: dict[str, Any], **options):
        unknown = set(options) - set(self.options)
        if unknown:
            from ..errors import LetheError

            raise LetheError(f"loss '{self.name}' has no option {sorted(unknown)}; options: {sorted(self.options)}")
        return self.fn(*(inputs[n] for n in self.needs), **options)


def _spec(name: str, fn) -> LossSpec:
    sig = inspect.signature(fn)
    needs = tuple(p.name for p in sig.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD)
    bad = [n for n in needs if n not in INPUTS]
    if bad:
        raise ValueError(f"loss '{name}' needs unknown inputs {bad}; known: {sorted(INPUTS)}")
    options = {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}
    doc = (inspect.getdoc(fn) or "").split("\n")[0]
    return LossSpec(name, fn, needs, options, doc)


class LossRegistry(Registry[LossSpec]):
    def register(self, name: str, **meta):  # type: ignore[override]
        def wrap(fn):
            self.add(name, _spec(self.normalize(name), fn), **meta)
            return fn

        return wrap


FORGET_LOSSES = LossRegistry("forget loss")
REGULARIZERS = LossRegistry("regularizer")

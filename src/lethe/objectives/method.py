"""A method is ``FORGET[+REGULARIZER]`` as written in the papers (``GA+GD``, ``NPO+KL``, ``ME+GD``).

Total loss = alpha * forget + gamma * regularizer (alpha always weights forget).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import LetheError
from .registry import FORGET_LOSSES, REGULARIZERS, LossSpec

# Paper defaults for alpha (forget weight) per method; everything else alpha = gamma = 1.
DEFAULT_ALPHA = {("me", "gd"): 0.1}


@dataclass(frozen=True)
class Method:
    forget: LossSpec
    regularizer: LossSpec | None
    alpha: float = 1.0
    gamma: float = 1.0
    forget_options: dict[str, Any] = field(default_factory=dict)
    regularizer_options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        parts = [self.forget.name.upper()]
        if self.regularizer is not None:
            parts.append(self.regularizer.name.upper())
        return "+".join(parts)

    @property
    def needs(self) -> tuple[str, ...]:
        needs = list(self.forget.needs)
        if self.regularizer is not None:
            needs += [n for n in self.regularizer.needs if n not in needs]
        return tuple(needs)

    def loss(self, inputs: dict[str, Any]):
        """(total, {"forget": value, "regularizer": value}) from precomputed inputs."""
        f = self.forget(inputs, **self.forget_options)
        parts = {"forget": f.detach()}
        total = self.alpha * f
        if self.regularizer is not None:
            r = self.regularizer(inputs, **self.regularizer_options)
            parts["regularizer"] = r.detach()
            total = total + self.gamma * r
        return total, parts


def parse_method(text: str, *, alpha: float | None = None, gamma: float | None = None,
                 forget_options: dict | None = None, regularizer_options: dict | None = None) -> Method:
    """Parse ``"NPO+KL"`` (case-insensitive) into a :class:`Method` with paper defaults."""
    pieces = [p.strip() for p in text.split("+") if p.strip()]
    if not 1 <= len(pieces) <= 2:
        raise LetheError(f"method '{text}': expected FORGET or FORGET+REGULARIZER, e.g. GA+GD")
    forget = FORGET_LOSSES.get(pieces[0])
    reg = REGULARIZERS.get(pieces[1]) if len(pieces) == 2 else None
    key = (forget.name, reg.name if reg else None)
    return Method(
        forget=forget,
        regularizer=reg,
        alpha=DEFAULT_ALPHA.get(key, 1.0) if alpha is None else alpha,
        gamma=1.0 if gamma is None else gamma,
        forget_options=dict(forget_options or {}),
        regularizer_options=dict(regularizer_options or {}),
    )

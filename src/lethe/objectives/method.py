"""A method is ``FORGET[+REGULARIZER]`` as written in the papers (``GA+GD``, ``NPO+KL``, ``ME+GD``).

Options go in parentheses, ``NPO(beta=0.2)+KL`` or ``ME(direction=uniform-to-model)+GD``, or
separately (``forget_options={"beta": 0.2}``, ``--forget-opt beta=0.2``); they are checked against
the loss's signature. Total loss = alpha * forget + gamma * regularizer (alpha always weights forget).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..util.errors import LetheError
from .inputs import Need
from .loss import Loss, build_loss, parse_options
from .registry import FORGET_LOSSES, REGULARIZERS, LossRegistry

# Paper defaults for alpha (forget weight) per method; everything else alpha = gamma = 1.
DEFAULT_ALPHA = {("me", "gd"): 0.1}


@dataclass(frozen=True)
class Method:
    forget: Loss
    regularizer: Loss | None
    alpha: float = 1.0
    gamma: float = 1.0

    @property
    def name(self) -> str:
        return "+".join(loss.name.upper() for loss in self.losses)

    @property
    def spec(self) -> str:
        """The method with its options, as it can be written back: ``NPO(beta=0.2)+KL``."""
        def one(loss):
            opts = ",".join(f"{k}={v}" for k, v in loss.options().items())
            return f"{loss.name.upper()}({opts})" if opts else loss.name.upper()

        return "+".join(one(loss) for loss in self.losses)

    @property
    def losses(self) -> tuple[Loss, ...]:
        return (self.forget,) if self.regularizer is None else (self.forget, self.regularizer)

    def needs(self) -> dict[tuple[str, str], Need]:
        """(role, input name) -> Need for every input of both losses (read after ``setup``)."""
        out = {}
        for role, loss in zip(("forget", "regularizer"), self.losses):
            for name, need in loss.needs().items():
                out[(role, name)] = need
        return out

    def loss(self, inputs: Mapping[Any, Any], scale: Mapping[str, float] | None = None):
        """(total, {"forget": value, "regularizer": value}) from inputs keyed by input name or (role, name).

        ``scale`` multiplies each part (gradient accumulation's micro-batch weights); the parts
        returned are unscaled.
        """
        def view(role, loss):
            return {n: inputs[(role, n)] if (role, n) in inputs else inputs[n] for n in loss.needs()}

        scale = scale or {}
        f = self.forget(view("forget", self.forget))
        parts = {"forget": f.detach()}
        total = self.alpha * f * scale.get("forget", 1.0)
        if self.regularizer is not None:
            r = self.regularizer(view("regularizer", self.regularizer))
            parts["regularizer"] = r.detach()
            total = total + self.gamma * r * scale.get("regularizer", 1.0)
        return total, parts

    def total(self, parts: Mapping[str, Any]):
        """alpha * forget + gamma * regularizer of unscaled parts (what the logs report)."""
        return self.alpha * parts["forget"] + (self.gamma * parts["regularizer"] if "regularizer" in parts else 0.0)

    def record(self) -> dict:
        """What a run records about its method: name, spec, weights and resolved options."""
        return {"method": self.name, "method_spec": self.spec, "alpha": self.alpha, "gamma": self.gamma,
                "forget_loss": self.forget.name, "forget_options": self.forget.options(),
                "regularizer": self.regularizer.name if self.regularizer else None,
                "regularizer_options": self.regularizer.options() if self.regularizer else {}}


def split_outside_parens(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not inside parentheses: ``"NPO(beta=0.2)+KL"`` on '+' ->
    ["NPO(beta=0.2)", "KL"]; ``"GA,RMU(layer=1,alpha=10)"`` on ',' -> ["GA", "RMU(layer=1,alpha=10)"].
    An empty term (``GA++GD``, a trailing ``+``, ``--methods ,``) or unbalanced parentheses is a one-line
    error pointing at the column."""
    pieces, depth, cur = [], 0, ""

    def close(end: int) -> None:
        if not cur.strip():
            raise LetheError(f"'{text}': empty term at column {end + 1} (expected a name between the "
                             f"{'separators' if end else 'start and the first ' + repr(sep)})")
        pieces.append(cur.strip())

    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise LetheError(f"'{text}': unbalanced parentheses: ')' at column {i + 1} closes nothing")
        if ch == sep and depth == 0:
            close(i)
            cur = ""
        else:
            cur += ch
    if depth:
        raise LetheError(f"'{text}': unbalanced parentheses: {depth} '(' left open")
    if pieces or cur.strip():
        close(len(text))
    return pieces


def split_method(text: str) -> list[str]:
    """Split on '+' outside parentheses: ``"NPO(beta=0.2)+KL"`` -> ["NPO(beta=0.2)", "KL"]."""
    return split_outside_parens(text, "+")


def _one(part, registry: LossRegistry, extra: Mapping[str, Any] | None, where: str,
         defaults: Mapping[str, Mapping[str, Any]] | None = None) -> Loss:
    if isinstance(part, str):
        name, _, rest = part.partition("(")
        if rest and not rest.rstrip().endswith(")"):
            raise LetheError(f"{where} '{part}': expected NAME(option=value, ...)")
        written: dict[str, Any] = parse_options(rest.rstrip()[:-1], f"{where} '{part}'") if rest else {}
        entry = registry.get(name.strip())
        options = {**(defaults or {}).get(name.strip().lower(), {}), **written, **(extra or {})}
        return entry.build(**options)
    return build_loss(part, None, extra)


def parse_method(text: str | Callable | Loss | tuple | Method, *, alpha: float | None = None,
                 gamma: float | None = None, forget_options: Mapping[str, Any] | None = None,
                 regularizer_options: Mapping[str, Any] | None = None,
                 defaults: Mapping[str, Mapping[str, Any]] | None = None) -> Method:
    """A :class:`Method` from ``"NPO(beta=0.2)+KL"`` (case-insensitive), a loss function or :class:`Loss`
    (forget only), or a ``(forget, regularizer)`` pair of names, functions or losses.

    ``forget_options``/``regularizer_options`` override options written in the string, which override
    ``defaults`` (per registered loss name: a convention's options, :mod:`lethe.core.conventions`).
    """
    if isinstance(text, Method):
        if any(v is not None for v in (alpha, gamma, forget_options, regularizer_options)):
            raise LetheError("a Method object carries its own alpha, gamma and options")
        return text
    if isinstance(text, str):
        pieces = split_method(text)
        if not 1 <= len(pieces) <= 2:
            raise LetheError(f"method '{text}': expected FORGET or FORGET+REGULARIZER, e.g. GA+GD or NPO(beta=0.2)+KL")
    elif isinstance(text, tuple):
        pieces = [p for p in text if p is not None]
        if not 1 <= len(pieces) <= 2:
            raise LetheError("method: expected (forget,) or (forget, regularizer)")
    else:
        pieces = [text]
    forget = _one(pieces[0], FORGET_LOSSES, forget_options, "forget loss", defaults)
    if len(pieces) < 2 and regularizer_options:
        raise LetheError(f"regularizer options {sorted(regularizer_options)} given, but the method has no regularizer")
    reg = _one(pieces[1], REGULARIZERS, regularizer_options, "regularizer", defaults) if len(pieces) == 2 else None
    key = (forget.name, reg.name if reg else None)
    return Method(forget=forget, regularizer=reg,
                  alpha=DEFAULT_ALPHA.get(key, 1.0) if alpha is None else float(alpha),
                  gamma=1.0 if gamma is None else float(gamma))


def needs_fixed_width(loss) -> bool:
    """Whether a loss averages over the padded batch's positions (KL over all positions, ME with padding,
    FLAT normalised by the padded length): its value then depends on the batch's width, so accumulation
    reproduces one big batch only when every batch is padded to one width."""
    options = getattr(loss, "options", None)
    options = (options() if callable(options) else options) or {}
    return str(getattr(loss, "unit", "")).startswith("padded") or options.get("normalise") == "padded"


def check_fixed_width(method, pad_to: int | None) -> None:
    """A loss that averages over padded positions needs a fixed width: refused without one (one line)."""
    if pad_to is not None:
        return
    for loss in method.losses:
        if needs_fixed_width(loss):
            raise LetheError(f"loss '{loss.name}' averages over every padded position "
                             f"({loss.unit or 'normalise=padded'}"
                             "), so without a fixed batch width its value depends on how examples share micro-batches: "
                             "use a convention that fixes it (--convention closer-look, tofu, flat or ihl-fila pad to "
                             "500; pad_to in the Python API), or the option's answer-only form")

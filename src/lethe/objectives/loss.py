"""What a loss is to the engine: declared inputs, options, an optional set-up step and parameter choice.

Two ways to write one:

- a plain function of tensors whose parameter names declare its inputs (see ``inputs.py``) and whose
  keyword-only parameters are its options::

      def simnpo(forget_seq_logp, forget_lengths, *, beta=2.5, delta=0.0): ...

- a :class:`Loss` subclass, for losses with state or choices that depend on the model (RMU): its
  ``__init__`` keywords are its options, ``setup(model, data)`` runs once before training,
  ``needs()`` names its inputs, ``trainable(model)`` may restrict which parameters train.

Either can be registered by name (``FORGET_LOSSES.register``) or passed straight to
``lethe.unlearn(method=...)`` without touching a registry.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Iterable, Mapping

from ..util.errors import LetheError
from .inputs import Need, parse_input_name


class Loss:
    """Base class for losses that need state or set-up. Subclasses implement ``needs`` and ``__call__``."""

    name: str = "loss"
    # What the loss averages over, so gradient accumulation can weight micro-batches exactly:
    # "token" (counted answer tokens of its first stream), "position" (real input positions, ME),
    # or "sequence" (examples; NPO, DPO, RMU, ...). A plain function says so with ``fn.unit = "..."``.
    unit: str = "token"
    # True when the loss reads its ``*_logits`` inputs only through ``lethe.ops.tokens``: the engine
    # may then hand it :class:`~lethe.ops.head.HeadLogits` and never build [B,T,V] logits.
    head_logits: bool = False

    def setup(self, model, data) -> None:
        """Once before training, with the model being trained and the run's data (:class:`LossData`)."""

    def needs(self) -> Mapping[str, Need]:
        """Input name -> :class:`Need`. ``__call__`` receives a dict with exactly these names."""
        raise NotImplementedError

    def __call__(self, inputs: Mapping[str, Any]):
        raise NotImplementedError

    def trainable(self, model) -> Iterable | None:
        """Parameters that may train (None: whatever the parameterisation chose)."""
        return None

    def options(self) -> dict[str, Any]:
        """Resolved options, recorded with the run."""
        return dict(getattr(self, "_options", {}))

    def epoch_end(self, epoch: int) -> None:
        """After training epoch ``epoch`` (from 1): where a loss with state changes phase (a warm-up ends)."""

    def state(self) -> dict[str, Any]:
        """What the loss carries from step to step (a dual variable): recorded after every epoch, saved with
        each checkpoint and given back to :meth:`load_state` by ``--resume``. Plain JSON values."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state` saved with a checkpoint."""


class FunctionLoss(Loss):
    """A plain function as a :class:`Loss`: inputs from parameter names, options bound once."""

    def __init__(self, fn: Callable, name: str, options: Mapping[str, Any], unit="token"):
        self.fn, self.name, self._options = fn, name, dict(options)
        self.unit = unit(self._options) if callable(unit) else unit
        self.head_logits = bool(getattr(fn, "head_logits", False))
        layer = self._options.get("layer")
        self._needs = {p: parse_input_name(p, layer=layer) for p in input_parameters(fn)}

    def needs(self) -> dict[str, Need]:
        return dict(self._needs)

    def __call__(self, inputs: Mapping[str, Any]):
        return self.fn(*(inputs[n] for n in self._needs), **self._options)


def input_parameters(fn: Callable) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def option_defaults(factory: Callable) -> dict[str, Any]:
    """Options of a loss and their defaults: keyword-only parameters (function) or ``__init__`` keywords (class)."""
    if isinstance(factory, type):
        params = list(inspect.signature(factory.__init__).parameters.values())[1:]
        return {p.name: p.default for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return {p.name: p.default for p in inspect.signature(factory).parameters.values() if p.kind is p.KEYWORD_ONLY}


def _coerce(loss: str, key: str, value: Any, default: Any) -> Any:
    """A CLI/YAML string to the option's type, taken from its default."""
    if not isinstance(value, str) or isinstance(default, str):
        if isinstance(default, bool) and not isinstance(value, bool):
            raise LetheError(f"loss '{loss}': option '{key}' expects true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise LetheError(f"loss '{loss}': option '{key}' expects a number, got {value!r}")
            value = float(value) if isinstance(default, float) else value
        if isinstance(value, float) and not math.isfinite(value):
            raise LetheError(f"loss '{loss}': option '{key}' must be finite, got {value}")
        return value
    text = value.strip()
    if isinstance(default, bool):
        low = text.lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise LetheError(f"loss '{loss}': option '{key}' expects true or false, got '{text}'")
    if isinstance(default, int) or isinstance(default, float) or default is None:
        for kind in ((int, float) if isinstance(default, int) or default is None else (float,)):
            try:
                number = kind(text)
            except ValueError:
                continue
            if isinstance(number, float) and not math.isfinite(number):
                raise LetheError(f"loss '{loss}': option '{key}' must be finite, got '{text}'")
            return float(number) if isinstance(default, float) else number
        if default is None:
            return None if text.lower() in ("none", "null") else text
        raise LetheError(f"loss '{loss}': option '{key}' expects a number, got '{text}'")
    return text


def bind_options(name: str, factory: Callable, given: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``given`` against the loss's signature and fill in defaults; unknown names are one-line errors."""
    defaults = option_defaults(factory)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
        raise LetheError(f"loss '{name}' has no option {', '.join(repr(u) for u in unknown)}; its options: {valid}")
    missing = [k for k, v in defaults.items() if v is inspect.Parameter.empty and k not in given]
    if missing:
        raise LetheError(f"loss '{name}' needs option(s) {', '.join(missing)}")
    bound = {k: _coerce(name, k, given[k], v) if k in given else v for k, v in defaults.items()}
    for key, (low, high, low_open) in getattr(factory, "option_ranges", {}).items():
        value = bound.get(key)
        if value is None or isinstance(value, bool):
            continue
        bad_low = low is not None and (value <= low if low_open else value < low)
        if bad_low or (high is not None and value > high):
            sign = ">" if low_open else ">="
            where = " and ".join(p for p in ((f"{sign} {low}" if low is not None else ""),
                                             (f"<= {high}" if high is not None else "")) if p)
            raise LetheError(f"loss '{name}': option '{key}' must be {where}, got {value}")
    return bound


def option_ranges(**ranges):
    """Declare a loss's numeric option ranges, checked when the method is parsed (before any model work):
    ``@option_ranges(beta=(0, None, True))`` means beta > 0; the tuple is (low, high, low_open)."""
    def mark(fn):
        fn.option_ranges = {**getattr(fn, "option_ranges", {}), **ranges}
        return fn
    return mark


def build_loss(factory: Callable | Loss, name: str | None = None, options: Mapping[str, Any] | None = None,
               unit="token") -> Loss:
    """A :class:`Loss` from a function, a Loss subclass, or an instance (returned as it is)."""
    if isinstance(factory, Loss):
        if options:
            raise LetheError(f"loss '{factory.name}' is already built: set its options when constructing it")
        return factory
    if name is None:
        declared = getattr(factory, "name", None) if isinstance(factory, type) else None
        name = declared if declared and declared != Loss.name else getattr(factory, "__name__", "loss")
        name = name.replace("_", "-").lower()
    bound = bind_options(name, factory, options or {})
    if isinstance(factory, type):
        if not issubclass(factory, Loss):
            raise LetheError(f"loss class {factory.__name__} must subclass lethe.objectives.Loss")
        loss = factory(**bound)
        loss.name, loss._options = name, dict(bound)
        return loss
    if not callable(factory):
        raise LetheError(f"a loss must be a function or a Loss, got {type(factory).__name__}")
    return FunctionLoss(factory, name, bound, getattr(factory, "unit", unit))


def parse_options(text: str, where: str) -> dict[str, str]:
    """``"beta=0.2, delta=1"`` -> {"beta": "0.2", "delta": "1"} (values are typed later, by the loss)."""
    out: dict[str, str] = {}
    parts = [p.strip() for p in text.split(",")]
    if parts == [""]:
        return out
    for part in parts:
        if not part:
            raise LetheError(f"{where}: an empty option (a stray comma)")
        key, eq, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key.isidentifier():
            raise LetheError(f"{where}: expected NAME=VALUE, got '{part}'")
        if key in out:
            raise LetheError(f"{where}: option '{key}' is given twice")
        out[key] = value.strip().strip("'\"")
    return out

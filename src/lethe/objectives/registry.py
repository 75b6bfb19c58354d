"""Loss registries: name -> a function or :class:`Loss` class, built with options on demand."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..util.registry import Registry
from .inputs import Need, parse_input_name
from .loss import Loss, build_loss, input_parameters, option_defaults


@dataclass(frozen=True)
class LossEntry:
    """A registered loss: ``fn`` is the function or Loss class; ``options`` its option defaults."""

    name: str
    fn: Callable[..., Any]
    options: dict[str, Any]
    description: str
    unit: Any = "token"  # or a function of the resolved options

    def build(self, **options) -> Loss:
        return build_loss(self.fn, self.name, options, self.unit)

    def __call__(self, inputs: Mapping[str, Any], **options):
        """Evaluate on a dict of inputs (convenient in tests and notebooks)."""
        return self.build(**options)(inputs)


def _entry(name: str, fn, unit="token") -> LossEntry:
    defaults = option_defaults(fn)
    if not isinstance(fn, type):
        for p in input_parameters(fn):  # a typo in an input name fails at registration, not mid-run
            parse_input_name(p, layer=defaults.get("layer") if isinstance(defaults.get("layer"), int) else 0)
    doc = (inspect.getdoc(fn) or "").split("\n")[0]
    return LossEntry(name, fn, defaults, doc, unit)


class LossRegistry(Registry[LossEntry]):
    def add(self, name: str, obj, **meta) -> LossEntry:  # type: ignore[override]
        entry = obj if isinstance(obj, LossEntry) else _entry(self.normalize(name), obj, meta.pop("unit", "token"))
        key = self.normalize(name)
        old = self._items.get(key)
        if old is not None and _same_definition(old.fn, entry.fn):
            # Re-running the cell or module that defined it (notebooks, reloads) replaces it quietly.
            del self._items[key]
        return super().add(name, entry, **meta)

    def register(self, name: str, **meta):  # type: ignore[override]
        def wrap(fn):
            self.add(name, fn, **meta)
            return fn

        return wrap


def _same_definition(a, b) -> bool:
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == \
           (getattr(b, "__module__", None), getattr(b, "__qualname__", None))


FORGET_LOSSES = LossRegistry("forget loss")
REGULARIZERS = LossRegistry("regularizer")

__all__ = ["FORGET_LOSSES", "REGULARIZERS", "LossEntry", "LossRegistry", "Need"]

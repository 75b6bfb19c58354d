"""One generic name -> object registry.

Names are lower-case with hyphens. Registering a name twice is an error; looking up an
unknown name lists the close matches and everything that is available.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import LetheError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    @staticmethod
    def normalize(name: str) -> str:
        return name.strip().lower().replace("_", "-")

    def add(self, name: str, obj: T, **meta: Any) -> T:
        key = self.normalize(name)
        if key in self._items:
            raise ValueError(f"{self.kind} '{key}' is registered twice")
        self._items[key] = obj
        self._meta[key] = meta
        return obj

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            return self.add(name, obj, **meta)

        return wrap

    def get(self, name: str) -> T:
        key = self.normalize(name)
        if key not in self._items:
            close = difflib.get_close_matches(key, list(self._items), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise LetheError(
                f"unknown {self.kind} '{name}'.{hint} Available: {', '.join(sorted(self._items))}"
            )
        return self._items[key]

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[self.normalize(name)]

    def __contains__(self, name: str) -> bool:
        return self.normalize(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[str]:
        """Names in the order they were registered (a declaration order that carries meaning)."""
        return list(self._items)

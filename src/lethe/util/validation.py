"""Declared ranges for numeric options, shared by the typed configs, the CLI and YAML config files.

A config field declares its range once (``bounded``); the dataclass checks it when built (API), the
CLI uses the same declaration as the argparse ``type`` (so ``--lr nan`` fails while parsing), and
``--config`` files are converted through it too. Errors name the option and what was expected.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import LetheError


@dataclass(frozen=True)
class Range:
    """``kind`` (int or float) within [low, high] (``low_open``: strictly above low); None allowed if optional."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    optional: bool = False
    option: str | None = None   # the CLI name when it is not --field-name

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return self.expected()

    def expected(self) -> str:
        noun = "an integer" if self.kind is int else "a finite number"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_num(self.low)}")
        if self.high is not None:
            parts.append(f"<= {_num(self.high)}")
        text = noun + (" " + " and ".join(parts) if parts else "")
        return text + (" (or unset)" if self.optional else "")

    def check(self, option: str, value: Any) -> Any:
        """``value`` converted to ``kind``, or a LetheError naming ``option``."""
        if value is None and self.optional:
            return None
        bad = LetheError(f"{option}: expected {self.expected()}, got {value!r}")
        if isinstance(value, bool):
            raise bad
        if self.kind is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int):
                raise bad
        else:
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad
            value = float(value)
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise bad
        if self.high is not None and value > self.high:
            raise bad
        return value

    def __call__(self, text: str):
        """argparse ``type``: parse the command-line string, then check the range."""
        try:
            value = self.kind(text) if self.kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.expected()}, got {text!r}") from None
        try:
            return self.check("", value)
        except LetheError:
            raise argparse.ArgumentTypeError(f"expected {self.expected()}, got {text!r}") from None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def bounded(default, kind: type, low=None, high=None, *, low_open: bool = False, optional: bool = False,
            option: str | None = None):
    """A dataclass field with a declared range."""
    return field(default=default, metadata={"range": Range(kind, low, high, low_open, optional, option)})


def option_name(f) -> str:
    rng = f.metadata.get("range")
    return (rng.option if rng is not None and rng.option else None) or "--" + f.name.replace("_", "-")


def range_of(cls, name: str) -> Range:
    """The declared range of ``cls.name`` (for argparse ``type=``)."""
    for f in fields(cls):
        if f.name == name and "range" in f.metadata:
            return f.metadata["range"]
    raise KeyError(f"{cls.__name__}.{name} declares no range")


def check_ranges(config) -> None:
    """Check every declared field of a dataclass instance (called from ``__post_init__``)."""
    for f in fields(config):
        rng = f.metadata.get("range")
        if rng is not None:
            value = rng.check(option_name(f), getattr(config, f.name))
            object.__setattr__(config, f.name, value)  # 5 -> 5.0 for floats; works on frozen dataclasses


# Options of commands that are function arguments rather than config fields.
POSITIVE_INT = Range(int, 1)
OPTIONAL_POSITIVE_INT = Range(int, 1, optional=True)
NON_NEGATIVE_INT = Range(int, 0)
SEED = Range(int, 0, 2**63 - 1)  # what torch.manual_seed, numpy and random all take
SEQUENCE_TOKENS = Range(int, 2, optional=True)   # --max-tokens: a sequence needs two tokens to score one
P_VALUE_THRESHOLD = Range(float, 0, 1, low_open=True)  # --stop-threshold


def check_positive(option: str, value, optional: bool = False):
    return (OPTIONAL_POSITIVE_INT if optional else POSITIVE_INT).check(option, value)

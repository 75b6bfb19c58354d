"""Progress a person can follow on a terminal (bars) and off one (one timestamped line per stage or epoch,
with elapsed time and ETA: `lethe demo | tee log` shows where the run is)."""
from __future__ import annotations

import sys
import time


def interactive() -> bool:
    return sys.stderr.isatty()


def bar(enabled: bool, total: int, desc: str, initial: int = 0):
    """A tqdm bar on a terminal; disabled off one (``note`` lines take over there)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, initial=initial, disable=not (enabled and interactive()), leave=False,
                dynamic_ncols=True)


def note(enabled: bool, message: str) -> None:
    """One line on stderr when output is not a terminal (a terminal has the bar)."""
    if enabled and not interactive():
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def eta(elapsed: float, done: int, total: int) -> str:
    if done <= 0 or total <= done:
        return "0 s" if total <= done else "?"
    return _seconds(elapsed / done * (total - done))


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


class Stages:
    """One line per finished stage of a long step that has no bar (an evaluation, the audit), on a terminal
    or not: what finished, the time since the step began and an ETA from the share of work done."""

    def __init__(self, enabled: bool, title: str, total: int):
        self.enabled, self.title, self.total, self.done = enabled, title, max(1, total), 0
        self.started = time.perf_counter()

    def step(self, what: str, work: int) -> None:
        self.done += work
        if self.enabled:
            elapsed = time.perf_counter() - self.started
            print(f"[{time.strftime('%H:%M:%S')}] {self.title}: {what}; elapsed {_seconds(elapsed)}, "
                  f"ETA {eta(elapsed, self.done, self.total)}", file=sys.stderr, flush=True)

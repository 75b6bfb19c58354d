"""Scenarios: data + protocol + metrics (SPEC §6). Each writes results.json, report.md and report.html."""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def run_dir_for(out: Path, method: str, kind: str, suffix: str = "") -> Path:
    """``out/runs/ihl_gd-fila``, ``out/runs/rmu-alpha=10-full``: one directory per (method, parameterisation) cell."""
    name = re.sub(r"[()\s,/]+", "-", method.lower().replace("+", "_")).strip("-")
    return Path(out) / "runs" / f"{name}-{kind}{suffix}"


def finished(run_dir: Path, resume: bool) -> dict | None:
    """The recorded run of a finished cell (``run.json``), when resuming; else None."""
    done = Path(run_dir) / "run.json"
    return json.loads(done.read_text()) if resume and done.exists() else None


def check_methods(specs, parse_spec) -> None:
    """Every run spec's method and parameterisation, checked before any data or model work."""
    from ..model.lora import ParamsConfig
    from ..objectives.method import parse_method

    for spec in specs:
        parts = parse_spec(spec)
        method, kind = parts[:2]
        rank = parts[2] if len(parts) > 2 and parts[2] is not None else ParamsConfig().rank
        parse_method(method)
        ParamsConfig(kind=kind, rank=rank).validate()


def console(progress: bool):
    """Status lines on stderr (rich), silent when progress is off."""
    from rich.console import Console

    return Console(quiet=not progress, stderr=True)


FINGERPRINT = "lethe_scenario.json"


@contextmanager
def scenario_dir(out, fingerprint: dict, *, resume: bool, command: str) -> Iterator[Path]:
    """The scenario's output directory, checked, locked and tidied for the run.

    ``fingerprint`` is everything that determines the data and models (scenario, version, size, seed, ...).
    Reusing finished parts (``resume``) of a directory made with another fingerprint is refused, naming what
    differs; without ``resume`` (``--fresh``) everything is recomputed and the new fingerprint recorded.
    """
    from ..errors import LetheError
    from ..io import write_json
    from ..rundir import check_output, remove_temporaries, run_lock

    out = check_output(out)
    with run_lock(out, command=command):
        remove_temporaries(out)
        path = out / FINGERPRINT
        if resume and path.exists():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                saved = {}
            differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            if differ:
                was = ", ".join(f"{k} {saved.get(k)!r}" for k in differ)
                now = ", ".join(f"{k} {fingerprint.get(k)!r}" for k in differ)
                raise LetheError(f"--out {out} holds parts made with {was}; this run asks for {now}. Use another "
                                 "--out, or --fresh to recompute everything there")
        elif resume and ((out / "results.json").exists() or (out / "models").exists()):
            raise LetheError(f"--out {out} holds a run without a {FINGERPRINT} (an older Lethe): its parts cannot be "
                             "checked for reuse. Use another --out, or --fresh to recompute everything there")
        write_json(path, fingerprint)
        yield out

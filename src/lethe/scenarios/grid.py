"""The grid a benchmark runs: run specs (method x parameterisation x rank), sweep points and seeds, shared by
the fictitious-authors scenario and by ``lethe bench`` on the user's own model and data."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence


def grid(methods: Sequence[str], params: Sequence[str] = ("full",), ranks: Sequence[int] = ()) -> list[str]:
    """Run specs for every method x parameterisation (x rank, for LoRA/FILA)."""
    specs = []
    for m in methods:
        for p in params:
            if p == "full" or not ranks:
                specs.append(f"{m}@{p}")
            else:
                specs += [f"{m}@{p}:r{r}" for r in ranks]
    return specs


TRAIN_SWEEP = ("lr", "epochs", "warmup_epochs", "weight_decay", "max_grad_norm", "retain_per_forget", "batch_size")
METHOD_SWEEP = ("alpha", "gamma")


def check_sweep(sweep: dict, base) -> dict:
    """{name: [values]} checked before any work: known names, numeric values in their declared ranges."""
    from ..core import MethodConfig
    from ..util.errors import LetheError

    out = {}
    for name, values in sweep.items():
        key = name.replace("-", "_")
        if key not in TRAIN_SWEEP + METHOD_SWEEP:
            raise LetheError(f"--sweep: cannot sweep '{name}'; expected one of {', '.join(TRAIN_SWEEP + METHOD_SWEEP)}")
        if not values:
            raise LetheError(f"--sweep {name}: no values")
        for v in values:  # each value must make a valid config (ranges declared once, in the configs)
            replace(base, **{key: v}) if key in TRAIN_SWEEP else MethodConfig("GA", **{key: v})
        out[key] = list(values)
    return out


def cells(specs, sweep: dict, seeds: int):
    """(spec, sweep point, seed index) for every cell of the grid, in a stable order."""
    import itertools

    keys = sorted(sweep)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))] or [{}]
    for spec in specs:
        for point in points:
            for s in range(seeds):
                yield spec, point, s


def grid_cells(out, specs, sweep: dict, seeds: int, *, default_rank: int, attacks=()) -> list:
    """A :class:`~lethe.scenarios.Cell` per method x parameterisation x sweep point x seed, each with its own
    directory under ``out/runs`` (the rank, point and seed in its name where they vary)."""
    from ..reports.comparison import point_label
    from . import Cell, parse_run_spec, run_dir_for

    out_cells = []
    for spec, point, s in cells(specs, sweep, seeds):
        method, kind, rank = parse_run_spec(spec)
        rank = rank or default_rank
        suffix = f"-r{rank}" if kind != "full" and rank != default_rank else ""
        suffix += "".join(f"-{k}{v:g}" for k, v in sorted(point.items())) + (f"-s{s}" if seeds > 1 else "")
        label = (f"unlearning with {method} ({kind})" + (f", {point_label(point)}" if point else "")
                 + (f", seed {s}" if seeds > 1 else ""))
        out_cells.append(Cell(spec, run_dir_for(out, method, kind, suffix), label,
                              {"spec": spec, "sweep": point, "seed": s, "attacks": sorted(attacks or ())}))
    return out_cells

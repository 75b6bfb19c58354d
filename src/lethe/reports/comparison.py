"""Fair comparisons from a grid of runs: per method, each sweep point's mean ± spread over seeds, the Pareto
front of utility against forgetting, and the best utility reachable at a given level of forgetting.

Pure functions on ``results["runs"]`` records (each may carry ``cell = {"spec", "sweep", "seed"}``).
Every metric compared here is higher-is-better (MU, MU18, FE, FQ).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

THRESHOLDS = (0.25, 0.5, 0.75)


def final_metric(run: dict, key: str) -> float | None:
    epochs = run.get("epochs") or []
    value = epochs[-1].get("metrics", {}).get(key) if epochs else None
    if run.get("status", "ok") != "ok" or value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def method_label(run: dict) -> str:
    """The compared unit: method and parameterisation (with its rank when the spec names one)."""
    spec = run.get("cell", {}).get("spec")
    return spec if spec else f"{run['method']}@{run.get('params', 'full')}"


def point_label(point: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k,
                     v in sorted(point.items())) or "default"


def _mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def summarize(runs: Sequence[dict], metrics: Sequence[str] = ("MU", "FE", "FQ")) -> list[dict]:
    """One row per (method, sweep point): ``n`` seeds that finished and, per metric, (mean, spread) or None."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        point = run.get("cell", {}).get("sweep", {})
        groups[(method_label(run), tuple(sorted(point.items())))].append(run)
    rows = []
    for (label, point), members in groups.items():
        row = {"method": label, "point": dict(point), "n": len(members),
               "failed": sum(r.get("status", "ok") != "ok" for r in members)}
        for key in metrics:
            values = [v for v in (final_metric(r, key) for r in members) if v is not None]
            row[key] = _mean_spread(values) if values else None
        rows.append(row)
    return rows


def pareto_front(rows: Sequence[dict], x: str = "FE", y: str = "MU") -> list[dict]:
    """Rows whose mean (x, y) no other row beats in both (ties kept), sorted by x."""
    pts = [r for r in rows if r.get(x) is not None and r.get(y) is not None]

    def dominated(r):
        rx, ry = r[x][0], r[y][0]
        return any(o[x][0] >= rx and o[y][0] >= ry and (o[x][0] > rx or o[y][0] > ry) for o in pts)

    return sorted((r for r in pts if not dominated(r)), key=lambda r: r[x][0])


def best_at(rows: Sequence[dict], x: str = "FE", y: str = "MU", thresholds: Sequence[float] = THRESHOLDS
            ) -> dict[str, dict[float, dict | None]]:
    """Per method, for each threshold t: the sweep point with the highest mean y among those with mean x ≥ t
    (None when no point reaches t)."""
    out: dict[str, dict[float, dict | None]] = {}
    for r in rows:
        out.setdefault(r["method"], {t: None for t in thresholds})
    for t in thresholds:
        for r in rows:
            if r.get(x) is None or r.get(y) is None or r[x][0] < t:
                continue
            best = out[r["method"]][t]
            if best is None or (r[y][0], r[x][0]) > (best[y][0], best[x][0]):  # ties: the one forgetting more
                out[r["method"]][t] = r
    return out


def fronts_by_method(rows: Sequence[dict], x: str = "FE", y: str = "MU") -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["method"]].append(r)
    return {m: pareto_front(rs, x, y) for m, rs in by.items()}


def is_comparison(results: dict) -> bool:
    """Whether the runs form a sweep or repeat seeds (a comparison section is worth showing)."""
    cells = [r.get("cell") for r in results.get("runs", []) if isinstance(r.get("cell"), dict)]
    return any(c.get("sweep") for c in cells) or len({c.get("seed") for c in cells}) > 1

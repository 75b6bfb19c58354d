"""Per-method learning rates for the fictitious-authors scenario, chosen from a recorded sweep.

Run the sweep with the bench command, then pick::

    lethe bench --size small --methods GA+GD,NPO+GD,... --sweep lr=1.5e-4,5e-4,1.5e-3 --seeds 3 --out runs/sweep
    python benchmarks/lr_sweep.py runs/sweep/results.json --out benchmarks/results/lr-sweep-DATE-COMMIT-cpu

The rule, per method: among the learning rates whose mean final MU (over the seeds) keeps at least
``--mu-floor`` (0.9) of the target model's MU, the one with the highest mean final FE; when none keeps it, the one
with the highest mean MU (the method damages utility at every rate tried; flagged). The result is written as JSON
(every cell's FE and MU, the means and spreads, the choice and its reason) and as a markdown table; the chosen
rates become factors of the size's base rate in ``lethe.scenarios.fictitious.METHOD_LR_SCALE``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def cells(results: dict) -> dict[str, dict[float, list[dict]]]:
    """{method: {lr: [{"seed", "FE", "MU", "per_epoch"}, ...]}} from a bench results file with an lr sweep;
    ``per_epoch``: {epoch: (FE, MU)} along the cell's schedule."""
    out: dict[str, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in results["runs"]:
        lr = (run.get("cell") or {}).get("sweep", {}).get("lr")
        if lr is None or run.get("status") != "ok" or not run.get("epochs"):
            continue
        last = run["epochs"][-1].get("metrics", {})
        per_epoch = {e["epoch"]: (e.get("metrics", {}).get("FE"), e.get("metrics", {}).get("MU"))
                     for e in run["epochs"] if e["epoch"] > 0}
        out[run["method"]][float(lr)].append({"seed": run["cell"].get("seed"), "FE": last.get("FE"),
                                              "MU": last.get("MU"), "per_epoch": per_epoch})
    return out


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def choose(per_lr: dict[float, list[dict]], target_mu: float, mu_floor: float = 0.9) -> dict:
    """The chosen rate for one method with the summary of every rate tried (see the module docstring)."""
    rows = {}
    for lr, seeds in sorted(per_lr.items()):
        fe, fe_sd = _mean_sd([c["FE"] for c in seeds])
        mu, mu_sd = _mean_sd([c["MU"] for c in seeds])
        rows[lr] = {"FE": fe, "FE_sd": fe_sd, "MU": mu, "MU_sd": mu_sd, "seeds": len(seeds)}
    floor = mu_floor * target_mu
    keeping = [lr for lr, r in rows.items() if r["MU"] >= floor]
    if keeping:
        lr = max(keeping, key=lambda k: (rows[k]["FE"], -k))
        reason = f"highest mean FE with mean MU >= {mu_floor:g} x the target's ({floor:.3f})"
    else:
        lr = max(rows, key=lambda k: rows[k]["MU"])
        reason = f"no rate keeps MU >= {mu_floor:g} x the target's: the least damaging one (flagged)"
    epochs = sorted({e for c in per_lr[lr] for e in c["per_epoch"]})
    along = {}
    for e in epochs:  # the chosen rate's schedule, epoch by epoch: where would --select-by fe stop?
        fe, _ = _mean_sd([c["per_epoch"].get(e, (None, None))[0] for c in per_lr[lr]])
        mu, _ = _mean_sd([c["per_epoch"].get(e, (None, None))[1] for c in per_lr[lr]])
        along[e] = {"FE": fe, "MU": mu}
    kept = [e for e, r in along.items() if r["MU"] >= floor]
    best_epoch = max(kept, key=lambda e: (along[e]["FE"], -e)) if kept else None
    return {"lr": lr, "reason": reason, "kept_utility": bool(keeping), "rates": rows, "along_schedule": along,
            "best_epoch": best_epoch}


def decisive(choice: dict, base_lr: float, target_mu: float, mu_floor: float) -> bool:
    """Whether the chosen rate beats the shared one by more than the seeds' noise: its mean FE is higher by more
    than the two spreads together, and its MU clears the floor by more than its own spread (or the shared rate
    misses the floor by more than its spread)."""
    rows, lr = choice["rates"], choice["lr"]
    if lr == base_lr or base_lr not in rows or not choice["kept_utility"]:
        return False
    c, b = rows[lr], rows[base_lr]
    floor = mu_floor * target_mu
    base_fails = b["MU"] < floor - b["MU_sd"]
    gains = c["FE"] - b["FE"] > c["FE_sd"] + b["FE_sd"] and c["MU"] - c["MU_sd"] >= floor
    return base_fails or gains


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="results.json of a `lethe bench ... --sweep lr=...` run")
    ap.add_argument("--out", required=True, help="path prefix: writes PREFIX.json and PREFIX.md")
    ap.add_argument("--mu-floor", type=float, default=0.9, help="share of the target's MU to keep (default 0.9)")
    args = ap.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    target_mu = results["reference"]["target"]["MU"]
    base_lr = results["settings"]["unlearn"]["lr"]
    chosen = {method: choose(per_lr, target_mu, args.mu_floor) for method, per_lr in sorted(cells(results).items())}
    for c in chosen.values():
        c["decisive"] = decisive(c, base_lr, target_mu, args.mu_floor)
    record = {"source": str(args.results), "size": results.get("size"), "seeds": results.get("seeds"),
              "base_lr": base_lr, "target_MU": target_mu, "mu_floor": args.mu_floor, "methods": chosen,
              "scale": {m: c["lr"] / base_lr for m, c in chosen.items()},
              "default_scale": {m: c["lr"] / base_lr for m, c in chosen.items() if c["decisive"]}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"Per-method learning rate, size {record['size']}, {record['seeds']} seeds, base lr {base_lr:g}, "
             f"target MU {target_mu:.3f}; rule: highest mean FE with mean MU >= {args.mu_floor:g} x target MU.", "",
             "| method | lr | FE (mean ± sd) | MU (mean ± sd) | chosen |", "|---|---|---|---|---|"]
    for method, c in chosen.items():
        for lr, r in c["rates"].items():
            mark = ("**chosen**" if c["kept_utility"] else "**chosen (MU below the floor at every rate)**") \
                if lr == c["lr"] else ""
            if mark and c["lr"] != base_lr:
                mark += ", beyond noise: the default" if c["decisive"] else ", within noise of the shared rate"
            if mark and c["best_epoch"] is not None:
                mark += f"; along its schedule the rule picks epoch {c['best_epoch']}"
            lines.append(f"| {method} | {lr:g} | {r['FE']:.3f} ± {r['FE_sd']:.3f} | {r['MU']:.3f} ± {r['MU_sd']:.3f} "
                         f"| {mark} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

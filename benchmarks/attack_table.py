"""Which methods' forgetting survives which attack: a table from one or more `lethe demo/bench --attacks` results.

    lethe demo --size small --methods GA+GD,NPO+GD,... --attacks relearn,quantize,... --out runs/attacks
    python benchmarks/attack_table.py runs/attacks/results.json --label "relearn lr 5e-4" \
        --out benchmarks/results/attacks-DATE-COMMIT-cpu

Per method and attack: the forget metric (P; the logit lens's last-layer log-probability for `logit-lens`)
unlearned -> attacked, the retain model's change under the same attack (the control), and recovery = change /
(target - unlearned), recomputed here by `lethe.attacks.recovery` (none when the method did not move the metric
away from the target). Writes OUT.json (the numbers) and OUT.md (the table).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lethe.attacks import recovery

METRIC = {"logit-lens": "lens_logp", "probe": "pick_true"}


def rows(results: dict) -> list[dict]:
    out = []
    for run in results["runs"]:
        final = run["epochs"][-1]["metrics"] if run["epochs"] else {}
        for name, entry in (run.get("attacks") or {}).items():
            metric = METRIC.get(name, "P")
            m = entry["metrics"].get(metric)
            if m is None:
                continue
            rec = recovery(m["unlearned"], m["attacked"], m["target"]) if "target" in m else None
            out.append({"method": run["method"], "params": run.get("params", "full"), "FE": final.get("FE"),
                        "MU": final.get("MU"), "attack": name, "options": entry.get("options"), "metric": metric,
                        "unlearned": m["unlearned"], "attacked": m["attacked"], "target": m.get("target"),
                        "retain_change": m.get("retain_change"), "recovery": rec})
    return out


def fmt(value, spec=".2f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(table: list[dict], label: str) -> str:
    attacks = list(dict.fromkeys(r["attack"] for r in table))
    methods = list(dict.fromkeys(r["method"] for r in table))
    cell = {(r["method"], r["attack"]): r for r in table}
    head = ["method (FE / MU)", *attacks]
    lines = [f"Recovery per attack ({label}): forget P unlearned → attacked, recovery in brackets; the retain "
             "model's change under the same attack in the last row.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        first = next(r for r in table if r["method"] == method)
        row = [f"{method} ({fmt(first['FE'])} / {fmt(first['MU'])})"]
        for a in attacks:
            r = cell.get((method, a))
            row.append("" if r is None else f"{r['unlearned']:.2f} → {r['attacked']:.2f} ({fmt(r['recovery'])})")
        lines.append("| " + " | ".join(row) + " |")
    control = ["retain model's change"]
    for a in attacks:
        r = next((x for x in table if x["attack"] == a and x["retain_change"] is not None), None)
        control.append("–" if r is None else f"{r['retain_change']:+.3f}")
    lines.append("| " + " | ".join(control) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="results.json files (lethe demo/bench with --attacks)")
    ap.add_argument("--label", action="append", default=None, help="what each results file measured (repeatable)")
    ap.add_argument("--out", required=True, help="path without extension: OUT.json and OUT.md are written")
    args = ap.parse_args()
    labels = args.label or [Path(p).parent.name for p in args.results]
    if len(labels) != len(args.results):
        ap.error("give one --label per results file")
    tables = {label: rows(json.loads(Path(p).read_text())) for label, p in zip(labels, args.results)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(tables, indent=1))
    Path(f"{args.out}.md").write_text("\n".join(markdown(t, label) for label, t in tables.items()))
    print(Path(f"{args.out}.md").read_text())


if __name__ == "__main__":
    main()

"""Reports for run directories written by ``lethe unlearn`` on the user's own model and data (``run.json``):
a before → after table per run with deltas and goal marks, per-epoch curves, the attacks when they ran, and
runs side by side when several are given."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Sequence

from ..util.errors import LetheError
from .markdown import ATTACK_HEADER, attack_rows, degenerate_notes, fmt_value, goal_mark, md_table, run_label

# shown first when present, in this order; every other scalar metric follows
LEAD = ("MU", "MU18", "FE", "FQ", "forget/P", "forget/ROUGE", "forget/TR", "forget/ExtractionStrength", "forget/EM",
        "retain/P", "retain/ROUGE", "mia/min_k_AUC", "mia/min_k_PrivLeak")
PLOTTED = ("MU", "FE", "forget/P", "forget/ROUGE", "retain/ROUGE", "mia/min_k_AUC")


def load_run(directory) -> dict:
    f = Path(directory) / "run.json"
    try:
        run = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LetheError(f"{f}: not readable JSON ({type(e).__name__})") from None
    if not isinstance(run, dict) or not isinstance(run.get("epochs"), list) or "method" not in run:
        raise LetheError(f"{f}: not a Lethe run record (expected 'method' and a list of 'epochs')")
    attacks = Path(directory) / "attacks.json"
    if attacks.exists():
        run["attacks"] = json.loads(attacks.read_text(encoding="utf-8")).get("attacks", {})
    run["directory"] = str(directory)
    return run


def _scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def before_after(run: dict) -> list[list]:
    """[metric, before, after, change, goal] for every scalar metric the first and last epochs both have."""
    if not run["epochs"]:
        return []
    first, last = run["epochs"][0].get("metrics", {}), run["epochs"][-1].get("metrics", {})
    keys = [k for k in LEAD if k in first and k in last]
    keys += sorted(k for k in set(first) & set(last) if k not in keys and _scalar(first[k]) and _scalar(last[k])
                   and not k.endswith(("_KS_p", "_group_p")))
    return [[k, first[k], last[k], last[k] - first[k], goal_mark(k)] for k in keys
            if _scalar(first[k]) and _scalar(last[k])]


def side_by_side(runs: Sequence[dict]) -> tuple[list[str], list[list]]:
    """(header, rows): the lead metrics of every run's final epoch."""
    keys = [k for k in LEAD if any(r["epochs"] and k in r["epochs"][-1].get("metrics", {}) for r in runs)]
    rows = [[run_label(r), *[r["epochs"][-1].get("metrics", {}).get(k) if r["epochs"] else None for k in keys]]
            for r in runs]
    return ["run", *[f"{k} {goal_mark(k)}" for k in keys]], rows


def notes(runs: Sequence[dict]) -> list[str]:
    """Why an aggregate is 0, read from each run's own record of what it averaged."""
    over = next((r.get("aggregates_over") for r in runs if r.get("aggregates_over")), {})
    return degenerate_notes({"runs": list(runs), "aggregates_over": over})


def render_markdown(runs: Sequence[dict]) -> str:
    lines = ["# Lethe report", ""]
    if len(runs) > 1:
        lines += ["## Runs side by side (final epoch)", "", md_table(*side_by_side(runs)), ""]
    lines += [f"> {note}\n" for note in notes(runs)]
    for r in runs:
        last = r["epochs"][-1]["epoch"] if r["epochs"] else 0
        lines += [f"## {run_label(r)}", "", f"Run directory: `{Path(r['directory']).name}`; status {r.get('status')}; "
                  f"epochs 0 → {last}; cost {fmt_value(r.get('cost', {}).get('wall_time_s'))} s training.", ""]
        rows = before_after(r)
        if rows:
            lines += [md_table(["metric", "before", "after", "change", "goal"], rows), ""]
        else:
            lines += ["No metric was scored both before and after (run with `--eval-at start,end`).", ""]
        if r.get("attacks"):
            lines += ["### Attacks", "", md_table(ATTACK_HEADER, attack_rows(r)), ""]
    lines += ["Goal marks: ↑ higher is better, ↓ lower, → a target value (read on the set's role: on the forget set a "
              "knowledge metric should fall)."]
    return "\n".join(lines) + "\n"


def render_html(runs: Sequence[dict]) -> str:
    from .html import attack_plot, html_table, per_epoch_plot, render_page

    sections = []
    results = {"runs": runs}
    if len(runs) > 1:
        sections.append("<h2>Runs side by side (final epoch)</h2>" + html_table(*side_by_side(runs)))
    sections += [f"<p class='note'>{html.escape(note)}</p>" for note in notes(runs)]
    keys = [k for k in PLOTTED if any(k in e.get("metrics", {}) for r in runs for e in r["epochs"])]
    if keys:
        sections.append(per_epoch_plot(results, keys, "Per epoch"))
    for r in runs:
        body = f"<h2>{html.escape(run_label(r))}</h2>"
        rows = before_after(r)
        if rows:
            body += html_table(["metric", "before", "after", "change", "goal"], rows)
        if r.get("attacks"):
            body += "<h3>Attacks</h3>" + attack_plot([r]) + html_table(ATTACK_HEADER, attack_rows(r))
        sections.append(body)
    return render_page(sections)


def render(run_dirs: Sequence) -> tuple[str, str]:
    runs = [load_run(d) for d in run_dirs]
    return render_markdown(runs), render_html(runs)


def summary_table(run: dict, limit: int = 12) -> str:
    """The few lines ``lethe unlearn`` prints when it ends: metric, before, after, change, goal."""
    rows = before_after(run)[:limit]
    if not rows:
        return ""
    width = max(len(r[0]) for r in rows)
    out = [f"{'metric':<{width}}  {'before':>9}  {'after':>9}  {'change':>9}  goal"]
    out += [f"{k:<{width}}  {fmt_value(b):>9}  {fmt_value(a):>9}  {d:>+9.4f}  {g}" for k, b, a, d, g in rows]
    return "\n".join(out)

"""The copyright scenario's report: FLAT's completion scores, VerbMem, PrivLeak and perplexity per run."""
from __future__ import annotations

from .markdown import attacks_section, final_metrics, fmt_value, goal_mark, md_table

COLUMNS = (("forget/BLEU", "BLEU"), ("forget/ROUGE", "ROUGE-L"), ("forget/VerbMem", "VerbMem"),
           ("mia/min_k_AUC", "Min-K% AUC"), ("mia/min_k_PrivLeak", "PrivLeak"),
           ("heldout/PPL", "PPL held-out chapters"),
           ("background/PPL", "PPL background"))


def _headers() -> list[str]:
    """Column headers with their declared goals; ROUGE-L F1 of a completion, like BLEU, aims at the retain model."""
    roles = {"heldout": "holdout", "background": "utility"}
    return [f"{label} {goal_mark('forget/BLEU' if key == 'forget/ROUGE' else key, roles)}" for key, label in COLUMNS]


def summary_rows(results: dict) -> tuple[list[str], list[list]]:
    """The reference models and every run's final epoch, with FLAT's gap to the retain model."""
    ref = results.get("reference", {})
    goal = ref.get("retain", {})

    def gap(m):  # |ΔBLEU| + |ΔROUGE-L| to the retain model: how far from never having seen the book
        if not all(k in m and k in goal for k in ("forget/BLEU", "forget/ROUGE")):
            return None
        return abs(m["forget/BLEU"] - goal["forget/BLEU"]) + abs(m["forget/ROUGE"] - goal["forget/ROUGE"])

    header = ["method", "params", "epochs", *_headers(), "gap to retain ↓", "time (s)", "FLOPs"]
    rows = [[f"*{n} model*", "–", 0, *[m.get(k) for k, _ in COLUMNS], gap(m), None, None]
            for n, m in ref.items()]
    for run in results.get("runs", []):
        m, c = final_metrics(run), run.get("cost", {})
        rows.append([run["method"], run.get("params", "full"), run["epochs"][-1]["epoch"] if run["epochs"] else 0,
                     *[m.get(k) for k, _ in COLUMNS], gap(m), c.get("wall_time_s"), c.get("flops")])
    return header, rows


def render_copyright_report(results: dict) -> str:
    data = results.get("data", {})
    out = [f"# Lethe report: {results['scenario']}", "",
           f"Book: *{data.get('book')}*, "
           + (f"an invented novel of {data.get('chapters')} chapters" if data.get("invented", True) else
              f"your text cut at blank lines into {data.get('chapters')} parts")
           + ". Forget: "
           f"{data.get('forget')} excerpts of {data.get('excerpt_tokens')} tokens from {data.get('forget_chapters')} "
           f"chapters; retain: {data.get('retain')} excerpts (other chapters and background prose); "
           f"{data.get('heldout_chapters')} chapters no model saw give the membership-inference holdout and the "
           "held-out perplexity.", "",
           "BLEU and ROUGE-L F1: the greedy continuation of each forget excerpt's first half against its second "
           "half (FLAT). VerbMem: MUSE's ROUGE-L × 100 of a continuation of the excerpt's first "
           f"{results.get('settings', {}).get('verbmem_prefix')} tokens. PrivLeak (MUSE's sign): (AUC_retain − AUC) / "
           "(1 − AUC_retain) × 100 of Min-K% forget vs held-out chapters: −100 still memorized, 0 the goal. Gap to "
           "retain: |ΔBLEU| + |ΔROUGE-L| to the retain model "
           "(0 = continues the book like a model that never read those chapters).", "",
           "## Final epoch", ""]
    header, rows = summary_rows(results)
    out += [md_table(header, rows), ""]
    out += attacks_section(results)
    out += ["## Per epoch", ""]
    for run in results.get("runs", []):
        rows = [[e["epoch"], e.get("losses", {}).get("forget"), *[e.get("metrics", {}).get(k) for k, _ in COLUMNS]]
                for e in run["epochs"]]
        out += [f"### {run['method']} ({run.get('params', 'full')})", "",
                md_table(["epoch", "forget loss", *_headers()], rows), ""]
        if run.get("status") != "ok":
            out += [f"**{run['method']}**: {run.get('message')}", ""]
    out.append(f"Total wall time: {fmt_value(results.get('wall_time_s'))} s.")
    return "\n".join(out) + "\n"


def copyright_summary(results: dict) -> tuple[list[str], str]:
    from .html import html_table, per_epoch_plot

    figs = [per_epoch_plot(results, ["forget/BLEU", "forget/ROUGE", "heldout/PPL"],
                           "Forget-excerpt completion and held-out perplexity per epoch")]
    header, rows = summary_rows(results)
    return figs, html_table(header, rows)

"""A readable report.md from results.json."""
from __future__ import annotations

import math
from pathlib import Path

from ..util.io import write_text

SUMMARY = ("MU", "MU18", "FE", "FQ", "forget/ROUGE", "forget/P", "forget/TR", "forget/CS", "retain/ROUGE", "retain/P",
           "neighbour/ROUGE", "neighbour/P", "mia/min_k_AUC", "mia/min_k_pp_AUC", "mia/min_k_PrivLeak")


def present_keys(results: dict, keys) -> list[str]:
    """The summary keys some run or reference model actually has."""
    pools = [m for m in results.get("reference", {}).values()] + [final_metrics(r) for r in results.get("runs", [])]
    return [k for k in keys if any(k in p for p in pools)]


def fmt_value(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.2e}"
        return f"{x:.3f}"
    return str(x)


def goal_mark(key: str, roles: dict | None = None) -> str:
    """↑ / ↓ / → target for a result key, from the metric registry's declared goal (? when none is declared)."""
    from ..evaluation.metric_registry import goal_of

    goal = goal_of(key, roles)
    return {"higher": "↑", "lower": "↓", None: "?"}.get(goal, f"→ {goal}")


def extraction_columns() -> list[str]:
    """The memorized-sequence tables' metric headers, each with its declared goal."""
    names = (("forget/EL10", "EL_10"), ("forget/MA", "MA"), ("heldout/PPL", "held-out PPL"),
             ("mia/min_k_AUC", "Min-K% AUC vs validation"), ("mia/min_k_PrivLeak", "PrivLeak"))
    return [f"{label} {goal_mark(key)}" for key, label in names]


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt_value(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run_label(run: dict) -> str:
    """How reports name a run: method, parameterisation, sweep point, seed, a fixed reference."""
    parts = [run.get("params", "full"), *cell_parts(run)] + (["fixed reference"] if run.get("reference") == "fixed"
                                                             else [])
    return f"{run['method']} ({', '.join(parts)})"


def cell_parts(run: dict) -> list[str]:
    """What tells a benchmark cell from its method's other cells: its sweep point and (a seed past the first) seed."""
    from .comparison import point_label

    cell = run.get("cell") or {}
    return ([point_label(cell["sweep"])] if cell.get("sweep") else []) + \
        ([f"seed {cell['seed']}"] if cell.get("seed") else [])


def method_cell(run: dict) -> str:
    """A results table's method column: the method, with the sweep point and seed of a benchmark cell."""
    extra = cell_parts(run)
    return f"{run['method']} ({', '.join(extra)})" if extra else run["method"]


def warning_lines(runs) -> list[str]:
    """Each run's failure, and each distinct warning once with the runs that gave it."""
    out, seen = [], {}
    for run in runs:
        if run.get("status") != "ok":
            out += ["", f"**{run_label(run)}**: {run.get('message')}"]
        for warning in run.get("warnings", []):
            seen.setdefault(warning, []).append(run_label(run))
    for warning, labels in seen.items():
        who = labels[0] if len(labels) == 1 else f"{labels[0]} and {len(labels) - 1} more run(s)"
        out += ["", f"Warning ({who}): {warning}"]
    return out


def final_metrics(run: dict) -> dict:
    return run["epochs"][-1].get("metrics", {}) if run["epochs"] else {}


METRIC_ORDER = ("ROUGE", "P", "TR", "TE", "CS", "ES")  # the closer-look paper's column order


def per_set_tables(results: dict) -> list[tuple[str, list[str], list[list]]]:
    """(set, metric names, rows) per evaluated set, one row per reference model and run (closer-look Table 8)."""
    pools = [(f"*{n} model*", m) for n, m in results.get("reference", {}).items()]
    pools += [(f"{r['method']} ({r.get('params', 'full')})", final_metrics(r)) for r in results.get("runs", [])]
    sets = list(dict.fromkeys(k.split("/")[0] for _, m in pools for k in m if "/" in k))
    tables = []
    for s in sets:
        names = {k.split("/", 1)[1] for _, m in pools for k in m if k.startswith(s + "/") and not k.endswith("_values")}
        metrics = [n for n in METRIC_ORDER if n in names] + sorted(names - set(METRIC_ORDER))
        tables.append((s, metrics, [[label, *[m.get(f"{s}/{k}") for k in metrics]] for label, m in pools]))
    return tables


def _ms(pair) -> str:
    return "–" if pair is None else f"{fmt_value(pair[0])} ± {fmt_value(pair[1])}"


def comparison_tables(results: dict) -> dict | None:
    """The comparison over sweep points and seeds, ready to render (None when the runs form none):
    ``mu`` (MU18 where present), ``rows`` (per method and point), ``fronts`` ({"FE"|"FQ": per method}),
    ``points`` (header, rows: mean ± sd and front markers) and ``best`` (header, rows: best MU at FE ≥ x)."""
    from .comparison import THRESHOLDS, best_at, fronts_by_method, is_comparison, point_label, summarize

    if not is_comparison(results):
        return None
    mu = "MU18" if any("MU18" in final_metrics(r) for r in results.get("runs", [])) else "MU"
    rows = summarize(results["runs"], (mu, "FE", "FQ"))
    fronts = {x: fronts_by_method(rows, x, mu) for x in ("FE", "FQ")}
    on = {x: {id(r) for f in fronts[x].values() for r in f} for x in fronts}
    points = [[r["method"], point_label(r["point"]), r["n"] - r["failed"], _ms(r.get(mu)), _ms(r.get("FE")),
               _ms(r.get("FQ")), ("★" if id(r) in on["FE"] else "") + ("☆" if id(r) in on["FQ"] else "")]
              for r in sorted(rows, key=lambda r: (r["method"], sorted(r["point"].items())))]
    best = [[method, *[("–" if r is None else f"{_ms(r[mu])} ({point_label(r['point'])})")
                       for r in (per[t] for t in THRESHOLDS)]]
            for method, per in sorted(best_at(rows, "FE", mu, THRESHOLDS).items())]
    return {"mu": mu, "rows": rows, "fronts": fronts,
            "points": (["method", "point", "seeds", mu, "FE", "FQ", "front"], points),
            "best": (["method", *[f"FE ≥ {t}" for t in THRESHOLDS]], best)}


def comparison_section(results: dict) -> list[str]:
    """Per method: each sweep point's mean ± spread over seeds, its Pareto front of MU against FE (and FQ),
    and the best MU reachable at FE ≥ x."""
    c = comparison_tables(results)
    if c is None:
        return []
    mu = c["mu"]
    return ["", "## Comparison over sweep points and seeds", "",
            f"Each row: one method at one sweep point, mean ± standard deviation over {results.get('seeds', 1)} "
            f"unlearning seed(s) (the starting models are shared). ★ marks the method's Pareto front of {mu} "
            f"against FE (no other point of the same method is at least as good on both and better on one); ☆ the "
            f"front of {mu} against FQ.", "", md_table(*c["points"]),
            "", f"### Best {mu} at FE ≥ x (over the method's sweep points; – = never reached)", "",
            md_table(*c["best"])]


def stopping_rows(results: dict, *, statistic: str = "min_k", threshold: float = 0.05, min_epochs: int = 1,
                  test: str = "KS") -> list:
    """Per run: the epoch ``--stop-when indistinguishable`` stops at (the first from ``min_epochs`` whose
    forget-vs-holdout p-value of ``statistic`` is ≥ ``threshold``: no retain model needed; ``test`` "KS" or
    "group" for ``--stop-test group``) next to the epoch an oracle picks by FQ (its maximum, the earliest on
    ties), with MU and FQ at both. Runs without per-epoch p-values and FQ are left out."""
    key, rows = f"mia/{statistic}_{test}_p", []
    for run in results.get("runs", []):
        epochs = [e for e in run["epochs"] if e.get("epoch", 0) >= 1 and e.get("metrics")]
        scored = [e for e in epochs if key in e["metrics"] and "FQ" in e["metrics"]]
        if not scored:
            continue
        rule = next((e for e in scored if e["epoch"] >= min_epochs and e["metrics"][key] >= threshold), None)
        oracle = max(scored, key=lambda e: e["metrics"]["FQ"])
        at = (lambda e, k: e["metrics"].get(k) if e is not None else None)
        rows.append([run["method"], run.get("params", "full"), rule["epoch"] if rule else "never",
                     at(rule, key), at(rule, "MU"), at(rule, "FQ"), oracle["epoch"], at(oracle, "MU"),
                     at(oracle, "FQ"), scored[-1]["epoch"]])
    return rows


STOPPING_HEADER = ["method", "params", "rule's epoch", "p there", "MU there", "FQ there", "oracle's epoch",
                   "MU there", "FQ there", "epochs run"]
# The stopping rule's tests as the reports name them: (metric infix, description).
STOPPING_TESTS = (("KS", "two-sample KS over QA pairs, `--stop-test ks`"),
                  ("group", "permutation of whole authors, `--stop-test group`"))


def stopping_section(results: dict) -> list[str]:
    out = []
    for test, how in STOPPING_TESTS:
        if rows := stopping_rows(results, test=test):
            out += ["", f"Test: {how}.", "", md_table(STOPPING_HEADER, rows)]
    if not out:
        return []
    return ["", "## Stopping without a retain model", "",
            "`--stop-when indistinguishable` stops at the first epoch where the forget set's Min-K% scores cannot "
            "be told from held-out authors' (p ≥ 0.05; no retain model). The oracle picks the epoch with the "
            "highest FQ, which needs the retain model. Both read the same per-epoch evaluations.", *out]


def write_report(results: dict, path: str | Path) -> Path:
    return write_text(path, render_report(results))


def attack_rows(run: dict) -> list[list]:
    """[attack, metric, unlearned, attacked, retain model's change, beyond control, recovery, Q or R] per attack
    and metric of a run that was attacked."""
    rows = []
    for name, entry in (run.get("attacks") or {}).items():
        for metric, r in entry.get("metrics", {}).items():
            rows.append([name, metric, r.get("unlearned"), r.get("attacked"), r.get("retain_change"),
                         r.get("beyond_control"), r.get("recovery"), r.get("Q", r.get("R"))])
    return rows


ATTACK_HEADER = ["attack", "metric", "unlearned", "attacked", "retain model's change", "beyond control", "recovery",
                 "robustness (Q/R)"]
ATTACKS_NOTE = ("Each attack tries to bring the forgotten answers back; the retain model (never trained on them) "
                "gets the same attack as the control. beyond control = the unlearned model's change minus the "
                "retain model's; recovery = change / (target − unlearned); robustness 1 = the attack changes "
                "nothing beyond what it does to a model that never knew.")


def degenerate_notes(results: dict) -> list[str]:
    """A harmonic mean (MU, MU18) is 0 as soon as one of its values is: say which values made it 0, for which
    models, so a flat MU plot is read as what it is."""
    models = [(f"{name} model", m) for name, m in results.get("reference", {}).items()]
    models += [(run_label(r), final_metrics(r)) for r in results.get("runs", [])]
    grouped: dict[tuple, list[str]] = {}
    for aggregate in ("MU", "MU18"):
        parts = results.get("aggregates_over", {}).get(aggregate) or []
        for label, metrics in models:
            zeros = tuple(k for k in parts if metrics.get(k) == 0)
            if metrics.get(aggregate) == 0 and zeros:
                grouped.setdefault((aggregate, zeros), []).append(label)
    notes = []
    for (aggregate, zeros), labels in grouped.items():
        shown = ", ".join(zeros[:4]) + (f" and {len(zeros) - 4} more" if len(zeros) > 4 else "")
        who = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")
        notes.append(f"{aggregate} is 0 for {who}: {shown} {'is' if len(zeros) == 1 else 'are'} 0, and a harmonic "
                     "mean is 0 when any of its values is.")
    return notes


def attack_table_rows(results: dict) -> list[list]:
    """[run, *attack_rows] for every attacked run of a results file."""
    return [[run_label(r), *row] for r in results.get("runs", []) for row in attack_rows(r)]


def render_report(results: dict) -> str:
    """report.md's text for the fictitious and real-world scenarios, section by section."""
    out = [f"# Lethe report: {results['scenario']}", ""]
    for section in (_overview, _methods_section, comparison_section, stopping_section, _per_set_section,
                    attacks_section, _trajectories_section, _cost_section, _samples_section):
        out += section(results)
    out.append(f"Total wall time: {fmt_value(results.get('wall_time_s'))} s.")
    return "\n".join(out) + "\n"


def _overview(results: dict) -> list[str]:
    model, data = results.get("model", {}), results.get("data", {})
    out = [f"Model: {model.get('kind', '?')} ({model.get('parameters', 0):,} parameters). "
           f"Forget set: {data.get('forget', '?')} QA pairs; retain set: {data.get('retain', '?')}. "
           f"Seed {results.get('seed')}"
           + (f", size `{results.get('size')}`." if results.get("size") != "own" else ".")]
    if known := data.get("known_share"):
        out.append("Answered correctly before unlearning (whole-word match): "
                   + ", ".join(f"{k.replace('_', ' ')} {v:.0%}" for k, v in known.items())
                   + (f"; the kept forget questions, within the evaluation's token budget: "
                      f"{data['forget_answered_before']:.0%}." if "forget_answered_before" in data else "."))
    return out


def _methods_section(results: dict) -> list[str]:
    """The final epoch of every run next to the target and retain models, with what the aggregates are over."""
    ref, over = results.get("reference", {}), results.get("aggregates_over", {})
    missing = results.get("metrics_unavailable", {})
    out = ["", "## Methods (final epoch)", "",
           "FQ: KS-test p-value of forget-set truth ratios vs the retain model (higher = closer to a model that "
           "never saw the forget set). MU: TOFU's harmonic mean of ROUGE, P, TR on the utility sets."
           + (f" MU18: the closer-look harmonic mean, here over {len(over['MU18'])} values "
              f"({', '.join(sorted({k.split('/')[1] for k in over['MU18']}))})." if over.get("MU18") else "")
           + (f" FE: 1 − mean of forget {', '.join(k.split('/')[1] for k in over['FE'])}." if over.get("FE") else "")
           + (f" Embeddings for CS: `{results.get('embedding_model')}`." if results.get("embedding_model") else ""),
           ""]
    for note in degenerate_notes(results):
        out += [f"> {note}", ""]
    for metric, why in missing.items():
        out += [f"- {metric} unavailable: {why}"]
    if missing:
        out.append("")
    summary = present_keys(results, SUMMARY)
    header = ["method", "params", "status", "epochs", *summary, "time (s)", "FLOPs", "trainable %"]
    rows = []
    for name in [n for n in ("target", "retain") if n in ref]:
        m = ref.get(name, {})
        rows.append([f"*{name} model*", "–", "reference", 0, *[m.get(k) for k in summary], None, None, None])
    for run in results.get("runs", []):
        m, c = final_metrics(run), run.get("cost", {})
        rows.append([method_cell(run), run.get("params", "full"), run.get("status", "ok"),
                     run["epochs"][-1]["epoch"] if run["epochs"] else 0, *[m.get(k) for k in summary],
                     c.get("wall_time_s"), c.get("flops"), c.get("trainable_percent")])
    out.append(md_table(header, rows))
    out += ["", "Goals: " + ", ".join(f"{k} {goal_mark(k, results.get('set_roles'))}" for k in summary)
            + " (`lethe metrics` describes each metric)."]
    return out + warning_lines(results.get("runs", []))


def _per_set_section(results: dict) -> list[str]:
    out = ["", "## Per-set metrics (final epoch)", ""]
    for set_name, metrics, rows in per_set_tables(results):
        out += [f"### {set_name}", "", md_table(["model", *metrics], rows), ""]
    return out


def attacks_section(results: dict) -> list[str]:
    if not (rows := attack_table_rows(results)):
        return []
    return ["## Attacks: does the forgetting hold?", "", ATTACKS_NOTE, "", md_table(["run", *ATTACK_HEADER], rows), ""]


def _trajectories_section(results: dict) -> list[str]:
    out = ["## Trajectories (per epoch)", ""]
    keys = present_keys(results, ("MU", "MU18", "FE", "FQ", "forget/ROUGE", "forget/P", "retain/ROUGE",
                                  "neighbour/ROUGE"))
    for run in results.get("runs", []):
        rows = [[e["epoch"], e.get("losses", {}).get("forget"), e.get("losses", {}).get("regularizer"),
                 *[e.get("metrics", {}).get(k) for k in keys]] for e in run["epochs"]]
        out += [f"### {run['method']} ({run.get('params', 'full')})", "",
                md_table(["epoch", "forget loss", "reg. loss", *keys], rows), ""]
    return out


def _cost_section(results: dict) -> list[str]:
    out = ["## Cost", "", "FLOPs ≈ N · (6 · (tokens trained + FILA Fisher tokens) + 2 · forward-only tokens), "
           "N = parameters on the path (with LoRA the backward skips frozen weights, so this overstates it). "
           "Peak memory: CUDA max allocated, or the process's peak RSS on CPU (cumulative over the process).", ""]
    rows = []
    for run in results.get("runs", []):
        c = run.get("cost", {})
        ev = c.get("evaluation") or {}
        rows.append([run["method"], run.get("params", "full"), c.get("params_trainable"), c.get("trainable_percent"),
                     c.get("epochs"), c.get("steps"), c.get("tokens_trained"), c.get("tokens_fisher"),
                     c.get("tokens_forward_only"), c.get("flops"), c.get("wall_time_s"),
                     (c.get("peak_memory_bytes") or 0) / 2**20, ev.get("evaluation_s"),
                     ev.get("generation_tokens_per_s")])
    return out + [md_table(["method", "params", "trainable", "trainable %", "epochs", "steps", "tokens trained",
                            "Fisher tokens", "fwd-only tokens", "FLOPs", "time (s)", "peak mem (MiB)",
                            "evaluation (s)", "generated tok/s"], rows), ""]


def _samples_section(results: dict) -> list[str]:
    out = []
    for set_name in ("forget", "retain", "neighbour"):
        samples = results.get("reference_samples", {}).get("target", {}).get(set_name, [])
        if not samples:
            continue
        out += [f"## Sample generations on the {set_name} set (final epoch)", ""]
        for i, s in enumerate(samples):
            out += [f"**Q:** {s['question']}  ", f"**truth:** {s['answer']}  ",
                    f"**before unlearning:** {s['generated']}  "]
            for run in results.get("runs", []):
                gen = run.get("samples", {}).get(set_name, [])
                if i < len(gen):
                    out.append(f"**{run['method']} ({run.get('params', 'full')}):** {gen[i]['generated']}  ")
            out.append("")
    return out


def write_memorized_report(results: dict, path: str | Path) -> Path:
    return write_text(path, render_memorized_report(results))


def render_memorized_report(results: dict) -> str:
    """Report for memorized-sequence unlearning, laid out like the IHL seed's Table 1."""
    th, ref = results["thresholds"], results["reference"]["target"]
    retain = results["reference"].get("retain", {})
    data = results.get("data", {})
    out = [f"# Lethe report: {results['scenario']}", "",
           f"Forget {data.get('forget')} canaries per request ({data.get('requests')} request(s)), "
           f"{data.get('canary_tokens')} tokens each, seen {data.get('repeats')}x in training. "
           f"Stopping rule: forget-set mean EL_10 ≤ {th['el']:.3f} and MA ≤ {th['ma']:.3f} "
           f"(the values on {data.get('validation')} canaries never trained on).", "",
           f"Before unlearning: forget EL_10 {ref['forget/EL10']:.3f}, MA {ref['forget/MA']:.3f}, "
           f"held-out PPL {ref['heldout/PPL']:.2f}."
           + (f" Min-K% AUC of the forget canaries vs the validation canaries: {ref['mia/min_k_AUC']:.3f} before "
              f"unlearning, {retain['mia/min_k_AUC']:.3f} for a model trained without them (PrivLeak's reference: "
              "MUSE's PrivLeak = (AUC_retain − AUC) / (1 − AUC_retain) × 100: −100 still memorized, 0 the goal)."
              if "mia/min_k_AUC" in ref and "mia/min_k_AUC" in retain else ""),
           "",
           "## Runs (first request)", ""]
    rows = []
    for run in results["runs"]:
        m, c = final_metrics(run), run.get("cost", {})
        epochs = run.get("epochs_to_success")
        rows.append([run["method"], run["params"], c.get("trainable_percent"),
                     epochs if epochs else f"✗ ({run['epochs'][-1]['epoch'] if run['epochs'] else 0})",
                     m.get("forget/EL10"), m.get("forget/MA"), m.get("heldout/PPL"), m.get("mia/min_k_AUC"),
                     m.get("mia/min_k_PrivLeak"), c.get("flops"), c.get("wall_time_s")])
    out += [md_table(["method", "params", "trainable %", "epochs (✗ = unsuccessful)", *extraction_columns(),
                      "FLOPs", "time (s)"], rows), ""]
    out += attacks_section(results)
    out += ["## Per epoch", ""]
    for run in results["runs"]:
        out += [f"### {run['method']} ({run['params']})", ""]
        rows = [[e["epoch"], e.get("losses", {}).get("forget"), e.get("losses", {}).get("regularizer"),
                 e.get("metrics", {}).get("forget/EL10"), e.get("metrics", {}).get("forget/MA"),
                 e.get("metrics", {}).get("heldout/PPL")] for e in run["epochs"]]
        out += [md_table(["epoch", "forget loss", "reg. loss", "EL_10", "MA", "held-out PPL"], rows), ""]
        if run.get("requests"):
            rows = [[r["request"], "yes" if r["success"] else "no", r.get("epochs_to_success"),
                     final_metrics(r).get("forget/EL10"), final_metrics(r).get("forget/MA"),
                     final_metrics(r).get("heldout/PPL")] for r in run["requests"]]
            out += ["Continual requests:", "", md_table(["request", "success", "epochs", "EL_10", "MA", "held-out PPL"],
                                                      rows), ""]
    out.append(f"Total wall time: {fmt_value(results.get('wall_time_s'))} s.")
    return "\n".join(out) + "\n"

"""The continual scenario's report: MU, FE and FQ after each request, per method and reference choice."""
from __future__ import annotations

from .markdown import attacks_section, final_metrics, fmt_value, md_table, run_label

PER_REQUEST = ("MU", "FE", "FQ", "forget/ROUGE", "retain/ROUGE")


def request_points(run: dict) -> list[tuple[int, dict]]:
    """(request, metrics after it) for every request of a run; request 0 is the target model."""
    return [(e["epoch"], e.get("metrics", {})) for e in run.get("epochs", [])]


def wide_rows(results: dict, key: str) -> tuple[list[str], list[list]]:
    """One row per run (and one for the retain models): ``key`` after each request."""
    n = results.get("requests", 0)
    header = ["method", *[f"after {k}" for k in range(n + 1)]]
    # retain model k never saw request 1..k's authors: the ideal "after k" (none before any request)
    rows = [["*retain models*", None, *[m.get(key) for m in results.get("reference_requests", [])]]]
    for run in results.get("runs", []):
        values = dict((k, m.get(key)) for k, m in request_points(run))
        rows.append([run_label(run), *[values.get(k) for k in range(n + 1)]])
    return header, rows


def render_continual_report(results: dict) -> str:
    data = results.get("data", {})
    n = results.get("requests", 0)
    out = [f"# Lethe report: {results['scenario']}", "",
           f"{n} requests of {data.get('per_request')} QA pairs each ({results.get('forget_percent')} % of "
           f"{data.get('authors')} authors per request), applied one after another to one model; the retain set "
           f"shrinks to {data.get('retain_at_end')} QA pairs. After each request the model is scored on the "
           "cumulative forget set (everything forgotten so far), a retain sample and the general-knowledge sets. "
           "FQ compares the forget set's truth ratios with a retain model fine-tuned without the cumulative forget "
           "set. NPO/DPO/KL reference: the model before each request (moving) or the starting model (fixed). "
           f"Seed {results.get('seed')}, size `{results.get('size')}`.", ""]
    for key in ("MU", "FE", "FQ"):
        header, rows = wide_rows(results, key)
        out += [f"## {key} after each request", "", md_table(header, rows), ""]
    out += ["## After the last request", ""]
    header = ["method", "status", *PER_REQUEST, "time (s)", "tokens trained", "FLOPs"]
    rows = []
    for run in results.get("runs", []):
        m, c = final_metrics(run), run.get("cost", {})
        rows.append([run_label(run), run.get("status"), *[m.get(k) for k in PER_REQUEST], c.get("wall_time_s"),
                     c.get("tokens_trained"), c.get("flops")])
    out += [md_table(header, rows), ""]
    out += ["## Per request", ""]
    for run in results.get("runs", []):
        rows = [[k, *[m.get(key) for key in PER_REQUEST]] for k, m in request_points(run)]
        out += [f"### {run_label(run)}", "", md_table(["request", *PER_REQUEST], rows), ""]
        for r in run.get("requests", []):
            if r.get("status") != "ok":
                out += [f"Request {r.get('request')}: {r.get('message')}", ""]
    out += attacks_section(results)
    out.append(f"Total wall time: {fmt_value(results.get('wall_time_s'))} s.")
    return "\n".join(out) + "\n"


def continual_summary(results: dict) -> tuple[list[str], str]:
    """HTML: MU, FE and FQ against the request number, and the wide MU table."""
    from .html import html_table, per_epoch_plot

    # the retain models (never trained on the authors forgotten so far) are what each request should reach
    goal = {key: [(k + 1, m[key]) for k, m in enumerate(results.get("reference_requests", [])) if key in m]
            for key in ("MU", "FE")}
    figs = [per_epoch_plot(results, ["MU", "FE", "FQ"], "Model utility, forget efficacy and forget quality after "
                           "each request", xlabel="requests applied", goal=goal, goal_label="retain models")]
    tables = []
    for key in ("MU", "FE", "FQ"):
        header, rows = wide_rows(results, key)
        tables.append(f"<h3>{key} after each request</h3>" + html_table(header, rows))
    return figs, "".join(tables)

"""A self-contained report.html (plots embedded as PNG data, no network) from results.json files."""
from __future__ import annotations

import base64
import html
import io
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from .markdown import (
    ATTACK_HEADER,
    ATTACKS_NOTE,
    attack_table_rows,
    degenerate_notes,
    extraction_columns,
    final_metrics,
    fmt_value,
    goal_mark,
    method_cell,
    per_set_tables,
    present_keys,
    run_label,
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1d1d1f;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
h3{font-size:1.05rem}table{border-collapse:collapse;font-size:.82rem;margin:.6rem 0 1.2rem}
th,td{border:1px solid #d0d0d0;padding:.25rem .5rem;text-align:right}th{background:#f3f3f5}
td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:.9rem}
.figs{display:flex;flex-wrap:wrap;gap:1rem}.figs img{border:1px solid #eee}img{max-width:100%;height:auto}
.sample{font-size:.85rem;margin:.4rem 0 1rem;padding:.5rem;background:#fafafa;border-left:3px solid #aac}
.bad{color:#b00}"""


def plotting_available() -> bool:
    """Whether matplotlib is installed (the ``plots`` extra): without it reports keep their tables and say so."""
    import importlib.util

    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # a module entry set to None: treated as absent
        return False


NO_PLOTS = ("<p class='note bad'>Figures left out: they need matplotlib (pip install 'lethe-unlearn[plots]'); "
            "the tables below are complete.</p>")


def _figure(plot):
    """A plot function that gives an empty string, not an ImportError, where matplotlib is not installed."""
    import functools

    @functools.wraps(plot)
    def draw(*args, **kwargs) -> str:
        return plot(*args, **kwargs) if plotting_available() else ""
    return draw


FIGURE_FORMATS = ("pdf", "svg", "png")
_EXPORT: dict = {}  # while exporting_figures() is active: where each figure is also written, and in what formats


@contextmanager
def exporting_figures(directory, formats: Sequence[str] = ("pdf", "svg")) -> Iterator[list]:
    """Every figure drawn inside the block is also written to ``directory`` (vector PDF/SVG for a paper), named
    after its title; yields the list of files written."""
    written: list = []
    _EXPORT.update(dir=Path(directory), formats=tuple(formats), written=written, names=set())
    try:
        yield written
    finally:
        _EXPORT.clear()


def _export(fig) -> None:
    import re

    from ..util.io import atomic_write

    base = re.sub(r"[^a-z0-9]+", "-", (fig.get_label() or "figure").lower()).strip("-") or "figure"
    name, n = base, 2
    while name in _EXPORT["names"]:
        name, n = f"{base}-{n}", n + 1
    _EXPORT["names"].add(name)
    for fmt in _EXPORT["formats"]:
        path = _EXPORT["dir"] / f"{name}.{fmt}"
        atomic_write(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=300, bbox_inches="tight"))
        _EXPORT["written"].append(path)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    if _EXPORT:
        _export(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    alt = html.escape(fig.get_label() or "plot")
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


# Ten well-separated colours, then the same colours with another line style / marker: 30 runs stay apart, and a
# run keeps its style in every figure of a report (the style follows the run's place in results.json).
STYLES = ("-", "--", ":")
MARKERS = ("o", "^", "D")


def run_style(i: int) -> dict:
    import matplotlib

    return {"color": matplotlib.colormaps["tab10"](i % 10), "linestyle": STYLES[(i // 10) % 3],
            "marker": MARKERS[(i // 10) % 3]}


def _series(run: dict, key: str):
    pts = [(e["epoch"], e.get("metrics", {}).get(key)) for e in run.get("epochs", [])]
    return [(x, y) for x, y in pts if y is not None and not (isinstance(y, float) and math.isnan(y))]


@_figure
def _trajectory_plot(results: dict, x_key: str, y_key: str, *, logx: bool = False, title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), num=title)
    for i, run in enumerate(results.get("runs", [])):
        xs = dict(_series(run, x_key))
        ys = dict(_series(run, y_key))
        epochs = [e for e in xs if e in ys]
        if not epochs:
            continue
        px, py = [xs[e] for e in epochs], [ys[e] for e in epochs]
        style = run_style(i)
        ax.plot(px, py, linestyle=style["linestyle"], color=style["color"], alpha=0.6, lw=1)
        ax.scatter(px, py, s=[18 + 22 * e for e in epochs], color=style["color"], marker=style["marker"], alpha=0.85,
                   label=run_label(run), edgecolors="white", linewidths=0.5)
    for name, marker, color in (("target", "s", "black"), ("retain", "*", "gold")):
        m = results.get("reference", {}).get(name, {})
        if x_key in m and y_key in m:
            ax.scatter([m[x_key]], [m[y_key]], marker=marker, s=160, color=color, edgecolors="black", zorder=5,
                       label=f"{name} model")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x_key + (" (log scale)" if logx else ""))
    ax.set_ylabel(y_key)
    ax.set_title(title + "  (marker size = epoch)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to name when no run has both metrics
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return _png(fig)


PANELS_PER_ROW = 3


def _panel_grid(plt, n: int, panel: tuple[float, float], title: str):
    """(figure, the n axes): panels of ``panel`` inches, at most three a row so that a page (and a printed column)
    stays readable at any number of panels; the unused cells of the last row hidden."""
    ncols = min(PANELS_PER_ROW, n)
    nrows = math.ceil(n / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows + 0.5), num=title,
                             squeeze=False, layout="constrained")
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _named_handles(axes) -> dict:
    """{label: handle} over every panel, for one legend: a line drawn in some panels only is still named."""
    named: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            named.setdefault(label, handle)
    return named


@_figure
def per_epoch_plot(results: dict, keys: Sequence[str], title: str, thresholds: dict | None = None,
                    xlabel: str = "epoch", goal: dict | None = None, goal_label: str = "goal"):
    """One panel per metric, a line per run. ``thresholds``: {key: value} drawn flat; ``goal``: {key:
    [(x, y), ...]} drawn dashed (the retain models' values request by request, for example)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = _panel_grid(plt, len(keys), (4.3, 3.3), title)
    for ax, key in zip(axes, keys):
        for i, run in enumerate(results.get("runs", [])):
            pts = _series(run, key)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ms=3, label=run_label(run), **run_style(i))
        for name, color, line in (("target", "black", "-"), ("retain", "goldenrod", "--")):
            value = results.get("reference", {}).get(name, {}).get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                ax.axhline(value, color=color, ls=line, lw=1, alpha=0.7, label=f"{name} model")
        if thresholds and key in thresholds:
            ax.axhline(thresholds[key], color="red", ls="--", lw=1, label="validation threshold")
        if goal and goal.get(key):
            ax.plot([p[0] for p in goal[key]], [p[1] for p in goal[key]], "k--", lw=1.2, label=goal_label)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and requests are whole numbers
        ax.grid(alpha=0.3)
    if named := _named_handles(axes):
        fig.legend(list(named.values()), list(named), fontsize=8, loc="outside lower center",
                   ncols=min(3, len(named)), frameon=False)
    fig.suptitle(title, fontsize=11)
    return _png(fig)


ATTACK_METRIC = {"logit-lens": "lens_logp", "probe": "pick_true"}  # what a probe's panel shows; P for the others


@_figure
def attack_plot(runs: Sequence[dict]) -> str:
    """A panel per attack: each run's forget metric unlearned (light) and attacked (dark), the target model's
    value (black) and the retain model's under the same attack (gold, dashed): the control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    attacked = [r for r in runs if r.get("attacks")]
    names = list(dict.fromkeys(a for r in attacked for a in r["attacks"]))
    if not names:
        return ""
    fig, axes = _panel_grid(plt, len(names), (max(4.3, 0.45 * len(attacked) + 1.5), 3.6),
                            "Attacks: forget metric before and after")
    for ax, name in zip(axes, names):
        rows = [(run_label(r), r["attacks"][name]["metrics"]) for r in attacked if name in r["attacks"]]
        metric = ATTACK_METRIC.get(name, "P") if all(ATTACK_METRIC.get(name, "P") in m for _, m in rows) else \
            next(iter(rows[0][1]))
        values = [m[metric] for _, m in rows]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [v["unlearned"] for v in values], 0.4, color="#9ecae1", label="unlearned")
        ax.bar([x + 0.2 for x in xs], [v["attacked"] for v in values], 0.4, color="#08519c", label="attacked")
        target = next((v["target"] for v in values if v.get("target") is not None), None)
        control = next((v["retain_attacked"] for v in values if v.get("retain_attacked") is not None), None)
        if target is not None:
            ax.axhline(target, color="black", lw=1, label="target model")
        if control is not None:
            ax.axhline(control, color="goldenrod", ls="--", lw=1.2, label="retain model, attacked")
        ax.set_xticks(list(xs), [label for label, _ in rows], rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{name}: forget {metric}", fontsize=10)
        ax.set_ylabel(f"forget {metric}")
        ax.yaxis.set_major_locator(MaxNLocator(6))
        ax.grid(axis="y", alpha=0.3)
    handles = _named_handles(axes)
    fig.legend(list(handles.values()), list(handles), fontsize=8, loc="outside lower center",
               ncols=len(handles), frameon=False)
    return _png(fig)


# Above this many runs one panel per metric is unreadable: small multiples take over (a panel per method).
SMALL_MULTIPLES_AFTER = 12


def _groups(runs: Sequence[dict]) -> dict[str, dict[str, list[dict]]]:
    """{method (params): {sweep point: [its runs, one per seed]}}, in results order."""
    from .comparison import point_label

    out: dict[str, dict[str, list[dict]]] = {}
    for run in runs:
        method = f"{run['method']} ({run.get('params', 'full')})"
        point = point_label((run.get("cell") or {}).get("sweep") or {})
        out.setdefault(method, {}).setdefault(point, []).append(run)
    return out


@_figure
def small_multiples_plot(results: dict, keys: Sequence[str], title: str) -> str:
    """A row per metric, a column per method; in each panel a line per sweep point (its seeds' mean, the band
    their range), the same colour for a point in every panel, the target and retain models as flat lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(results.get("runs", []))
    points = list(dict.fromkeys(p for g in groups.values() for p in g))
    fig, axes = plt.subplots(len(keys), len(groups), figsize=(2.6 * len(groups) + 1.5, 2.3 * len(keys)),
                             num=title, squeeze=False, sharey="row")
    for col, (method, by_point) in enumerate(groups.items()):
        for row, key in enumerate(keys):
            ax = axes[row][col]
            for point, runs in by_point.items():
                series = [dict(_series(r, key)) for r in runs]
                epochs = sorted(set().union(*series)) if series else []
                values = [[s[e] for s in series if e in s] for e in epochs]
                if not epochs:
                    continue
                mean = [sum(v) / len(v) for v in values]
                style = run_style(points.index(point))
                ax.plot(epochs, mean, ms=3, label=point, **style)
                if len(runs) > 1:
                    ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values],
                                    color=style["color"], alpha=0.15, lw=0)
            for name, color, line in (("target", "black", "-"), ("retain", "goldenrod", "--")):
                value = results.get("reference", {}).get(name, {}).get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    ax.axhline(value, color=color, ls=line, lw=1, alpha=0.7, label=f"{name} model")
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
            if row == 0:
                ax.set_title(method, fontsize=9)
            if col == 0:
                ax.set_ylabel(key, fontsize=9)
            if row == len(keys) - 1:
                ax.set_xlabel("epoch", fontsize=9)
    named = _named_handles(axes.flat)
    seeds = max((len(r) for g in groups.values() for r in g.values()), default=1)
    if named:
        fig.legend(list(named.values()), list(named), fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
                   frameon=False, title="sweep point" + (f" (mean of {seeds} seeds, band: range)" if seeds > 1 else ""),
                   title_fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png(fig)


def html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt_value(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@_figure
def _front_plot(rows, x: str, y: str, fronts: dict, title: str, logx: bool = False) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), num=title)
    cmap = plt.get_cmap("tab10")
    for i, method in enumerate(sorted({r["method"] for r in rows})):
        pts = [r for r in rows if r["method"] == method and r.get(x) and r.get(y)]
        if not pts:
            continue
        color = cmap(i % 10)
        ax.errorbar([r[x][0] for r in pts], [r[y][0] for r in pts], xerr=[r[x][1] for r in pts],
                    yerr=[r[y][1] for r in pts], fmt="o", ms=4, color=color, alpha=0.8, capsize=2, label=method)
        front = fronts.get(method, [])
        ax.plot([r[x][0] for r in front], [r[y][0] for r in front], "-", color=color, lw=1.2)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(f"{x} (mean ± sd over seeds)")
    ax.set_ylabel(y)
    ax.set_title(title + "  (lines: each method's Pareto front)", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return _png(fig)


def _comparison(results: dict) -> str:
    """Sweep points and seeds: the fronts as plots, mean ± spread and best-at-FE tables."""
    from .markdown import comparison_tables

    c = comparison_tables(results)
    if c is None:
        return ""
    mu, rows = c["mu"], c["rows"]
    figs = [_front_plot(rows, "FE", mu, c["fronts"]["FE"], f"{mu} vs FE")]
    if any(r.get("FQ") for r in rows):
        figs.append(_front_plot(rows, "FQ", mu, c["fronts"]["FQ"], f"{mu} vs FQ", logx=True))
    return (f"<h3>Comparison over sweep points and seeds ({results.get('seeds', 1)} seed(s))</h3>"
            "<div class='figs'>" + "".join(figs) + "</div>" + html_table(*c["points"])
            + f"<p class='note'>Best {mu} at FE ≥ x over each method's sweep points (– = never reached); "
              "★: on the method's front of MU against FE, ☆: against FQ.</p>" + html_table(*c["best"]))


def extraction_summary(results: dict) -> tuple[list[str], str]:
    """Memorized sequences: EL_10/MA per epoch against the thresholds, and the IHL seed's Table 1 row per run."""
    th = results.get("thresholds", {})
    figs = [per_epoch_plot(results, ["forget/EL10", "forget/MA", "heldout/PPL"],
                            "EL_10 and MA of the forget set vs the validation thresholds",
                            {"forget/EL10": th.get("el"), "forget/MA": th.get("ma")})]
    rows = [[r["method"], r["params"], r.get("cost", {}).get("trainable_percent"),
             r.get("epochs_to_success") or "unsuccessful", final_metrics(r).get("forget/EL10"),
             final_metrics(r).get("forget/MA"), final_metrics(r).get("heldout/PPL"),
             final_metrics(r).get("mia/min_k_AUC"), final_metrics(r).get("mia/min_k_PrivLeak"),
             r.get("cost", {}).get("flops"), r.get("cost", {}).get("wall_time_s")] for r in results.get("runs", [])]
    return figs, html_table(["method", "params", "trainable %", "epochs", *extraction_columns(), "FLOPs", "time (s)"],
                            rows)


def qa_summary(results: dict) -> tuple[list[str], str]:
    """QA unlearning: MU against FE (and FQ) trajectories, forget/retain metrics per epoch, the final row per run."""
    fe_y = "MU18" if any("MU18" in final_metrics(r) for r in results.get("runs", [])) else "MU"
    figs = [_trajectory_plot(results, "FE", fe_y, title=f"{fe_y} vs FE")]
    if any("FQ" in final_metrics(r) for r in results.get("runs", [])):
        figs.append(_trajectory_plot(results, "FQ", "MU", logx=True, title="MU vs FQ"))
    keys = present_keys(results, ("forget/ROUGE", "forget/P", "retain/ROUGE", "neighbour/ROUGE", "forget/CS"))
    if keys:  # no run (or none with these metrics): nothing to plot
        many = len(results.get("runs", [])) > SMALL_MULTIPLES_AFTER
        figs.append((small_multiples_plot if many else per_epoch_plot)(results, keys,
                                                                     "Forget and retain metrics per epoch"))
    summary = present_keys(results, ("MU", "MU18", "FE", "FQ", "forget/ROUGE", "forget/P", "forget/TR", "forget/CS",
                                     "retain/ROUGE", "neighbour/ROUGE"))
    rows = [[f"{n} model", "–", *[m.get(k) for k in summary]] for n, m in results.get("reference", {}).items()]
    rows += [[method_cell(r), r.get("params", "full"), *[final_metrics(r).get(k) for k in summary]]
             for r in results.get("runs", [])]
    roles = results.get("set_roles")
    return figs, html_table(["method", "params", *[f"{k} {goal_mark(k, roles)}" for k in summary]], rows)


def section(results: dict, source: str, summary) -> str:
    """One results file's section: ``summary(results) -> (figures, final table)`` is its layout's own part."""
    scen = results.get("scenario", "?")
    parts = [f"<h2>{html.escape(scen)} <span class='note'>({html.escape(source)})</span></h2>"]
    model, data = results.get("model", {}), results.get("data", {})
    parts.append(f"<p class='note'>Model: {html.escape(str(model.get('kind')))}; data: "
                 f"{html.escape(', '.join(f'{k} {v}' for k, v in data.items() if isinstance(v, (int, float))))}; "
                 f"seed {results.get('seed')}.</p>")
    for metric, why in results.get("metrics_unavailable", {}).items():
        parts.append(f"<p class='note bad'>{html.escape(metric)} unavailable: {html.escape(why)}</p>")
    figs, table = summary(results)
    for note in degenerate_notes(results):
        parts.append(f"<p class='note bad'>{html.escape(note)}</p>")
    parts.append("<div class='figs'>" + "".join(figs) + "</div>")
    parts.append(_comparison(results))
    parts.append("<h3>Final epoch</h3>" + table)
    if rows := attack_table_rows(results):
        parts.append(f"<h3>Attacks: does the forgetting hold?</h3><p class='note'>{html.escape(ATTACKS_NOTE)}</p>"
                     + attack_plot(results.get("runs", [])) + html_table(["run", *ATTACK_HEADER], rows))
    from .markdown import STOPPING_HEADER, STOPPING_TESTS, stopping_rows

    for test, how in STOPPING_TESTS:
        if stop_rows := stopping_rows(results, test=test):
            parts.append(f"<h3>Stopping without a retain model ({html.escape(how.replace('`', ''))})</h3>"
                         "<p class='note'>The first epoch whose forget-vs-held-out Min-K% p ≥ 0.05 (--stop-when "
                         "indistinguishable) next to the epoch with the highest FQ (needs the retain model).</p>"
                         + html_table(STOPPING_HEADER, stop_rows))
    # per-metric tables per set, the starting model included (closer-look Tables 5-6, 8)
    for set_name, metrics, rows in per_set_tables(results):
        parts.append(f"<h3>{html.escape(set_name)} set</h3>" + html_table(["model", *metrics], rows))
    crow = [[run_label(r), r.get("cost", {}).get("trainable_percent"), r.get("cost", {}).get("epochs"),
             r.get("cost", {}).get("tokens_trained"), r.get("cost", {}).get("flops"),
             r.get("cost", {}).get("wall_time_s"),
             (r.get("cost", {}).get("peak_memory_bytes") or 0) / 2**20] for r in results.get("runs", [])]
    parts.append("<h3>Cost</h3><p class='note'>FLOPs ≈ N·(6·(trained + Fisher tokens) + 2·forward-only tokens).</p>"
                 + html_table(["method", "trainable %", "epochs", "tokens trained", "FLOPs", "time (s)",
                               "peak mem (MiB)"],
                          crow))
    for set_name in ("forget", "retain", "neighbour"):
        ref = results.get("reference_samples", {}).get("target", {}).get(set_name, [])
        if not ref:
            continue
        parts.append(f"<h3>Sample generations: {set_name} set (final epoch)</h3>")
        for i, s in enumerate(ref):
            lines = [f"<b>Q:</b> {html.escape(s['question'])}", f"<b>truth:</b> {html.escape(s['answer'])}",
                     f"<b>before:</b> {html.escape(s['generated'])}"]
            for r in results.get("runs", []):
                gen = r.get("samples", {}).get(set_name, [])
                if i < len(gen):
                    lines.append(f"<b>{html.escape(run_label(r))}:</b> {html.escape(gen[i]['generated'])}")
            parts.append("<div class='sample'>" + "<br>".join(lines) + "</div>")
    audit = results.get("audit")
    if audit:
        parts.append("<h3>Audit</h3>" + html_table(["field", "value"], [[k, str(v)] for k, v in audit.items()]))
    return "\n".join(parts)


def render_page(sections: Sequence[str]) -> str:
    body = ("" if plotting_available() else NO_PLOTS) + "\n".join(sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Lethe report</title><style>{CSS}</style>"
            f"</head><body><h1>Lethe report</h1>{body}</body></html>")

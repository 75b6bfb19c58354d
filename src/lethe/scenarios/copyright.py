"""Copyrighted text (FLAT's Harry Potter setting, scaled to a CPU), fully offline.

Lethe writes an invented novel (:mod:`lethe.data.novel`), trains a small model on it plus background
prose until its excerpts are reproduced (the *target*), and a *retain* model on the same data without the
forget chapters. Each method then unlearns the forget chapters' excerpts (``excerpt_tokens`` long, as in
FLAT's 200-token excerpts), regularizing on the kept chapters and the background. After every epoch:

- BLEU and ROUGE-L F1 between the model's greedy continuation of each excerpt's first half and the true
  second half (FLAT's forget quality; lower is better, the retain model's value is the goal);
- MUSE's VerbMem (prefix 32, continuation up to 128 tokens);
- membership inference of the forget excerpts against excerpts of held-out chapters no model saw (AUC per
  attack) and PrivLeak against the retain model's AUC;
- perplexity on the held-out chapters and on held-out background text (utility).

Methods that pair each forget item with a refusal answer (FLAT, IDK, DPO) unlearn each excerpt as a
continuation task instead: its first half is the prompt (raw text, no template) and its second half the
answer that the refusal replaces, as in FLAT's Harry Potter setting (template = an IDK refusal).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

from ..data.prompt import PromptFormat
from ..data.records import QARecord, TextRecord
from ..engine.loop import TrainConfig
from . import (
    AttackOptions,
    Cell,
    Context,
    Scenario,
    attack_model,
    check_attacks,
    derived,
    option,
    parse_run_spec,
    run_dir_for,
)

NAME = "copyrighted-text"
VERSION = 1
DEMO_METHODS = ("GA", "GA+GD", "GA+KL", "NPO+GD", "FLAT-KL", "ME+GD", "IHL+GD")
# an excerpt as a continuation task: the prompt is its first half as raw text, the answer follows directly
CONTINUATION_FORMAT = PromptFormat(kind="plain", template="{question}", answer_prefix="")


@dataclass(frozen=True)
class CopyrightSettings:
    model_preset: str
    vocab_size: int
    chapters: int
    paragraphs: int
    forget_chapters: int
    heldout_chapters: int
    excerpt_tokens: int
    pretrain: TrainConfig
    unlearn: TrainConfig
    verbmem_prefix: int = 32
    verbmem_tokens: int = 128
    lora_rank: int = 8
    lora_lr_scale: float = 4.0  # LoRA needs a larger rate than full fine-tuning (as in the other scenarios)


SETTINGS = {
    "smoke": CopyrightSettings("smoke", 600, 6, 4, 2, 1, 48,
                               TrainConfig(epochs=50, lr=3e-3, batch_size=8, micro_batch_size=8, checkpoint=False),
                               TrainConfig(epochs=2, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False),
                               verbmem_prefix=16, verbmem_tokens=32),
    "small": CopyrightSettings("small", 1500, 12, 16, 4, 2, 200,
                               TrainConfig(epochs=60, lr=2e-3, batch_size=8, micro_batch_size=8, checkpoint=False),
                               TrainConfig(epochs=5, lr=5e-4, batch_size=4, micro_batch_size=4, checkpoint=False)),
}


# a user's book is cut at blank lines into as many parts as the largest size has chapters
MIN_PARAGRAPHS = max(s.chapters for s in SETTINGS.values())


def _windows(ids: list[int], width: int) -> list[list[int]]:
    """Non-overlapping windows of ``width`` tokens (a shorter tail is kept when at least half a window)."""
    out = [ids[i : i + width] for i in range(0, len(ids), width)]
    return [w for w in out if len(w) >= max(2, width // 2)]


@dataclass
class Prepared:
    tokenizer: object
    forget: list            # forget chapters' excerpts (TextRecord)
    retain: list            # kept chapters' and background excerpts
    heldout: list           # held-out chapters' excerpts: never trained on
    background_heldout: list
    target: dict            # the target model's metrics (epoch 0 of every run)
    retain_model: dict      # the retain model's metrics
    retain_auc: dict        # its membership AUC per attack: PrivLeak's reference
    title: str
    n_params: int


def continuation_scores(model, tokenizer, records, *, prefix: int | None = None) -> dict[str, list[float]]:
    """BLEU and ROUGE-L F1 of the greedy continuation of each excerpt's first half (or ``prefix`` tokens)."""
    from ..evaluation.memorization import greedy_continuations
    from ..evaluation.metric_registry import METRICS
    from ..evaluation.metrics import rouge_l_f1

    ids = [list(r.token_ids) for r in records]
    cut = [prefix or len(s) // 2 for s in ids]
    truths = [s[c:] for s, c in zip(ids, cut)]
    gens = greedy_continuations(model, tokenizer, [s[:c] for s, c in zip(ids, cut)], [len(t) for t in truths])
    hyp = [tokenizer.decode(g, skip_special_tokens=True) for g in gens]
    ref = [tokenizer.decode(t, skip_special_tokens=True) for t in truths]
    return {"BLEU": METRICS.get("BLEU").compute(hyp, ref), "ROUGE": rouge_l_f1(hyp, ref)}


def as_continuations(records, tokenizer) -> list[QARecord]:
    """Each excerpt as (first half -> second half), for methods whose forget loss pairs an answer with a refusal."""
    out = []
    for r in records:
        ids = list(r.token_ids)
        cut = len(ids) // 2
        out.append(QARecord(question=tokenizer.decode(ids[:cut]), answer=tokenizer.decode(ids[cut:])))
    return out


def pairs_refusals(method) -> bool:
    """Whether ``method`` (a name) trains on refusal answers, which text excerpts do not have."""
    from ..objectives import parse_method

    return bool({need.stream for need in parse_method(method).needs().values()} & {"idk", "retain_idk"})


def copyright_hook(tokenizer, forget, heldout, background_heldout, *, verbmem_prefix: int, verbmem_tokens: int,
                   retain_auc: dict | None = None):
    """An ``epoch_hook`` scoring the copyright metrics (module docstring) after every epoch."""
    from ..data.prompt import as_prompter
    from ..evaluation.metric_registry import METRICS
    from ..evaluation.mia import membership_report, report_metrics

    prompter = as_prompter(tokenizer)
    perplexity = METRICS.get("PPL").compute
    score = continuation_scorer(tokenizer, verbmem_prefix=verbmem_prefix, verbmem_tokens=verbmem_tokens)

    def hook(epoch, model):
        metrics = {f"forget/{name}": value for name, value in score(model, forget).items()}
        metrics |= {"heldout/PPL": perplexity(model, prompter.tokenizer, [list(r.token_ids) for r in heldout]),
                    "background/PPL": perplexity(model, prompter.tokenizer,
                                                 [list(r.token_ids) for r in background_heldout])}
        metrics.update(report_metrics(membership_report(model, prompter, forget, heldout), retain_auc))
        return {"metrics": metrics, "stop": False}

    return hook


def _background(seed: int, size: str) -> list[str]:
    """Background prose (the fictitious authors' biographies): the retain set's other text."""
    from ..data.canaries import generate_corpus

    corpus = generate_corpus(n_canaries=1, n_validation=1, seed=seed, background_size=size)
    return list(corpus.background) + list(corpus.held_out)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def split_parts(text: str, parts: int) -> tuple[str, ...]:
    """A text cut at paragraph boundaries into ``parts`` pieces of about equal length (the "chapters")."""
    paras = _paragraphs(text)
    total, out, current, size = sum(len(p) for p in paras), [], [], 0
    for p in paras:
        current.append(p)
        size += len(p)
        if size >= total * (len(out) + 1) / parts and len(out) < parts - 1:
            out.append("\n\n".join(current))
            current = []
    out.append("\n\n".join(current))
    return tuple(out)


@dataclass
class CopyrightOptions(AttackOptions):
    forget: str | None = option(None, "your own book (UTF-8 plain text, cut at blank lines into chapters) instead of "
                                "the invented novel")
    retain: str | None = option(None, "other text (UTF-8) for regularization and background perplexity instead of "
                                "the generated biographies")
    book: str | None = derived()            # the text read from --forget
    other: str | None = derived()           # the text read from --retain
    forget_sha256: str | None = derived()
    retain_sha256: str | None = derived()


def _check(options: CopyrightOptions, size: str) -> CopyrightOptions:
    """Your own text: read now (a missing or too short file fails before any work); its sha256 joins the
    fingerprint, so a directory made from another book is not reused."""
    import hashlib
    from pathlib import Path

    from ..util.errors import LetheError

    try:
        import sacrebleu  # noqa: F401
    except ImportError:
        raise LetheError("the copyright scenario scores continuations with BLEU: pip install "
                         "'lethe-unlearn[copyright]'") from None
    for key, text_key in (("forget", "book"), ("retain", "other")):
        setattr(options, text_key, None)
        setattr(options, f"{key}_sha256", None)
        if getattr(options, key) is None:
            continue
        path = Path(getattr(options, key))
        if not path.is_file():
            raise LetheError(f"--{key} {path}: file not found (a plain-text file)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise LetheError(f"--{key} {path}: not UTF-8 text (byte {e.start})") from None
        if not text.strip():
            raise LetheError(f"--{key} {path}: the file is empty")
        if len(_paragraphs(text)) < MIN_PARAGRAPHS and key == "forget":
            raise LetheError(f"--forget {path}: {len(_paragraphs(text))} paragraph(s); the scenario cuts the book "
                             f"at blank lines into {MIN_PARAGRAPHS} parts, so it needs "
                             "at least that many paragraphs")
        setattr(options, text_key, text)
        setattr(options, f"{key}_sha256", hashlib.sha256(text.encode()).hexdigest())
    return check_attacks(options, records="text")


def _prepare(ctx: Context) -> Prepared:
    from ..core import finetune
    from ..data.novel import Novel, generate_novel
    from ..evaluation.evidence import membership_aucs
    from ..model.build import build_tiny_model, train_tokenizer
    from ..model.load import load_model, load_tokenizer
    from ..util.io import write_text

    st, seed, console = SETTINGS[ctx.size], ctx.seed, ctx.console
    if ctx.options.book is not None:  # the user's own book, cut into as many parts as the novel has chapters
        novel = Novel(title=ctx.options.forget, chapters=split_parts(ctx.options.book, st.chapters))
    else:
        novel = generate_novel(st.chapters, st.paragraphs, seed)
        write_text(ctx.out / "data" / "novel.txt", novel.text)
    background = _paragraphs(ctx.options.other) if ctx.options.other is not None else \
        _background(seed + 7, ctx.size)
    models = ctx.out / "models"
    done = all((models / n / "lethe_finetune.json").exists() for n in ("target", "retain"))
    tokenizer = load_tokenizer(models / "target") if ctx.resume and done else \
        train_tokenizer([*novel.chapters, *background], vocab_size=st.vocab_size)

    def excerpts(texts):
        return [TextRecord(token_ids=tuple(w)) for t in texts
                for w in _windows(tokenizer(t, add_special_tokens=False)["input_ids"], st.excerpt_tokens)]

    n_f, n_h = st.forget_chapters, st.heldout_chapters
    forget = excerpts(novel.chapters[:n_f])
    kept = excerpts(novel.chapters[n_f : st.chapters - n_h])
    heldout = excerpts(novel.chapters[st.chapters - n_h :])
    # background texts are short (a biography is ~90 tokens): joined, then cut into excerpts like the book
    n_bg = max(2, len(background) // 10)
    bg_train, bg_held = excerpts(["\n\n".join(background[n_bg:])]), excerpts(["\n\n".join(background[:n_bg])])
    trained = {}
    for name, records in (("target", forget + kept + bg_train), ("retain", kept + bg_train)):
        directory = models / name
        if ctx.resume and done:
            console.print(f"[dim]reusing {directory}[/dim]")
            trained[name] = load_model(directory)
            continue
        console.print(f"training the {name} model on {len(records)} excerpts of {st.excerpt_tokens} tokens")
        model = build_tiny_model(tokenizer, st.model_preset, seed=seed, max_positions=512)
        trained[name], _ = finetune(model, records, tokenizer=tokenizer, train=replace(st.pretrain, seed=seed),
                                    out_dir=directory, overwrite=True, progress=ctx.progress, desc=f"train {name}")
    hook_args = dict(verbmem_prefix=st.verbmem_prefix, verbmem_tokens=st.verbmem_tokens)
    ret = copyright_hook(tokenizer, forget, heldout, bg_held, **hook_args)(0, trained["retain"])["metrics"]
    retain_auc = membership_aucs(ret)
    tgt = copyright_hook(tokenizer, forget, heldout, bg_held, retain_auc=retain_auc,
                         **hook_args)(0, trained["target"])["metrics"]
    console.print(f"target: forget BLEU {tgt['forget/BLEU']:.3f} ROUGE-L {tgt['forget/ROUGE']:.3f}; retain model: "
                  f"BLEU {ret['forget/BLEU']:.3f} ROUGE-L {ret['forget/ROUGE']:.3f}")
    return Prepared(tokenizer, forget, kept + bg_train, heldout, bg_held, tgt, ret, retain_auc, novel.title,
                    sum(p.numel() for p in trained["target"].parameters()))


def _cells(prep: Prepared, ctx: Context) -> list[Cell]:
    out = []
    for spec in ctx.runs:
        method, kind, rank = parse_run_spec(spec)
        out.append(Cell(spec, run_dir_for(ctx.out, method, kind, f"-r{rank}" if rank else ""),
                        f"unlearning with {method} ({kind})"))
    return out


def _run_cell(prep: Prepared, cell: Cell, ctx: Context) -> dict:
    from ..core import ModelConfig, unlearn
    from ..model.load import load_model
    from ..model.lora import ParamsConfig

    st = SETTINGS[ctx.size]
    method, kind, rank = parse_run_spec(cell.spec)
    hook = copyright_hook(prep.tokenizer, prep.forget, prep.heldout, prep.background_heldout,
                          retain_auc=prep.retain_auc, verbmem_prefix=st.verbmem_prefix,
                          verbmem_tokens=st.verbmem_tokens)
    train = replace(st.unlearn, seed=ctx.seed)
    if kind != "full":
        train = replace(train, lr=train.lr * st.lora_lr_scale)
    forget, retain, model_config = prep.forget, prep.retain, ModelConfig()
    if pairs_refusals(method):  # the excerpts as continuations (module docstring); the hook still scores the text
        forget, retain = as_continuations(forget, prep.tokenizer), as_continuations(retain, prep.tokenizer)
        model_config = ModelConfig(prompt_format=CONTINUATION_FORMAT)
    unlearned, run = unlearn(load_model(ctx.out / "models" / "target"), forget, retain, method=method,
                             tokenizer=prep.tokenizer, train=train,
                             params=ParamsConfig(kind=kind, rank=rank or st.lora_rank), model_config=model_config,
                             epoch_hook=hook, save=False, progress=ctx.progress)
    record = run.to_dict()
    if ctx.options.attacks and run.status == "ok":
        record["attacks"] = _attack(unlearned, prep, ctx)
    return record


def continuation_scorer(tokenizer, *, verbmem_prefix: int, verbmem_tokens: int):
    """An attack's ``score(model, excerpts)``: the BLEU and ROUGE-L of each excerpt's greedy continuation and
    VerbMem, as the per-epoch hook scores the forget excerpts."""
    from ..data.prompt import as_prompter
    from ..evaluation.metrics import mean
    from ..evaluation.verbatim import verbmem

    prompter = as_prompter(tokenizer)

    def score(model, records) -> dict:
        cont = continuation_scores(model, prompter.tokenizer, records)
        return {"BLEU": mean(cont["BLEU"]), "ROUGE": mean(cont["ROUGE"]),
                "VerbMem": mean(verbmem(model, prompter, records, prefix_tokens=verbmem_prefix,
                                        continuation_tokens=verbmem_tokens))}

    return score


def _attack(model, prep: Prepared, ctx: Context) -> dict:
    """The unlearned model under the chosen weight attacks, scored on the forget excerpts' continuations; the
    retain model (never trained on those chapters) is the control, the target model full recovery."""
    from ..data.prompt import as_prompter
    from ..model.load import load_model

    st = SETTINGS[ctx.size]
    score = continuation_scorer(prep.tokenizer, verbmem_prefix=st.verbmem_prefix, verbmem_tokens=st.verbmem_tokens)
    return attack_model(model, prep.forget, ctx.options.attacks, prompter=as_prompter(prep.tokenizer),
                        retain=prep.retain, retain_model=load_model(ctx.out / "models" / "retain"),
                        target_model=load_model(ctx.out / "models" / "target"), score=score)


def _summarize(prep: Prepared, runs: list, ctx: Context) -> dict:
    st = SETTINGS[ctx.size]
    return {
        "model": {"kind": "llama (built here)", "preset": st.model_preset, "parameters": prep.n_params,
                  "vocab_size": len(prep.tokenizer), "path": str(ctx.out / "models" / "target")},
        "data": {"book": prep.title, "invented": ctx.options.forget is None, "chapters": st.chapters,
                 "forget_chapters": st.forget_chapters,
                 "heldout_chapters": st.heldout_chapters, "forget": len(prep.forget), "retain": len(prep.retain),
                 "heldout": len(prep.heldout), "background_heldout": len(prep.background_heldout),
                 "excerpt_tokens": st.excerpt_tokens,
                 "path": ctx.options.forget or str(ctx.out / "data" / "novel.txt"),
                 "other_text": ctx.options.retain or "the fictitious authors' biographies (generated)"},
        "settings": {"pretrain": asdict(st.pretrain), "unlearn": asdict(st.unlearn),
                     "verbmem_prefix": st.verbmem_prefix, "verbmem_tokens": st.verbmem_tokens,
                     "continuation": "greedy, the excerpt's second half from its first half",
                     "refusal_methods": "FLAT, IDK and DPO unlearn each excerpt's second half as the answer to its "
                                        "first half (raw text prompt), paired with an IDK refusal"},
        "reference": {"target": prep.target, "retain": prep.retain_model},
    }


COPYRIGHT = Scenario(
    name=NAME, key="copyright", version=VERSION,
    summary="an invented novel memorized by a small model (FLAT's setting): BLEU/ROUGE-L of continuations, "
            "VerbMem, PrivLeak, PPL",
    sizes=tuple(SETTINGS), default_runs=DEMO_METHODS,
    prepare=_prepare, cells=_cells, run_cell=_run_cell, summarize=_summarize, report="copyright",
    options=CopyrightOptions,
    fingerprint=("forget_sha256", "retain_sha256"), check=_check,
)


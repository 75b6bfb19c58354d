"""The typed configs of a run: how the model is prompted (ModelConfig), how records are read (DataConfig),
the method (MethodConfig), what is scored (EvalConfig), the audit record (AuditConfig), and the run's record
(UnlearnRun)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from ..data.prompt import PromptFormat
from ..data.readers import DEFAULT_FIELDS, Fields
from ..evaluation.metric_registry import select_metrics
from ..evaluation.suite import EvalSet, Semantic, available_needs, check_selection
from ..objectives.method import Method, parse_method
from ..util.errors import LetheError
from ..util.validation import bounded, check_ranges

# An adapter trains far fewer weights than full fine-tuning and needs a larger step: the IHL/FILA paper unlearns
# TOFU's Llama-2-7B with LoRA and FILA at 1e-4 (full fine-tuning: TrainConfig's 1e-5). Used when no TrainConfig
# (or no --lr) is given.
ADAPTER_LR = 1e-4

# without its own retain evaluation set, an unlearning run scores this many records of its retain set (a seeded
# sample when larger): utility is half of what a run is judged on
RETAIN_SAMPLE = 200


def retain_sample(records: Sequence) -> list:
    """The retain records an unlearning run scores by default: all of them up to :data:`RETAIN_SAMPLE`, else a
    sample seeded with 0 (the same in every run on the same data), in their order."""
    import random

    if len(records) <= RETAIN_SAMPLE:
        return list(records)
    keep = sorted(random.Random(0).sample(range(len(records)), RETAIN_SAMPLE))
    return [records[i] for i in keep]


@dataclass(frozen=True)
class ModelConfig:
    """How the model is prompted and read.

    ``prompt_format``: ``auto`` (the format saved with the model; else the tokenizer's chat template
    when it has one; else plain), ``chat``, ``plain``, or a template with ``{question}``.
    """

    prompt_format: str | PromptFormat = "auto"
    system_prompt: str | None = None
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)  # chat template arguments (date_string, ...)
    max_length: int = bounded(512, int, 2)
    trust_remote_code: bool = False
    base_model: str | None = None  # the base of a peft adapter directory (default: the one its config names)

    def __post_init__(self):
        check_ranges(self)


@dataclass(frozen=True)
class DataConfig:
    """How records are read: field names (``Fields``), plain-text window size, the split of a DatasetDict."""

    fields: Fields = DEFAULT_FIELDS
    chunk_tokens: int = bounded(200, int, 2)
    split: str | None = None
    allow_overlap: bool = False  # forget and retain may share records (else an error)

    def __post_init__(self):
        check_ranges(self)


@dataclass(frozen=True)
class MethodConfig:
    """A method and its options, e.g. ``MethodConfig("NPO+KL", forget_options={"beta": 0.2})``."""

    method: Any = "GA+GD"
    alpha: float | None = bounded(None, float, 0, optional=True)
    gamma: float | None = bounded(None, float, 0, optional=True)
    forget_options: Mapping[str, Any] = field(default_factory=dict)
    regularizer_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_ranges(self)

    def build(self, defaults: Mapping[str, Mapping[str, Any]] | None = None) -> Method:
        """The method; ``defaults`` (per loss name) sit under the options given here or in the string."""
        return parse_method(self.method, alpha=self.alpha, gamma=self.gamma,
                            forget_options=dict(self.forget_options) or None,
                            regularizer_options=dict(self.regularizer_options) or None, defaults=defaults)


@dataclass
class EvalConfig:
    """What is scored: the starting model (epoch 0) and the final one when ``at`` says so (default both),
    and every ``every``-th epoch between (0: none; default 1, or 0 when ``at`` is empty: ``at=()`` alone
    means no evaluation at all)."""

    sets: Sequence[EvalSet] = ()
    every: int | None = bounded(None, int, 0, optional=True, option="--eval-every")  # 0: none between start and end
    at: Sequence[str] = ("start", "end")             # also score the starting model, and the final one
    per_epoch: str = "full"                          # between start and end: full, or fast (no generation)
    max_new_tokens: int = bounded(48, int, 1)
    limit: int | None = bounded(None, int, 1, optional=True, option="--eval-limit")
    truth_ratio: str = "tofu"
    batch_size: int = bounded(32, int, 1, option="eval batch_size")  # likelihood scoring
    generation_batch_size: int | None = bounded(None, int, 1, optional=True, option="--generation-batch-size")
    n_samples: int = bounded(3, int, 0, option="eval n_samples")  # generations kept per set for the report
    semantic: Semantic | None = None
    metrics: Sequence[str] | None = None             # metric names (lethe.evaluation.metric_registry); None: defaults
    retain_model_tr: Sequence[float] | None = None   # the retain model's forget truth ratios, for FQ
    initial_metrics: dict | None = None              # the caller already scored the starting model
    holdout: Sequence | None = None                  # records never trained on: membership-inference AUCs
    mia_k: float = bounded(0.4, float, 0, 1, low_open=True, option="--mia-k")  # Min-K% share (MUSE: 40 %)
    retain_model_auc: dict | None = None             # the retain model's AUC per attack, for PrivLeak
    reference_model: Any = None                      # the `reference` attack's model (same tokenizer), never trained
    memorization: bool = False                       # forget set: exact memorization and extraction strength
    count_end_token: bool = False                    # EM, ES and the attacks count the answer's end token
    verbmem_texts: Sequence | None = None            # forget texts for MUSE's VerbMem
    verbmem_prefix: int = bounded(32, int, 1, option="--verbmem-prefix")
    verbmem_tokens: int = bounded(128, int, 1, option="--verbmem-tokens")
    knowmem: Mapping[str, Sequence] | None = None    # {"forget": QA, "retain": QA} for MUSE's KnowMem
    knowmem_shots: int = bounded(3, int, 0, option="--knowmem-shots")
    lm_eval_tasks: Sequence[str] = ()                # lm-evaluation-harness tasks, scored at start and end
    lm_eval_dir: str | None = None                   # more task YAMLs
    lm_eval_trust_code: bool = False                 # their `!function` entries may import the folder's Python
    lm_eval_limit: int | None = bounded(None, int, 1, optional=True, option="--lm-eval-limit")

    def __post_init__(self):
        check_ranges(self)
        self.at = tuple(self.at)
        if self.every is None:
            self.every = 1 if self.at else 0
        if not set(self.at) <= {"start", "end"}:
            raise LetheError(f"--eval-at: expected start, end, both or none, got {', '.join(self.at)}")
        if self.per_epoch not in ("full", "fast"):
            raise LetheError(f"--eval-per-epoch: expected full or fast, got {self.per_epoch!r}")
        if self.truth_ratio not in ("tofu", "tofu-utils"):
            raise LetheError(f"--truth-ratio: expected tofu or tofu-utils, got {self.truth_ratio!r}")
        if self.metrics is not None:
            self.metrics = tuple(self.metrics)
            select_metrics(self.metrics)  # an unknown name fails here, before any model work

    def selection(self):
        return select_metrics(self.metrics, memorization=self.memorization)

    def check_metrics(self, *, retain_model: bool | None = None, reference: bool | None = None) -> None:
        """Explicitly named metrics whose inputs or models are missing fail before any model work.
        ``retain_model`` / ``reference``: whether FQ's retain model and the reference attack's model will be
        there (default: whether they are)."""
        has_retain = self.retain_model_tr is not None if retain_model is None else retain_model
        has_reference = self.reference_model is not None if reference is None else reference
        check_selection(self.selection(), available_needs(
            semantic=self.semantic, holdout=self.holdout, reference=True if has_reference else None,
            verbmem_texts=self.verbmem_texts, knowmem=self.knowmem, retain_model_tr=() if has_retain else None,
            has_forget=any(s_.forget for s_ in self.sets)))

    def suite_kwargs(self) -> dict:
        return {"batch_size": self.batch_size, "generation_batch_size": self.generation_batch_size,
                "max_new_tokens": self.max_new_tokens, "eval_limit": self.limit,
                "truth_ratio": self.truth_ratio, "semantic": self.semantic, "n_samples": self.n_samples,
                "metrics": self.selection(), "holdout": self.holdout, "mia_k": self.mia_k,
                "retain_model_auc": self.retain_model_auc, "reference": self.reference_model,
                "verbmem_texts": self.verbmem_texts,
                "verbmem_prefix": self.verbmem_prefix, "verbmem_tokens": self.verbmem_tokens,
                "knowmem": self.knowmem, "knowmem_shots": self.knowmem_shots, "count_end_token": self.count_end_token}


@dataclass
class AuditConfig:
    """``audit.json``: held-out records for the Min-K% membership signal, the request's text, thresholds."""

    holdout: Any = None
    include_text: bool = False
    thresholds: dict | None = None


@dataclass
class UnlearnRun:
    """One unlearning run, serialisable to the ``runs[]`` entry of results.json."""

    method: str
    params: str
    epochs: list[dict] = field(default_factory=list)
    cost: dict = field(default_factory=dict)
    status: str = "ok"
    message: str | None = None
    samples: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    aggregates_over: dict = field(default_factory=dict)
    unavailable: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    selected: dict = field(default_factory=dict)  # the epoch whose model was kept (--select-by), and why

    def to_dict(self) -> dict:
        return asdict(self)

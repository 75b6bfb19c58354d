"""The two record kinds Lethe works on: question-answer pairs and text sequences."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class QARecord:
    """One question-answer pair in TOFU's schema.

    ``paraphrased_answer`` and ``perturbed_answers`` feed the truth ratio; ``subject`` groups
    records (an author, a real-world topic) so splits never cut a subject in two.
    """

    question: str
    answer: str
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()
    paraphrased_question: str | None = None
    subject: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["perturbed_answer"] = list(d.pop("perturbed_answers"))
        return {k: v for k, v in d.items() if v not in (None, [])}


@dataclass(frozen=True)
class TextRecord:
    """A text sequence, given as text or as token ids (the extraction-challenge format)."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = field(default=None, repr=False)


def content_key(record) -> tuple:
    """What makes two records the same request: the QA pair, or the text (or token ids), whitespace-trimmed."""
    if isinstance(record, QARecord):
        return ("qa", " ".join(record.question.split()), " ".join(record.answer.split()))
    if isinstance(record, TextRecord):
        return ("text", " ".join(record.text.split())) if record.text is not None else ("ids", record.token_ids)
    return ("other", repr(record))


def shared_records(a, b) -> list[tuple[int, int]]:
    """(index in a, index in b) of every record of ``a`` that also occurs in ``b``, by content."""
    first: dict[tuple, int] = {}
    for j, r in enumerate(b):
        first.setdefault(content_key(r), j)
    return [(i, first[k]) for i, r in enumerate(a) if (k := content_key(r)) in first]

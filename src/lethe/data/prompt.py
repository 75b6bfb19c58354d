"""The one QA prompt format, used identically in training and evaluation.

A QA example is ``[bos] prompt answer [eos]``; only answer tokens (and eos) count in the loss.
Prompt and answer are tokenized separately and concatenated so the boundary is exact: the
tokens the model is trained to produce after the prompt are the tokens it is scored on.
"""
from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100


@dataclass(frozen=True)
class PromptFormat:
    """``chat=True``: the question goes through the tokenizer's chat template (instruct models)."""

    template: str = "Question: {question}\nAnswer:"
    answer_prefix: str = " "
    chat: bool = False

    def prompt(self, question: str) -> str:
        return self.template.format(question=question)


DEFAULT_FORMAT = PromptFormat()


def format_for(tokenizer, fmt: PromptFormat | None = None) -> PromptFormat:
    """The format saved with the model (``lethe_prompt.json``), else the plain QA template."""
    return fmt or getattr(tokenizer, "lethe_prompt", None) or DEFAULT_FORMAT


def prompt_ids(tokenizer, question: str, fmt: PromptFormat | None = None) -> list[int]:
    fmt = format_for(tokenizer, fmt)
    if fmt.chat:
        out = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
    ids = tokenizer(fmt.prompt(question), add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def answer_ids(tokenizer, answer: str, fmt: PromptFormat | None = None) -> list[int]:
    fmt = format_for(tokenizer, fmt)
    ids = tokenizer(("" if fmt.chat else fmt.answer_prefix) + answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def encode_qa(tokenizer, question: str, answer: str, *, max_length: int = 512,
              fmt: PromptFormat | None = None) -> dict[str, list[int]]:
    """Token ids and labels for one QA pair; labels are IGNORE on prompt tokens.

    Truncation cuts the answer's end, never the prompt, so the model always sees the question.
    """
    p = prompt_ids(tokenizer, question, fmt)
    a = answer_ids(tokenizer, answer, fmt)
    ids = (p + a)[:max_length]
    labels = ([IGNORE] * len(p) + a)[:max_length]
    return {"input_ids": ids, "labels": labels}


def encode_text(tokenizer, token_ids, *, max_length: int = 2048) -> dict[str, list[int]]:
    """A plain text sequence ([bos] + tokens): every token is predicted, bos is not."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = (bos + list(token_ids))[:max_length]
    return {"input_ids": ids, "labels": ([IGNORE] * len(bos) + list(token_ids))[:max_length]}


def text_token_ids(tokenizer, record) -> list[int]:
    """A text record's token ids: given ones (``.npy`` data) or its text tokenized without specials."""
    if record.token_ids is not None:
        return list(record.token_ids)
    return tokenizer(record.text, add_special_tokens=False)["input_ids"]


def encode_record(tokenizer, record, *, max_length: int = 512) -> dict[str, list[int]]:
    """QA records -> prompt + answer; text records -> the whole sequence."""
    from .records import QARecord

    if isinstance(record, QARecord):
        return encode_qa(tokenizer, record.question, record.answer, max_length=max_length)
    return encode_text(tokenizer, text_token_ids(tokenizer, record), max_length=max_length)

"""Readers for QA and text data with one-line, precise errors.

QA: a JSON array, JSONL (one object per line), or JSONL whose lines are arrays of objects
(some TOFU copies). Text: JSONL with ``text``, CSV with a ``text`` column, plain text chunked
into fixed token windows, or ``.npy`` token-id rows. Nothing here unpickles user files.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..util.errors import DataError
from ..util.io import read_user_text
from .records import QARecord, TextRecord

QUESTION_KEYS = ("question", "prompt")
ANSWER_KEYS = ("answer", "response")


def _load_json_values(path: Path) -> list[tuple[int, Any]]:
    """Return (record index, value) for every record in a JSON or JSONL file."""
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a directory, expected a .json or .jsonl file")
    text = read_user_text(path)
    if not text.strip():
        raise DataError(path, "file is empty, expected at least one record")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # may be JSONL whose lines are arrays
        except RecursionError:
            raise DataError(path, _TOO_DEEP) from None
        if isinstance(whole, list):
            return list(enumerate(whole))
    values: list[Any] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"line {lineno} is not valid JSON ({e.msg}, column {e.colno})") from e
        except RecursionError:
            raise DataError(path, f"line {lineno}: {_TOO_DEEP}") from None
        if isinstance(value, list):
            values.extend(value)  # "array per line" variant
        else:
            values.append(value)
    return list(enumerate(values))


_TOO_DEEP = "JSON nested too deeply to read (arrays or objects inside each other ~1000 levels down)"

# The csv module refuses fields over 128 Ki characters; a passage of a book may be longer. Fields up to this
# many characters are read (the file itself is capped by data.sources.check_readable).
MAX_CSV_FIELD_CHARS = 1 << 24


def read_csv_rows(path: Path) -> list[dict]:
    """The rows of a UTF-8 CSV file with a header, as dicts; malformed rows and over-long fields are one-line
    errors naming the record (the row after the header)."""
    text = read_user_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[dict] = []
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_CSV_FIELD_CHARS)
    try:
        for row in reader:
            rows.append(row)
    except csv.Error as e:
        if "field larger" in str(e):
            raise DataError(path, f"a field is longer than {MAX_CSV_FIELD_CHARS:,} characters",
                            record=len(rows)) from None
        raise DataError(path, f"line {reader.line_num}: malformed CSV ({e})", record=len(rows)) from None
    finally:
        csv.field_size_limit(limit)
    return rows


def check_string(path, index, key: str, value: str) -> str:
    """Text a tokenizer can take: no NUL character and no lone surrogate (JSON's \\ud800 escapes decode to
    one, which is not Unicode text and cannot be encoded)."""
    if "\0" in value:
        raise DataError(path, "contains a NUL character", record=index, field=key)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(path, f"lone surrogate \\u{ord(value[e.start]):04x} at character {e.start}: not valid "
                              "Unicode text", record=index, field=key) from None
    return value


def _string_field(path, index, obj: dict, keys: Sequence[str], required: bool) -> str | None:
    for key in keys:
        if key in obj:
            value = obj[key]
            if not isinstance(value, str):
                raise DataError(path, f"expected a string, got {type(value).__name__}", record=index, field=key)
            if required and not value.strip():
                raise DataError(path, "expected a non-empty string", record=index, field=key)
            return check_string(path, index, key, value)
    if required:
        names = " or ".join(f"'{k}'" for k in keys)
        raise DataError(path, f"missing field {names}", record=index)
    return None


@dataclass(frozen=True)
class Fields:
    """Which keys (columns) hold each part of a record. ``None`` for question/answer means the
    defaults (``question`` or ``prompt``; ``answer`` or ``response``), as in TOFU."""

    question: str | None = None
    answer: str | None = None
    paraphrased_answer: str = "paraphrased_answer"
    perturbed_answer: str = "perturbed_answer"
    paraphrased_question: str = "paraphrased_question"
    text: str = "text"

    def question_keys(self) -> tuple[str, ...]:
        return (self.question,) if self.question else QUESTION_KEYS

    def answer_keys(self) -> tuple[str, ...]:
        return (self.answer,) if self.answer else ANSWER_KEYS


DEFAULT_FIELDS = Fields()


def parse_qa_record(obj: Any, path, index: int, fields: Fields = DEFAULT_FIELDS) -> QARecord:
    qk, ak = fields.question_keys(), fields.answer_keys()
    if not isinstance(obj, dict):
        raise DataError(path, f"expected an object with '{qk[0]}' and '{ak[0]}', got {type(obj).__name__}",
                        record=index)
    if not any(k in obj for k in qk) and fields.question is None:
        present = ", ".join(sorted(map(str, obj))[:8])
        raise DataError(path, f"missing field 'question' or 'prompt' (fields present: {present}; name yours with "
                        "--question-key/--answer-key)", record=index)
    question = _string_field(path, index, obj, qk, required=True)
    answer = _string_field(path, index, obj, ak, required=True)
    para = _string_field(path, index, obj, (fields.paraphrased_answer,), required=False)
    para_q = _string_field(path, index, obj, (fields.paraphrased_question,), required=False)
    subject = obj.get("subject", obj.get("author"))
    if subject is not None and not isinstance(subject, str):
        raise DataError(path, f"expected a string, got {type(subject).__name__}", record=index, field="subject")
    if subject is not None:
        check_string(path, index, "subject", subject)
    perturbed: tuple[str, ...] = ()
    for key in dict.fromkeys((fields.perturbed_answer, "perturbed_answers")):
        if key in obj and obj[key] is not None:
            raw = obj[key]
            if isinstance(raw, str):
                raw = [raw]
            raw = list(raw) if not isinstance(raw, (str, dict)) and hasattr(raw, "__iter__") else raw
            if not isinstance(raw, list) or not all(isinstance(p, str) and p.strip() for p in raw):
                raise DataError(path, "expected a list of non-empty strings", record=index, field=key)
            for p in raw:
                check_string(path, index, key, p)
            perturbed = tuple(raw)
    return QARecord(question, answer, para, perturbed, para_q, subject)


def read_qa(path: str | Path, fields: Fields = DEFAULT_FIELDS) -> list[QARecord]:
    """Read QA records from a JSON array or JSONL file (see module docstring)."""
    path = Path(path)
    records = [parse_qa_record(obj, path, i, fields) for i, obj in _load_json_values(path)]
    if not records:
        raise DataError(path, "no records found")
    return records


def qa_from_dicts(rows: Iterable[dict], source: str = "<records>", fields: Fields = DEFAULT_FIELDS) -> list[QARecord]:
    return [parse_qa_record(r, source, i, fields) for i, r in enumerate(rows)]


def write_qa(path: str | Path, records: Iterable[QARecord]) -> None:
    from ..util.io import write_text

    write_text(path, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records))


# ----------------------------------------------------------------------------- text


def read_text(path: str | Path, *, tokenizer=None, chunk_tokens: int = 200, vocab_size: int | None = None,
              text_key: str = "text") -> list[TextRecord]:
    """Read text records; the format follows the file suffix.

    ``.jsonl``/``.json``: objects with ``text``; ``.csv``: a ``text`` column; ``.txt``: plain text
    cut into ``chunk_tokens`` windows (needs ``tokenizer``); ``.npy``: a 2-D integer array of
    token ids, one row per sequence (checked against ``vocab_size`` when given).
    """
    path = Path(path)
    if path.is_dir() and all((path / n).exists() for n in EXTRACTION_PARTS):
        return [TextRecord(token_ids=tuple(int(t) for t in row)) for row in read_extraction_challenge(path, vocab_size)]
    if not path.exists():
        raise DataError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return [TextRecord(token_ids=tuple(int(t) for t in row)) for row in read_token_array(path, vocab_size)]
    if suffix in (".jsonl", ".json"):
        out = []
        for i, obj in _load_json_values(path):
            if not isinstance(obj, dict):
                raise DataError(path, f"expected an object with '{text_key}', got {type(obj).__name__}", record=i)
            text = _string_field(path, i, obj, (text_key,), required=True)
            out.append(TextRecord(text=text))
        return out
    if suffix == ".csv":
        rows = read_csv_rows(path)
        if rows and text_key not in rows[0]:
            raise DataError(path, f"expected a '{text_key}' column, found columns {list(rows[0])}")
        out = []
        for i, row in enumerate(rows):
            if not (row.get(text_key) or "").strip():
                raise DataError(path, "expected non-empty text", record=i, field=text_key)
            out.append(TextRecord(text=check_string(path, i, text_key, row[text_key])))
        if not out:
            raise DataError(path, "no rows found")
        return out
    if suffix in (".txt", ".md", ""):
        if tokenizer is None:
            raise DataError(path, "plain text is cut into token windows: a tokenizer is needed")
        if chunk_tokens < 2:
            raise DataError(path, f"chunk_tokens must be at least 2, got {chunk_tokens}")
        ids = tokenizer(read_user_text(path), add_special_tokens=False)["input_ids"]
        chunks = [ids[i : i + chunk_tokens] for i in range(0, len(ids) - chunk_tokens + 1, chunk_tokens)]
        if not chunks:
            raise DataError(path, f"text has {len(ids)} tokens, fewer than one {chunk_tokens}-token window")
        return [TextRecord(token_ids=tuple(c)) for c in chunks]
    raise DataError(path, f"unsupported suffix '{suffix}': expected .jsonl, .json, .csv, .txt or .npy")


def read_token_array(path: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """Load a 2-D integer token-id array (never unpickles)."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise DataError(path, f"not a plain numeric .npy array ({e})") from e
    except OSError as e:
        raise DataError(path, f"cannot read .npy file ({e})") from e
    if arr.dtype.kind not in "iu":
        raise DataError(path, f"expected integer token ids, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DataError(path, f"expected a 2-D array (sequences x tokens), got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        row = int(np.argwhere(arr < 0)[0][0])
        raise DataError(path, f"negative token id {int(arr.min())}", record=row)
    if vocab_size is not None and arr.size and arr.max() >= vocab_size:
        row = int(np.argwhere(arr >= vocab_size)[0][0])
        raise DataError(path, f"token id {int(arr.max())} is >= the model's vocabulary size {vocab_size}", record=row)
    return arr


EXTRACTION_PARTS = ("train_preprefix.npy", "train_prefix.npy", "train_suffix.npy")


def read_extraction_challenge(directory: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """The extraction-challenge layout: pre-prefix (100) + prefix (50) + suffix (50) ids -> 200-id rows."""
    directory = Path(directory)
    parts = []
    for name in EXTRACTION_PARTS:
        path = directory / name
        if not path.exists():
            raise DataError(path,
                            f"file not found (an extraction-challenge directory holds {', '.join(EXTRACTION_PARTS)})")
        parts.append(read_token_array(path, vocab_size))
    rows = {p.shape[0] for p in parts}
    if len(rows) != 1:
        raise DataError(directory, f"the three parts have different numbers of rows: {[p.shape[0] for p in parts]}")
    return np.concatenate(parts, axis=1)


def sample_sequences(records: list[TextRecord], count: int | None, seed: int,
                     max_tokens: int | None = None) -> list[TextRecord]:
    """A seeded sample of ``count`` sequences (all if None), each cut to ``max_tokens``."""
    import random

    chosen = list(records)
    if count is not None and count < len(chosen):
        chosen = random.Random(seed).sample(chosen, count)
    if max_tokens:
        chosen = [TextRecord(token_ids=tuple(r.token_ids[:max_tokens])) if r.token_ids is not None else r
                  for r in chosen]
    return chosen

"""Records from the forms people have them in: files, directories, Python lists, HF datasets.

- a list of :class:`QARecord`/:class:`TextRecord`, or of dicts;
- a ``datasets.Dataset``, or a ``DatasetDict`` with one split (or ``split=`` naming one);
- a directory written by ``Dataset.save_to_disk``, or an extraction-challenge directory (``.npy`` parts);
- a file: ``.json``/``.jsonl`` (TOFU's schema, arrays per line accepted), ``.csv``, ``.parquet``,
  ``.npy`` token ids, or plain ``.txt`` text cut into token windows.

Whether records are QA pairs or text follows the data: a question field (``question``/``prompt``, or
``Fields.question``) makes QA, a text field makes text. Errors name the source, record and field.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable

from ..util.errors import DataError
from ..util.log import get as get_logger
from .readers import (
    DEFAULT_FIELDS,
    EXTRACTION_PARTS,
    Fields,
    check_string,
    qa_from_dicts,
    read_csv_rows,
    read_qa,
    read_text,
)
from .records import QARecord, TextRecord

TEXT_SUFFIXES = (".npy", ".txt", ".md")
LOG = get_logger("data")


def _is_hf_dataset(obj) -> bool:
    return type(obj).__module__.startswith("datasets.") and hasattr(obj, "column_names")


def _is_hf_dataset_dict(obj) -> bool:
    return type(obj).__module__.startswith("datasets.") and type(obj).__name__ in ("DatasetDict", "IterableDatasetDict")


def _pick_split(dd, split: str | None, where: str):
    names = list(dd.keys())
    if split is not None:
        if split not in dd:
            raise DataError(where, f"no split '{split}'; splits: {', '.join(names)}")
        return dd[split]
    if len(names) != 1:
        raise DataError(where,
                        f"has {len(names)} splits ({', '.join(names)}): name one (split=..., or pass ds['NAME'])")
    return dd[names[0]]


def rows_to_records(rows: Iterable[Any], where: str, fields: Fields = DEFAULT_FIELDS) -> list:
    """Dicts (or records, kept as they are) to QA or text records, decided by the first row's fields."""
    rows = list(rows)
    if not rows:
        raise DataError(where, "no records found")
    if all(isinstance(r, (QARecord, TextRecord)) for r in rows):
        return rows
    first = rows[0]
    if isinstance(first, dict) and fields.text in first and not any(k in first for k in fields.question_keys()):
        out = []
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                raise DataError(where, f"expected an object with '{fields.text}', got {type(r).__name__}", record=i)
            text = r.get(fields.text)
            if not isinstance(text, str) or not text.strip():
                raise DataError(where, "expected a non-empty string", record=i, field=fields.text)
            out.append(TextRecord(text=check_string(where, i, fields.text, text)))
        return out
    return qa_from_dicts(rows, where, fields)


def _hf_rows(ds) -> list[dict]:
    try:
        return ds.to_list()
    except AttributeError:  # an IterableDataset
        return list(ds)


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow comes with datasets
        raise DataError(path, "reading parquet needs pyarrow: pip install pyarrow") from e
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(path, f"not a readable parquet file ({type(e).__name__}: {str(e).splitlines()[0]})") from e


def _read_csv_rows(path: Path) -> list[dict]:
    rows = read_csv_rows(path)
    for row in rows:  # a perturbed-answer column may hold a JSON list
        for k, v in list(row.items()):
            if isinstance(v, str) and v.startswith("[") and v.endswith("]"):
                try:
                    parsed = json.loads(v)
                except (json.JSONDecodeError, RecursionError):
                    continue
                if isinstance(parsed, list):
                    row[k] = parsed
    return rows


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()
                              or (path / "dataset_info.json").exists())


def is_text_source(source, fields: Fields = DEFAULT_FIELDS) -> bool:
    """Whether a path holds text sequences rather than QA pairs (decided without reading it all)."""
    if not isinstance(source, (str, Path)):
        return False
    path = Path(source)
    if path.is_dir():
        return all((path / n).exists() for n in EXTRACTION_PARTS)
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return True
    if suffix in (".json", ".jsonl") and path.exists():
        check_readable(path)
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(4096)
        return f'"{fields.text}"' in head and not any(f'"{k}"' in head for k in fields.question_keys())
    if suffix == ".csv" and path.exists():
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), [])
        return fields.text in header and not any(k in header for k in fields.question_keys())
    return False


def load_records(source, *, fields: Fields = DEFAULT_FIELDS, tokenizer=None, chunk_tokens: int = 200,
                 split: str | None = None) -> list:
    """QA or text records from any supported ``source`` (see the module docstring); ``[]`` for None."""
    records = _load_records(source, fields=fields, tokenizer=tokenizer, chunk_tokens=chunk_tokens, split=split)
    if isinstance(source, (str, Path)) or _is_hf_dataset(source) or _is_hf_dataset_dict(source):
        kind = "QA" if records and isinstance(records[0], QARecord) else "text"
        LOG.debug("read %d %s records from %s", len(records), kind,
                  source if isinstance(source, (str, Path)) else type(source).__name__)
    return records


def _load_records(source, *, fields: Fields, tokenizer, chunk_tokens: int, split: str | None) -> list:
    if source is None:
        return []
    if _is_hf_dataset_dict(source):
        source = _pick_split(source, split, "DatasetDict")
    if _is_hf_dataset(source):
        return rows_to_records(_hf_rows(source), "Dataset", fields)
    if not isinstance(source, (str, Path)):
        if isinstance(source, dict):
            raise DataError("<records>", "expected a list of records, got one dict")
        return rows_to_records(source, "<records>", fields)
    path = Path(source)
    if _is_saved_dataset(path):
        try:
            from datasets import load_from_disk
        except ImportError as e:  # pragma: no cover
            raise DataError(path, "reading a save_to_disk directory needs the datasets package") from e
        try:
            loaded = load_from_disk(str(path))
        except Exception as e:
            raise DataError(path, f"cannot read this datasets directory ({type(e).__name__}: {e})") from e
        if _is_hf_dataset_dict(loaded):
            loaded = _pick_split(loaded, split, str(path))
        return rows_to_records(_hf_rows(loaded), str(path), fields)
    if not path.exists():
        raise DataError(path, "file not found")
    check_readable(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return rows_to_records(_read_parquet(path), str(path), fields)
    if is_text_source(path, fields):
        vocab = len(tokenizer) if tokenizer is not None else None
        return read_text(path, tokenizer=tokenizer, chunk_tokens=chunk_tokens, vocab_size=vocab, text_key=fields.text)
    if path.is_dir():
        raise DataError(path, "is a directory, but neither a datasets save_to_disk directory nor an "
                              f"extraction-challenge directory ({', '.join(EXTRACTION_PARTS)})")
    if suffix == ".csv":
        return rows_to_records(_read_csv_rows(path), str(path), fields)
    if suffix in (".json", ".jsonl", ""):
        return read_qa(path, fields)
    raise DataError(path, f"unsupported suffix '{suffix}': expected .json, .jsonl, .csv, .parquet, .txt, .npy, "
                          "or a save_to_disk directory")


# Inputs larger than this are refused before reading (a wrong path such as /dev/zero or a disk image would
# otherwise fill memory); LETHE_MAX_INPUT_BYTES raises it.
MAX_INPUT_BYTES = 4 << 30


def check_readable(path: Path) -> None:
    """A data path is a directory or a regular file within the size cap: devices and FIFOs are refused (they
    never end), and so is a file over :data:`MAX_INPUT_BYTES` (one line naming the file and the cap)."""
    import os
    import stat

    if path.is_dir():
        return
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise DataError(path, "is not a regular file (a device, FIFO or socket): give a data file or directory")
    cap = int(os.environ.get("LETHE_MAX_INPUT_BYTES", MAX_INPUT_BYTES))
    size = path.stat().st_size
    if size > cap:
        raise DataError(path, f"is {size / 2**30:.1f} GiB, over the {cap / 2**30:.1f} GiB cap on one input file "
                              "(set LETHE_MAX_INPUT_BYTES to raise it)")


def load_qa(source, **kw) -> list[QARecord]:
    """Like :func:`load_records`, but the records must be QA pairs."""
    records = load_records(source, **kw)
    if records and not all(isinstance(r, QARecord) for r in records):
        raise DataError(source if isinstance(source, (str, Path)) else "<records>",
                        "expected question-answer records, got text records")
    return records


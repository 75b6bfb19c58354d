"""Records from every supported form give the same QA records; errors name source, record and field."""
import json

import pytest

from lethe.data.readers import Fields
from lethe.data.records import QARecord, TextRecord
from lethe.data.sources import is_text_source, load_records
from lethe.util.errors import DataError

ROWS = [{"q": "Where was Ana born?", "a": "In Porto.", "para": "Porto.", "wrong": ["In Lyon.", "In Oslo."]},
        {"q": "What does Ana write?", "a": "Poems.", "para": "Poetry.", "wrong": ["Plays.", "Essays."]}]
FIELDS = Fields(question="q", answer="a", paraphrased_answer="para", perturbed_answer="wrong")
EXPECTED = [QARecord("Where was Ana born?", "In Porto.", "Porto.", ("In Lyon.", "In Oslo.")),
            QARecord("What does Ana write?", "Poems.", "Poetry.", ("Plays.", "Essays."))]


def test_lists_of_dicts_and_records():
    assert load_records(ROWS, fields=FIELDS) == EXPECTED
    assert load_records(EXPECTED) == EXPECTED
    assert load_records([{"question": "Q?", "answer": "A."}]) == [QARecord("Q?", "A.")]
    assert load_records([{"text": "some prose"}]) == [TextRecord(text="some prose")]


def test_hf_dataset_dataset_dict_and_save_to_disk(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list(ROWS)
    assert load_records(ds, fields=FIELDS) == EXPECTED
    assert load_records(DatasetDict({"train": ds}), fields=FIELDS) == EXPECTED
    two = DatasetDict({"forget": ds, "retain": ds.select([0])})
    with pytest.raises(DataError, match="2 splits \\(forget, retain\\): name one"):
        load_records(two, fields=FIELDS)
    assert load_records(two, fields=FIELDS, split="retain") == EXPECTED[:1]
    ds.save_to_disk(str(tmp_path / "saved"))
    assert load_records(tmp_path / "saved", fields=FIELDS) == EXPECTED
    two.save_to_disk(str(tmp_path / "saved_dict"))
    assert load_records(tmp_path / "saved_dict", fields=FIELDS, split="forget") == EXPECTED


def test_files_parquet_csv_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    assert load_records(tmp_path / "d.parquet", fields=FIELDS) == EXPECTED
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert load_records(tmp_path / "d.jsonl", fields=FIELDS) == EXPECTED
    import csv

    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["q", "a", "para", "wrong"])
        w.writeheader()
        for r in ROWS:
            w.writerow({**r, "wrong": json.dumps(r["wrong"])})
    assert load_records(tmp_path / "d.csv", fields=FIELDS) == EXPECTED
    (tmp_path / "t.csv").write_text("body\nfirst text\nsecond text\n")
    assert is_text_source(tmp_path / "t.csv", Fields(text="body"))
    assert load_records(tmp_path / "t.csv", fields=Fields(text="body")) == [TextRecord(text="first text"),
                                                                            TextRecord(text="second text")]


def test_errors_name_source_record_and_field(tmp_path):
    bad = ROWS + [{"q": "Third?", "a": 3}]
    with pytest.raises(DataError, match=r"<records>, record 2, field 'a': expected a string, got int"):
        load_records(bad, fields=FIELDS)
    from datasets import Dataset

    with pytest.raises(DataError, match=r"Dataset, record 0: missing field 'question' or 'prompt' \(fields present: "
                                        r"a, para, q, wrong; name yours with --question-key"):
        load_records(Dataset.from_list(ROWS))
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"x.parquet: not a readable parquet file"):
        load_records(tmp_path / "x.parquet")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match="neither a datasets save_to_disk directory"):
        load_records(tmp_path / "dir")
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        load_records(tmp_path / "missing.jsonl")

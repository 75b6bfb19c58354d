import json

import numpy as np
import pytest

from lethe.data.readers import read_qa, read_text, read_token_array
from lethe.util.errors import DataError

QA = [{"question": "Who?", "answer": "Ana.", "paraphrased_answer": "It is Ana.",
       "perturbed_answer": ["Bo.", "Cy."], "paraphrased_question": "Which person?"},
      {"question": "Where?", "answer": "Lisbon."}]


def test_json_array(tmp_path):
    p = tmp_path / "qa.json"
    p.write_text(json.dumps(QA))
    recs = read_qa(p)
    assert [r.question for r in recs] == ["Who?", "Where?"]
    assert recs[0].perturbed_answers == ("Bo.", "Cy.")
    assert recs[0].paraphrased_answer == "It is Ana." and recs[0].paraphrased_question == "Which person?"
    assert recs[1].perturbed_answers == () and recs[1].paraphrased_answer is None


def test_jsonl(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in QA) + "\n\n")
    assert [r.answer for r in read_qa(p)] == ["Ana.", "Lisbon."]


def test_array_per_line_variant(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps(QA) + "\n" + json.dumps([QA[1]]) + "\n")
    assert [r.question for r in read_qa(p)] == ["Who?", "Where?", "Where?"]


def test_prompt_response_aliases(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"prompt": "Q?", "response": "A."}) + "\n")
    r = read_qa(p)[0]
    assert (r.question, r.answer) == ("Q?", "A.")


def test_text_jsonl_and_csv(tmp_path):
    j = tmp_path / "t.jsonl"
    j.write_text('{"text": "one"}\n{"text": "two"}\n')
    assert [r.text for r in read_text(j)] == ["one", "two"]
    c = tmp_path / "t.csv"
    c.write_text('id,text\n1,"hello, world"\n2,bye\n')
    assert [r.text for r in read_text(c)] == ["hello, world", "bye"]


def test_plain_text_is_chunked_by_tokens(tmp_path, tokenizer):
    t = tmp_path / "book.txt"
    t.write_text("Where was the author born? " * 40)
    recs = read_text(t, tokenizer=tokenizer, chunk_tokens=16)
    n_tokens = len(tokenizer(t.read_text(), add_special_tokens=False)["input_ids"])
    assert len(recs) == n_tokens // 16
    assert all(len(r.token_ids) == 16 for r in recs)


def test_npy_token_ids(tmp_path):
    p = tmp_path / "ids.npy"
    np.save(p, np.arange(12, dtype=np.int64).reshape(3, 4))
    recs = read_text(p, vocab_size=100)
    assert [r.token_ids for r in recs] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11)]


BAD_QA = [
    ("missing.json", None, "file not found"),
    ("empty.jsonl", "", "file is empty"),
    ("badline.jsonl", '{"question": "a", "answer": "b"}\n{oops}\n', "line 2 is not valid JSON"),
    ("noanswer.jsonl", '{"question": "a"}\n', "record 0: missing field 'answer' or 'response'"),
    ("noquestion.jsonl", '{"question": "a", "answer": "b"}\n{"answer": "b"}\n',
     "record 1: missing field 'question' or 'prompt'"),
    ("wrongtype.jsonl", '{"question": 3, "answer": "b"}\n', "record 0, field 'question': expected a string, got int"),
    ("blank.jsonl", '{"question": "  ", "answer": "b"}\n', "record 0, field 'question': expected a non-empty string"),
    ("perturbed.jsonl", '{"question": "a", "answer": "b", "perturbed_answer": [1, 2]}\n',
     "record 0, field 'perturbed_answer': expected a list of non-empty strings"),
    ("notobj.jsonl", '"just a string"\n', "record 0: expected an object"),
    ("para.jsonl", '{"question": "a", "answer": "b", "paraphrased_answer": ["x"]}\n',
     "record 0, field 'paraphrased_answer': expected a string, got list"),
    ("array.json", '[{"question": "a", "answer": "b"}, {"question": "c", "answer": null}]',
     "record 1, field 'answer': expected a string, got NoneType"),
]


@pytest.mark.parametrize("name,content,expected", BAD_QA, ids=[b[0] for b in BAD_QA])
def test_bad_qa_inputs_name_file_record_field(tmp_path, name, content, expected):
    p = tmp_path / name
    if content is not None:
        p.write_text(content)
    with pytest.raises(DataError) as e:
        read_qa(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and expected in msg and "\n" not in msg


def test_bad_text_inputs(tmp_path):
    c = tmp_path / "t.csv"
    c.write_text("id,body\n1,x\n")
    with pytest.raises(DataError, match="expected a 'text' column"):
        read_text(c)
    j = tmp_path / "t.jsonl"
    j.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(DataError, match="record 1: missing field 'text'"):
        read_text(j)
    with pytest.raises(DataError, match="unsupported suffix '.parquet'"):
        (tmp_path / "x.parquet").write_text("x")
        read_text(tmp_path / "x.parquet")
    with pytest.raises(DataError, match="a tokenizer is needed"):
        (tmp_path / "b.txt").write_text("some words")
        read_text(tmp_path / "b.txt")


def test_bad_npy_inputs(tmp_path):
    f = tmp_path / "f.npy"
    np.save(f, np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(DataError, match="expected integer token ids, got dtype float32"):
        read_token_array(f)
    r = tmp_path / "ragged.npy"
    np.save(r, np.array([[1, 2], [3]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="not a plain numeric .npy array"):
        read_token_array(r)
    big = tmp_path / "big.npy"
    np.save(big, np.array([[1, 2], [3, 500]], dtype=np.int32))
    with pytest.raises(DataError, match=r"record 1: token id 500 is >= the model's vocabulary size 100"):
        read_token_array(big, vocab_size=100)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.arange(5))
    with pytest.raises(DataError, match=r"expected a 2-D array"):
        read_token_array(flat)

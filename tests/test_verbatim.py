"""VerbMem, KnowMem, exact memorization and extraction strength on a model with known greedy output."""
import pytest

from lethe.data.records import QARecord, TextRecord
from lethe.evaluation.verbatim import exact_memorization, extraction_strength, knowmem, verbmem


def _memorize(model, tokenizer, records, epochs=60):
    from lethe import api
    from lethe.engine.loop import TrainConfig

    api.finetune(model, records, tokenizer=tokenizer, progress=False,
                 train=TrainConfig(epochs=epochs, lr=5e-3, batch_size=4, micro_batch_size=4, checkpoint=False))


def test_memorized_answers_give_high_em_and_extraction_strength(tokenizer, smoke_data, tiny_model):
    from lethe.model.build import build_tiny_model

    members = smoke_data.forget(10)[:4]
    untrained = build_tiny_model(tokenizer, "test", seed=3)
    em0, es0 = exact_memorization(untrained, tokenizer, members), extraction_strength(untrained, tokenizer, members)
    _memorize(tiny_model, tokenizer, members)
    em, es = exact_memorization(tiny_model, tokenizer, members), extraction_strength(tiny_model, tokenizer, members)
    assert min(em) > 0.8 and max(em0) < 0.5, (em, em0)
    assert sum(es) / len(es) > 0.3 and max(es0) < 0.5, (es, es0)
    # every answer token right under teacher forcing means the greedy path from the question is the answer
    assert all(s == 1.0 for e, s in zip(em, es) if e == 1.0) and any(e == 1.0 for e in em)


def test_extraction_strength_greedy_by_hand(tokenizer):
    """A stub whose greedy output is fixed: ES = 1 - k/|y| for the first k that reproduces the rest (the end
    token left out of y, as open-unlearning counts)."""
    from lethe.data.prompt import as_prompter
    from lethe.evaluation import requests
    from lethe.evaluation.verbatim import extraction_strength_greedy

    rec = QARecord("Who?", "Somebody here.")
    prompter = as_prompter(tokenizer)
    enc = prompter.encode(rec)
    start = next(i for i, lab in enumerate(enc["labels"]) if lab != -100)
    answer = enc["input_ids"][start:]
    assert answer[-1] in prompter.stop_ids
    answer = answer[:-1]
    n = len(answer)

    def fake(model, prompter, prefixes, lengths, keep_eos=False):
        # right from the third answer token on, wrong before
        return [answer[len(p) - start:] if len(p) - start >= 2 else [0] * n for p, n in zip(prefixes, lengths)]

    old = requests.greedy_from_ids
    requests.greedy_from_ids = fake
    try:
        assert extraction_strength_greedy(None, tokenizer, [rec]) == [pytest.approx(1 - 2 / n)]
    finally:
        requests.greedy_from_ids = old


def test_extraction_strength_from_one_forward_equals_greedy_decoding_from_every_prefix(tokenizer, smoke_data,
                                                                                      tiny_model):
    """Half-memorized answers give every ES value from 0 to 1; the teacher-forced reading equals decoding."""
    from lethe.evaluation.verbatim import extraction_strength_greedy

    members = smoke_data.forget(10) + smoke_data.retain(10)[:4]
    _memorize(tiny_model, tokenizer, members, epochs=40)
    for include_end in (False, True):
        fast = extraction_strength(tiny_model, tokenizer, members, include_end=include_end)
        slow = extraction_strength_greedy(tiny_model, tokenizer, members, include_end=include_end)
        assert fast == pytest.approx(slow, abs=1e-12), (fast, slow)
    assert len(set(fast)) > 1  # not a degenerate case where every answer is all or nothing


def test_em_es_leave_out_the_end_token_as_open_unlearning_does(tokenizer):
    """Statistics by hand: EM over the answer without its end token; ES 1 - k/n with k one past the last miss."""
    import numpy as np

    from lethe.evaluation.verbatim import exact_memorization_of, extraction_strength_of

    hits = np.array([False, True, False, True, True, True])  # the last one is the end token
    st = {"logp": np.zeros(6), "mu": np.zeros(6), "sigma": np.ones(6), "hit": hits, "ids": np.arange(6), "end": True}
    assert exact_memorization_of([st]) == [pytest.approx(3 / 5)]
    assert exact_memorization_of([st], include_end=True) == [pytest.approx(4 / 6)]
    assert extraction_strength_of([st]) == [pytest.approx(1 - 3 / 5)]
    assert extraction_strength_of([st], include_end=True) == [pytest.approx(1 - 3 / 6)]
    none = dict(st, hit=np.zeros(6, dtype=bool))
    assert extraction_strength_of([none]) == [0.0]  # no suffix reproduced (open-unlearning's loop leaves 1/n)
    all_right = dict(st, hit=np.ones(6, dtype=bool))
    assert extraction_strength_of([all_right]) == [1.0] and exact_memorization_of([all_right]) == [1.0]


def test_verbmem_and_knowmem_rise_when_the_text_is_memorized(tokenizer, smoke_data, tiny_model):
    texts = [TextRecord(text=" ".join(r.answer for r in smoke_data.full[i : i + 3])) for i in range(0, 12, 3)]
    before = sum(verbmem(tiny_model, tokenizer, texts, prefix_tokens=8, continuation_tokens=16)) / len(texts)
    _memorize(tiny_model, tokenizer, texts, epochs=80)
    after = verbmem(tiny_model, tokenizer, texts, prefix_tokens=8, continuation_tokens=16)
    assert sum(after) / len(after) > before + 30 and all(0 <= v <= 100 for v in after)
    qa = smoke_data.forget(10)[:3]
    scores = knowmem(tiny_model, tokenizer, qa, smoke_data.retain(10)[:2], shots=2, max_new_tokens=8)
    assert len(scores) == 3 and all(0 <= v <= 100 for v in scores)


def test_eval_command_reports_memorization_and_muse_metrics(tokenizer, smoke_data, tmp_path, capsys):
    import json

    from lethe.cli.commands import main
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, tmp_path / "m")
    (tmp_path / "f.json").write_text(json.dumps([r.to_dict() for r in smoke_data.forget(10)[:3]]))
    (tmp_path / "r.json").write_text(json.dumps([r.to_dict() for r in smoke_data.retain(10)[:4]]))
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": " ".join(r.answer for r in smoke_data.full[i:i + 4])})
                                              + "\n" for i in range(0, 8, 4)))
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "eval", "--model", str(tmp_path / "m"), "--eval-forget", str(tmp_path / "f.json"),
              "--memorization", "--verbmem", str(tmp_path / "t.jsonl"), "--verbmem-prefix", "8", "--verbmem-tokens",
              "8",
              "--knowmem", str(tmp_path / "f.json"), "--knowmem-retain", str(tmp_path / "r.json"),
              "--knowmem-shots", "1", "--max-new-tokens", "4", "--out", str(tmp_path / "e.json")])
    assert e.value.code == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "e.json").read_text())["metrics"]
    for key in ("forget/EM", "forget/ExtractionStrength", "verbmem/VerbMem", "knowmem/forget", "knowmem/retain"):
        assert key in m and m[key] == m[key], key

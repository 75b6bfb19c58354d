import math

import numpy as np
import pytest
from scipy.stats import ks_2samp

from lethe.evaluation import metrics as M
from lethe.evaluation.suite import EvalResult, aggregate


def test_rouge_l_recall_by_hand():
    # reference "the cat sat on the mat" (6 tokens); LCS with "the cat lay on a mat" = the cat on mat = 4
    assert M.rouge_l_recall(["the cat lay on a mat"], ["the cat sat on the mat"]) == [pytest.approx(4 / 6)]
    # stemming: "running" and "runs" both stem to "run"
    assert M.rouge_l_recall(["she runs"], ["she running"]) == [pytest.approx(1.0)]
    assert M.rouge_l_recall(["nothing alike"], ["totally different"]) == [0.0]


def test_probability_forms():
    assert M.probability([0.0, math.log(2)]) == [pytest.approx(1.0), pytest.approx(0.5)]
    # p(true)=0.5, perturbed 0.25 and 0.25 -> 0.5
    out = M.probability_mc([math.log(2)], [[math.log(4), math.log(4)]])
    assert out == [pytest.approx(0.5)]


def test_truth_ratio_by_hand():
    base = [1.0, 2.0]
    perts = [[2.0, 4.0], [1.0, 1.0]]
    s = M.truth_ratio_values(base, perts)
    assert s == [pytest.approx(math.exp(2.0)), pytest.approx(math.exp(-1.0))]
    # forget: mean min(s, 1/s) = mean(e^-2, e^-1)
    assert M.truth_ratio_forget(s) == pytest.approx((math.exp(-2) + math.exp(-1)) / 2)
    assert M.truth_ratio_forget_closer_look(s) == pytest.approx(1 - (math.exp(-2) + math.exp(-1)) / 2)
    # others: mean max(0, 1 - 1/s) = mean(1 - e^-2, 0)
    assert M.truth_ratio_other(s) == pytest.approx((1 - math.exp(-2)) / 2)
    r = M.truth_ratio_arithmetic(base, perts)
    assert r[0] == pytest.approx(((math.exp(-2) + math.exp(-4)) / 2) / math.exp(-1))
    assert M.truth_ratio_arith_other([0.25, 2.0]) == pytest.approx((0.75 + 0.0) / 2)


def test_forget_quality_is_ks_pvalue():
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(0, 1, 40), rng.lognormal(1, 1, 37)
    assert M.forget_quality(a, b) == pytest.approx(ks_2samp(a, b).pvalue)
    assert M.forget_quality(a, a) == pytest.approx(1.0)


def test_harmonic_mean_and_mu9():
    assert M.harmonic_mean([1, 0.5]) == pytest.approx(2 / 3)
    assert M.harmonic_mean([0.3, 0.0]) == 0.0
    res = EvalResult(metrics={}, roles={"forget": "forget", "retain": "retain", "real_authors": "utility",
                                        "world_facts": "utility"})
    values = {}
    for i, s in enumerate(("retain", "real_authors", "world_facts")):
        for j, k in enumerate(("ROUGE", "P", "TR")):
            values[f"{s}/{k}"] = 0.1 * (i * 3 + j + 1)
    res.metrics.update(values)
    res.metrics.update({"forget/ROUGE": 0.9, "forget/P": 0.6, "forget/TR_closer": 0.3})
    res.per_item["forget/TR_values"] = [1.0, 2.0, 3.0]
    aggregate(res, retain_model_tr=[1.0, 2.0, 3.0])
    expected = 9 / sum(1 / v for v in values.values())
    assert res.metrics["MU"] == pytest.approx(expected)
    assert res.metrics["FE"] == pytest.approx(1 - (0.9 + 0.6 + 0.3) / 3)
    assert res.metrics["FQ"] == pytest.approx(1.0)


def test_answer_nll_batched_matches_one_pair_at_a_time(tokenizer, tiny_model, smoke_data):
    """Left padding, answer-span logits and de-duplication change nothing against a plain loop."""
    import torch

    from lethe.data.prompt import Prompter
    from lethe.evaluation.requests import answer_nll

    recs = smoke_data.full[:7]
    pairs = [(r.question, r.answer) for r in recs] + [(recs[0].question, recs[0].answer)]  # one duplicate
    pairs += [(recs[1].question, "A much longer answer than any other in this batch, " * 3)]
    nll, count = answer_nll(tiny_model, tokenizer, pairs, batch_size=4)
    for (q, a), got_nll, got_n in zip(pairs, nll, count):
        e = Prompter(tokenizer).encode_qa(q, a)
        ids, labels = torch.tensor([e["input_ids"]]), e["labels"]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=ids).logits[0].double(), -1)
        want = -sum(logp[t - 1, labels[t]].item() for t in range(1, len(labels)) if labels[t] != -100)
        assert got_n == sum(1 for t in range(1, len(labels)) if labels[t] != -100)
        assert got_nll == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert nll[7] == nll[0] and count[7] == count[0]


def _one_pair_nll(model, prompter, q, a, max_length):
    import torch

    e = prompter.encode_qa(q, a, max_length=max_length)
    ids, labels = torch.tensor([e["input_ids"]]), e["labels"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    counted = [t for t in range(1, len(labels)) if labels[t] != -100]
    return -sum(logp[t - 1, labels[t]].item() for t in counted), len(counted)


@pytest.mark.parametrize("fmt", ["plain", "chat"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shared_prompt_scoring_equals_each_pair_alone(fmt, arch, tokenizer, smoke_data):
    """Answers to one question share the prompt's KV cache: the same NLL and count as scoring each pair
    alone, with groups of different sizes, duplicates, chat templates and answers cut by max_length."""
    import copy

    import lethe
    from lethe.data.prompt import Prompter
    from lethe.evaluation import requests
    from lethe.model.build import build_tiny_model

    tok = copy.deepcopy(tokenizer)
    if fmt == "chat":
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    if arch == "llama":
        model = build_tiny_model(tok, "test", seed=1)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256))
    model.eval()
    prompter = Prompter(tok, lethe.PromptFormat(fmt))
    recs = smoke_data.forget(10)[:5]
    pairs = []
    for k, r in enumerate(recs):  # group sizes 7, 6, 5, ... (answer, paraphrase, a shrinking list of perturbed)
        pairs += [(r.question, r.answer), (r.question, r.paraphrased_answer)]
        pairs += [(r.question, p) for p in r.perturbed_answers[: max(0, 5 - k)]]
    pairs += [pairs[0], (smoke_data.retain(10)[0].question, smoke_data.retain(10)[0].answer)]  # duplicate, singleton
    for max_length in (512, 24):  # 24 cuts most answers short (some to nothing)
        calls = []
        real = requests._score_shared
        requests._score_shared = lambda *a, **k: calls.append(1) or real(*a, **k)
        try:
            nll, count = requests.answer_nll(model, prompter, pairs, batch_size=2, max_length=max_length)
        finally:
            requests._score_shared = real
        assert calls, "the shared path was not taken"
        for (q, a), got_nll, got_n in zip(pairs, nll, count):
            want_nll, want_n = _one_pair_nll(model, prompter, q, a, max_length)
            assert got_n == want_n
            assert got_nll == pytest.approx(want_nll, rel=1e-4, abs=1e-4)
        plain = requests.answer_nll(model, prompter, pairs, batch_size=3, max_length=max_length, share_prompts=False)
        assert plain[1] == count and plain[0] == pytest.approx(nll, rel=1e-4, abs=1e-4)

"""A tiny training run per method: forgetting happens, and regularizers protect the retain set."""
import copy

import numpy as np
import pytest
import torch

from lethe import api
from lethe.engine.loop import TrainConfig
from lethe.evaluation.requests import answer_nll
from lethe.model.build import build_tiny_model

FORGET = ["GA", "NPO", "DPO", "IDK", "ME", "IHL", "FLAT-KL", "FLAT-TV", "FLAT-JS", "FLAT-PEARSON"]
REGULARIZED = {"GA+GD": "GA", "GA+KL": "GA", "NPO+GD": "NPO", "NPO+KL": "NPO", "DPO+GD": "DPO", "DPO+KL": "DPO",
               "DPO+AP": "DPO", "IDK+GD": "IDK", "IDK+AP": "IDK", "ME+GD": "ME", "ME+KL": "ME", "IHL+GD": "IHL"}


def answer_probability(model, tokenizer, records):
    nll, n = answer_nll(model, tokenizer, [(r.question, r.answer) for r in records])
    return float(np.mean(np.exp(-np.asarray(nll) / np.asarray(n))))


@pytest.fixture(scope="module")
def trained(tokenizer, smoke_data):
    model = build_tiny_model(tokenizer, "smoke", seed=0)
    cfg = TrainConfig(epochs=30, lr=3e-3, batch_size=8, micro_batch_size=8, checkpoint=False)
    api.finetune(model, smoke_data.full, tokenizer=tokenizer, train=cfg, progress=False)
    return model


@pytest.fixture(scope="module")
def outcomes(trained, tokenizer, smoke_data):
    forget, retain = smoke_data.forget(10), smoke_data.retain(10)
    out = {"start": (answer_probability(trained, tokenizer, forget), answer_probability(trained, tokenizer, retain))}
    for method in FORGET + list(REGULARIZED):
        model = copy.deepcopy(trained)
        cfg = TrainConfig(epochs=3, lr=3e-3, batch_size=4, micro_batch_size=4, checkpoint=False)
        _, run = api.unlearn(model, forget, retain, method=method, tokenizer=tokenizer, train=cfg, progress=False)
        assert run.status == "ok", run.message
        out[method] = (answer_probability(model, tokenizer, forget), answer_probability(model, tokenizer, retain))
    return out


def test_start_model_knows_the_forget_set(outcomes):
    assert outcomes["start"][0] > 0.5


@pytest.mark.parametrize("method", FORGET + list(REGULARIZED))
def test_every_method_lowers_forget_probability(outcomes, method):
    assert outcomes[method][0] < 0.6 * outcomes["start"][0]


@pytest.mark.parametrize("method", list(REGULARIZED))
def test_regularizer_keeps_retain_probability_higher(outcomes, method):
    assert outcomes[method][1] > outcomes[REGULARIZED[method]][1]


def test_kl_reference_is_the_starting_model_and_is_not_kept(trained, tokenizer, smoke_data):
    from lethe.engine.tasks import UnlearnTask
    from lethe.model.reference import FrozenCopy
    from lethe.objectives import parse_method

    ref = FrozenCopy(trained)
    task = UnlearnTask(tokenizer, parse_method("GA+KL"), smoke_data.forget(10), smoke_data.retain(10))
    batch = {"input_ids": torch.tensor([[1, 5, 6, 7]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(ref(batch, torch.device("cpu")), trained(**batch).logits)
    assert all(not p.requires_grad for p in ref.model.parameters())
    assert ref.nbytes == sum(p.numel() * 4 for p in trained.parameters())
    model = copy.deepcopy(trained)
    _, run = api.unlearn(model, smoke_data.forget(10), smoke_data.retain(10), method="GA+KL", tokenizer=tokenizer,
                         train=TrainConfig(epochs=1, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False),
                         progress=False)
    assert run.cost["reference_model_bytes"] == ref.nbytes and run.cost["tokens_forward_only"] > 0
    del task


def test_reference_logprobs_are_cached_once(trained, tokenizer, smoke_data, monkeypatch):
    """NPO/DPO read the starting model's sequence log-probs from a cache; no reference forward per step."""
    from lethe.engine.tasks import UnlearnTask
    from lethe.objectives import parse_method
    from lethe.ops.tokens import sequence_logprob

    task = UnlearnTask(tokenizer, parse_method("DPO+GD"), smoke_data.forget(10), smoke_data.retain(10))
    task.cache_reference(trained, torch.device("cpu"))
    assert set(task.cache) == {"forget", "idk"}
    from lethe.data.batching import pad_batch

    b = pad_batch(task.forget, tokenizer.pad_token_id)
    with torch.no_grad():
        expected, _ = sequence_logprob(trained(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                       b["labels"])
    torch.testing.assert_close(task.cache["forget"], expected, atol=1e-5, rtol=0)
    assert task.reference is None  # DPO needs no reference model at train time


def test_pairing_and_refusals_are_fixed_by_seed(tokenizer, smoke_data):
    from lethe.engine.tasks import UnlearnTask
    from lethe.objectives import parse_method

    a = UnlearnTask(tokenizer, parse_method("IDK+AP"), smoke_data.forget(10), smoke_data.retain(10), seed=1)
    b = UnlearnTask(tokenizer, parse_method("IDK+AP"), smoke_data.forget(10), smoke_data.retain(10), seed=1)
    c = UnlearnTask(tokenizer, parse_method("IDK+AP"), smoke_data.forget(10), smoke_data.retain(10), seed=2)
    assert a.pairs == b.pairs and a.streams["idk"] == b.streams["idk"]
    assert a.streams["retain_idk"] == b.streams["retain_idk"]
    assert a.pairs != c.pairs or a.streams["idk"] != c.streams["idk"]
    partners = [j for p in a.pairs for j in p]
    assert len(set(partners)) == len(partners)  # distinct retain partners while retain is larger


def test_retain_per_forget_widens_the_regularizer_batch(tokenizer, smoke_data, tiny_model):
    from lethe.data.pairing import pair_retain
    from lethe.engine.tasks import UnlearnTask
    from lethe.objectives import parse_method

    one = pair_retain(5, 12, seed=3)
    three = pair_retain(5, 12, seed=3, per_forget=3)
    assert three[0][0] == one[0][0] and all(len(set(p)) == 3 for p in three)  # distinct partners per example
    assert len({j for p in three for j in p}) == 12  # 15 slots over 12 examples: every one is used
    assert [p[0] for p in pair_retain(5, 12, seed=3, per_forget=1)] == [p[0] for p in one]
    assert pair_retain(3, 0, seed=0) == [[], [], []]

    task = UnlearnTask(tokenizer, parse_method("GA+GD"), smoke_data.forget(10), smoke_data.retain(10), seed=0,
                       retain_per_forget=3)
    seen = {}

    def fake_loss(inputs, scale=None):
        seen["retain_rows"] = inputs[("regularizer", "retain_logits")].shape[0]
        return inputs[("forget", "forget_logits")].hidden.sum() * 0, {}  # logits arrive through the fused head

    task.method = type("M", (), {"loss": staticmethod(fake_loss), "total": staticmethod(lambda parts: 0.0)})()
    import torch

    task(tiny_model, [0, 1], torch.device("cpu"))
    assert seen["retain_rows"] == 6  # two forget examples, three retain partners each


def test_refusal_pool():
    from lethe.data.refusals import REFUSALS, refusal_for

    assert len(REFUSALS) >= 100 and len(set(REFUSALS)) == len(REFUSALS)
    assert refusal_for(3, 0) == refusal_for(3, 0)
    assert len({refusal_for(i, 0) for i in range(50)}) > 20


def test_eval_every_scores_every_kth_epoch_and_the_last(tokenizer, smoke_data, tiny_model):
    from lethe import api
    from lethe.engine.loop import TrainConfig
    from lethe.evaluation.suite import EvalSet
    from lethe.util.errors import LetheError

    forget = smoke_data.forget(10)
    sets = [EvalSet("forget", forget, "qa", role="forget"), EvalSet("retain", smoke_data.retain(10)[:4], "qa")]
    _, run = api.unlearn(tiny_model, forget, smoke_data.retain(10), method="GA+GD", tokenizer=tokenizer,
                         train=TrainConfig(epochs=3, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False,
                                           retain_per_forget=2),
                         evaluation=api.EvalConfig(sets=sets, max_new_tokens=4, every=2),
                         save=False, progress=False)
    scored = [e["epoch"] for e in run.epochs if "forget/ROUGE" in e.get("metrics", {})]
    assert scored == [0, 2, 3]
    assert all("forget" in e["losses"] for e in run.epochs[1:])  # every epoch still logs its losses
    assert run.config["retain_per_forget"] == 2
    with pytest.raises(LetheError, match="--eval-every: expected an integer >= 0 \\(or unset\\), got -1"):
        api.unlearn(tiny_model, forget, smoke_data.retain(10), method="GA+GD", tokenizer=tokenizer,
                    evaluation=api.EvalConfig(every=-1))


def test_evaluation_schedule_start_end_and_none_between(tokenizer, smoke_data, tiny_model):
    from lethe import api
    from lethe.engine.loop import TrainConfig
    from lethe.evaluation.suite import EvalSet
    from lethe.util.errors import LetheError

    forget = smoke_data.forget(10)
    sets = [EvalSet("forget", forget, "qa", role="forget")]
    cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False)

    def scored(every, at):
        _, run = api.unlearn(tiny_model, forget, smoke_data.retain(10), method="GA+GD", tokenizer=tokenizer,
                             train=cfg, evaluation=api.EvalConfig(sets=sets, max_new_tokens=2, every=every, at=at),
                             save=False, progress=False)
        return [e["epoch"] for e in run.epochs if "forget/ROUGE" in e.get("metrics", {})], run

    assert scored(0, ("start", "end"))[0] == [0, 3]
    only_end, run = scored(0, ("end",))
    assert only_end == [3] and run.samples  # samples come from the final weights
    assert scored(0, ())[0] == []
    assert scored(2, ("end",))[0] == [2, 3]
    with pytest.raises(LetheError, match="--eval-at"):
        api.EvalConfig(at=("middle",))


def test_fast_suite_scores_without_generation_and_agrees_with_the_full_one(tokenizer, smoke_data, tiny_model):
    from lethe import api
    from lethe.engine.loop import TrainConfig
    from lethe.evaluation.suite import EvalSet, evaluate_sets

    forget = smoke_data.forget(10)
    sets = [EvalSet("forget", forget, "qa", role="forget"), EvalSet("retain", smoke_data.retain(10)[:4], "qa")]
    full = evaluate_sets(tiny_model, tokenizer, sets, max_new_tokens=3)
    fast = evaluate_sets(tiny_model, tokenizer, sets, max_new_tokens=3, generate=False)
    assert not fast.generations and "forget/ROUGE" not in fast.metrics and "forget/TE" not in fast.metrics
    assert {k: v for k, v in full.metrics.items() if k in fast.metrics} == fast.metrics
    assert fast.per_item["forget/TR_values"] == full.per_item["forget/TR_values"]
    _, run = api.unlearn(tiny_model, forget, smoke_data.retain(10), method="GA+GD", tokenizer=tokenizer,
                         train=TrainConfig(epochs=3, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False),
                         evaluation=api.EvalConfig(sets=sets, max_new_tokens=2, per_epoch="fast"), save=False,
                         progress=False)
    kinds = [("forget/ROUGE" in e["metrics"], "forget/P" in e["metrics"]) for e in run.epochs]
    assert kinds == [(True, True), (False, True), (False, True), (True, True)]  # full at start and end
    # evaluation cost is recorded: two full evaluations of 2 generated tokens at most per question
    ev_cost = run.cost["evaluation"]
    n_questions = len(forget) + 4
    assert 0 < ev_cost["generated_tokens"] <= 2 * 2 * n_questions and ev_cost["generation_tokens_per_s"] > 0
    assert ev_cost["evaluation_s"] >= ev_cost["generation_s"] > 0

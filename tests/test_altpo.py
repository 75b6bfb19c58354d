"""AltPO: the loss against a by-hand float64 DPO with gradients, the alternates (sampled once, seeded, cached in
the run directory, a refusal when sampling gives nothing), and whole runs from the API and the CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch

from lethe.objectives.altpo import CACHE_FILE, AltPO, clean_alternate
from lethe.util.errors import LetheError


def test_the_loss_is_dpo_with_the_alternate_preferred_by_hand_in_float64():
    torch.manual_seed(0)
    alt, forget = torch.randn(5, dtype=torch.float64) * 3, torch.randn(5, dtype=torch.float64) * 3
    ref_alt, ref_forget = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    beta = 0.3
    loss = AltPO(beta=beta)
    inputs = {"alternate_seq_logp": alt.clone().requires_grad_(True), "forget_seq_logp": forget.clone()
              .requires_grad_(True), "ref_alternate_seq_logp": ref_alt, "ref_forget_seq_logp": ref_forget}
    value = loss(inputs)
    by_hand = 0.0
    for a, f, ra, rf in zip(alt.tolist(), forget.tolist(), ref_alt.tolist(), ref_forget.tolist()):
        margin = (a - ra) - (f - rf)
        by_hand += -(2 / beta) * -math.log1p(math.exp(-beta * margin))  # log σ(x) = -log(1 + e^-x)
    assert value.item() == pytest.approx(by_hand / 5, rel=1e-12)
    value.backward()
    # d/da of -(2/β) log σ(β m) / n = -(2/n) σ(-β m); the forget answer's gradient is its negative
    margins = (alt - ref_alt) - (forget - ref_forget)
    expected = -(2 / 5) * torch.sigmoid(-beta * margins)
    assert torch.allclose(inputs["alternate_seq_logp"].grad, expected, rtol=1e-12)
    assert torch.allclose(inputs["forget_seq_logp"].grad, -expected, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda a, f: AltPO(beta=beta)({"alternate_seq_logp": a, "forget_seq_logp": f,
                                                                    "ref_alternate_seq_logp": ref_alt,
                                                                    "ref_forget_seq_logp": ref_forget}),
                                    (alt.clone().requires_grad_(True), forget.clone().requires_grad_(True)))


def test_options_are_checked_when_the_method_is_parsed():
    from lethe.objectives.method import parse_method

    for text, expected in (("AltPO(beta=0)", "'beta' must be > 0"), ("AltPO(tries=0)", "'tries' must be"),
                           ("AltPO(max_new_tokens=-1)", "'max_new_tokens' must be"), ("AltPO(gamma=1)", "gamma")):
        with pytest.raises(LetheError, match=expected):
            parse_method(text)
    assert parse_method("AltPO(beta=0.5)+GD").losses[0].beta == 0.5


def test_a_sampled_answer_is_cleaned_of_lead_ins_and_a_next_question():
    assert clean_alternate(" Alternate Answer: He was born in Lima.\nQuestion: Where?") == "He was born in Lima."
    assert clean_alternate("answer:  In 1990.") == "In 1990."
    assert clean_alternate("A painter.\nQ: and?") == "A painter."


def _setup(tiny_model, tokenizer, forget, tmp_path=None, seed=0):
    from lethe.data.prompt import Prompter
    from lethe.engine.tasks import LossData, Streams

    prompter = Prompter(tokenizer)
    streams = Streams(prompter, forget, seed=seed)
    loss = AltPO()
    loss.setup(tiny_model, LossData(forget, (), streams, prompter.pad_id, seed, cache_dir=tmp_path))
    return loss, streams


def test_alternates_are_seeded_cached_and_read_back(tiny_model, tokenizer, smoke_data, tmp_path):
    forget = smoke_data.forget(10)[:3]
    state = torch.get_rng_state()
    _, streams = _setup(tiny_model, tokenizer, forget, tmp_path)
    assert torch.equal(torch.get_rng_state(), state)  # sampling leaves the global generator alone
    rows = [json.loads(line) for line in (tmp_path / CACHE_FILE).read_text().splitlines()]
    assert [r["question"] for r in rows] == [r.question for r in forget]
    assert all(r["alternate"].strip() and r["alternate"] != r["answer"] for r in rows)
    _, again = _setup(tiny_model, tokenizer, forget)  # no cache: sampled again, the same
    assert again["alternate"] == streams["alternate"]
    assert len(streams["alternate"]) == len(forget)
    rows[0]["alternate"] = "Someone else entirely."
    (tmp_path / CACHE_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, cached = _setup(tiny_model, tokenizer, forget, tmp_path)  # a resumed run reads what it wrote
    from lethe.data.prompt import Prompter

    expected = Prompter(tokenizer).encode_qa(forget[0].question, "Someone else entirely.")
    assert cached["alternate"][0] == expected


def test_a_model_that_writes_nothing_gets_refusals(tiny_model, tokenizer, smoke_data, monkeypatch):
    from lethe.data.refusals import refusal_for

    monkeypatch.setattr(AltPO, "_sample", staticmethod(lambda *a, **k: "  "))
    forget = smoke_data.forget(10)[:2]
    loss, streams = _setup(tiny_model, tokenizer, forget, seed=3)
    assert loss.state() == {"refusal_fallbacks": 2}
    from lethe.data.prompt import Prompter

    assert streams["alternate"][1] == Prompter(tokenizer).encode_qa(forget[1].question, refusal_for(1, 3))


def test_altpo_needs_question_answer_records(tiny_model, tokenizer):
    from lethe.data.records import TextRecord

    with pytest.raises(LetheError, match="altpo writes alternate answers"):
        _setup(tiny_model, tokenizer, [TextRecord(text="some text to forget")])


@pytest.mark.parametrize("params", ["full", "lora"])
def test_altpo_runs_and_moves_the_forget_answer_down(params, tiny_model, tokenizer, smoke_data, tmp_path):
    import lethe
    from lethe.engine.loop import TrainConfig

    forget, retain = smoke_data.forget(10)[:4], smoke_data.retain(10)[:8]
    model, run = lethe.unlearn(tiny_model, forget, retain, method="AltPO(beta=0.5)+GD", params=params,
                               tokenizer=tokenizer, out_dir=tmp_path / "run", progress=False,
                               evaluation=lethe.EvalConfig(at=()),
                               train=TrainConfig(epochs=3, lr=1e-2 if params == "lora" else 3e-3, batch_size=2,
                                                 micro_batch_size=2, checkpoint=False))
    assert run.status == "ok" and (tmp_path / "run" / CACHE_FILE).exists()
    losses = [e["losses"]["forget"] for e in run.epochs if "losses" in e]
    assert len(losses) == 3 and losses[-1] < losses[0]  # the preference margin grows
    assert run.config["forget_options"] == {"beta": 0.5, "max_new_tokens": 0, "tries": 4}

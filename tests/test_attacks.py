"""Attacks that try to bring forgotten knowledge back: RTN quantization against a by-hand reference, relearning
against a retain-model control, options checked before any work, models never changed."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import lethe
from lethe.attacks import (
    ATTACKS,
    parse_attacks,
    quantize_rtn,
    recovery,
    relearn_split,
    robustness_q,
    robustness_r,
    run_attacks,
)
from lethe.util.errors import LetheError


def _by_hand(w, bits, group, symmetric):
    out = torch.empty_like(w)
    for r in range(w.shape[0]):
        for start in range(0, w.shape[1], group or w.shape[1]):
            block = w[r, start:start + (group or w.shape[1])]
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                s = max(float(block.abs().max()), 1e-12) / qmax
                q = [max(-qmax, min(qmax, round(float(x) / s))) for x in block]
                out[r, start:start + len(block)] = torch.tensor([v * s for v in q], dtype=torch.float64)
            else:
                qmax = 2 ** bits - 1
                lo, hi = float(block.min()), float(block.max())
                s = max(hi - lo, 1e-12) / qmax
                z = round(-lo / s)
                q = [max(0, min(qmax, round(float(x) / s) + z)) for x in block]
                out[r, start:start + len(block)] = torch.tensor([(v - z) * s for v in q], dtype=torch.float64)
    return out


@pytest.mark.parametrize("bits,group,symmetric", [(4, 0, True), (4, 8, True), (8, 8, False), (3, 5, False)])
def test_rtn_equals_a_by_hand_reference_and_its_error_is_bounded(bits, group, symmetric):
    torch.manual_seed(0)
    w = torch.randn(6, 24, dtype=torch.float64)
    got = quantize_rtn(w, bits, group, symmetric)
    want = _by_hand(w, bits, group, symmetric)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    g = group or w.shape[1]
    for r in range(6):
        for start in range(0, 24, g):
            block = w[r, start:start + g]
            step = (float(block.abs().max()) / (2 ** (bits - 1) - 1) if symmetric
                    else float(block.max() - block.min()) / (2 ** bits - 1))
            assert float((got[r, start:start + g] - block).abs().max()) <= step / 2 + 1e-12
    assert len(torch.unique(quantize_rtn(w, 2, 0, True)[0])) <= 3


def test_options_are_checked_before_any_work():
    assert parse_attacks("quantize", {"quantize": {"bits": "8"}}) == {"quantize": {"bits": 8, "group": 128,
                                                                                   "symmetric": True, "method": "rtn"}}
    for text, opts, word in (("quantise", None, "Did you mean 'quantize'"), ("quantize", {"quantize": {"bits": 1}},
                             "bits must be 2..8"), ("relearn", {"relearn": {"fraction": 1.5}}, "fraction"),
                             ("relearn", {"relearn": {"lr": "fast"}}, "expects float"),
                             ("quantize,quantize", None, "named twice"), ("quantize", {"relearn": {"lr": 1}},
                                                                          "does not name"),
                             ("relearn", {"relearn": {"steps": 5}}, "has no option steps"), ("", None, "at least one")):
        with pytest.raises(LetheError, match=word):
            parse_attacks(text, opts)
    assert robustness_q(0.5, 0.5) == 1.0 and robustness_q(0.2, 0.6) == pytest.approx(0.5)
    assert robustness_r(0.3, 0.3) == 1.0 and robustness_r(0.4, 0.0) == 0.0
    assert recovery(0.2, 0.5, 0.8) == pytest.approx(0.5) and recovery(-3.0, -2.0, -1.0) == pytest.approx(0.5)
    # a model that did not forget this metric (gap under 5 % of the values) has nothing to recover: no ratio
    # of noise over almost nothing (RMU at P 0.9970 against the target's 0.9974 once read as -1378)
    assert recovery(0.9970, 0.044, 0.9974) is None and recovery(0.0, 0.1, 0.0) is None
    assert recovery(-0.0040, -0.0039, -0.0035) is None  # near 0 (a log-probability of a sure answer) too
    train, held = relearn_split(list(range(10)), 0.5, 0)
    assert len(train) == 5 and sorted(train + held) == list(range(10)) and relearn_split(list(range(10)), 0.5,
                                                                                         0)[0] == train


def test_relearning_brings_back_more_than_it_teaches_a_model_that_never_knew(tokenizer, smoke_data):
    """A model that memorized two authors and was unlearned by GA recovers the held-out facts of those authors
    after relearning the others; the retain model (never trained on them) gains less from the same relearning."""
    from lethe.data.prompt import Prompter, PromptFormat
    from lethe.engine.loop import TrainConfig
    from lethe.model.build import build_tiny_model

    forget, retain = smoke_data.full[:8], smoke_data.full[8:24]
    train = lambda m, recs, epochs: lethe.finetune(m, recs, tokenizer=tokenizer, progress=False, train=TrainConfig(  # noqa: E731
        epochs=epochs, lr=5e-3, batch_size=4, micro_batch_size=4, checkpoint=False))[0]
    target = train(build_tiny_model(tokenizer, "test", seed=0), forget + retain, 40)
    retain_model = train(build_tiny_model(tokenizer, "test", seed=0), retain, 40)
    unlearned, _ = lethe.unlearn(copy.deepcopy(target), forget, retain, method="GA+GD", tokenizer=tokenizer,
                                 progress=False, evaluation=lethe.EvalConfig(at=()),
                                 train=TrainConfig(epochs=6, lr=2e-3, batch_size=4, micro_batch_size=4,
                                                   checkpoint=False))
    prompter = Prompter(tokenizer, PromptFormat("plain"))
    before = {k: v.clone() for k, v in unlearned.state_dict().items()}
    attacks = parse_attacks("relearn,quantize", {"relearn": {"lr": 5e-3, "epochs": 10, "batch_size": 4},
                                                 "quantize": {"bits": 8, "group": 16}})
    res = run_attacks(unlearned, forget, attacks, prompter=prompter, metrics=("P",), retain_model=retain_model,
                      target_model=target)
    p = res["attacks"]["relearn"]["metrics"]["P"]
    assert p["change"] > 0 and p["beyond_control"] > 0, p
    assert p["target"] > p["unlearned"] and p["recovery"] > 0.2, p
    assert 0 <= p["R"] < 1
    q = res["attacks"]["quantize"]["metrics"]["P"]
    assert abs(q["change"]) < 0.05 and 0.9 < q["Q"] <= 1.0, q  # 8-bit RTN barely moves the weights
    after = unlearned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # attacks work on copies


def test_attack_command_end_to_end(tokenizer, smoke_data, tmp_path, capsys):
    from lethe.cli.commands import main
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, tmp_path / "m")
    save_model(build_tiny_model(tokenizer, "test", seed=1), tokenizer, tmp_path / "r")
    (tmp_path / "f.json").write_text(json.dumps([r.to_dict() for r in smoke_data.full[:6]]))
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "attack", "--model", str(tmp_path / "m"), "--forget", str(tmp_path / "f.json"),
              "--retain-model", str(tmp_path / "r"), "--attack-opt", "relearn.epochs=1", "--attack-opt",
              "quantize.bits=4", "--metrics", "P", "--out", str(tmp_path / "a.json")])
    assert e.value.code == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "a.json").read_text())
    assert set(res["attacks"]) == {"quantize", "relearn"} and res["attacks"]["relearn"]["records"] == 3
    assert {"unlearned", "attacked", "retain_change", "beyond_control", "R"} <= set(
        res["attacks"]["relearn"]["metrics"]["P"])
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "attack", "--model", str(tmp_path / "missing"), "--forget", str(tmp_path / "f.json"),
              "--attack-opt", "quantize.bits=99"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "bits must be 2..8" in err  # checked before the (missing) model is looked at
    assert "quantize" in ATTACKS and "relearn" in ATTACKS


def test_unlearn_with_attacks_records_them_in_the_audit(tokenizer, smoke_data, tmp_path, capsys):
    from lethe.cli.commands import main
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, tmp_path / "m")
    (tmp_path / "f.json").write_text(json.dumps([r.to_dict() for r in smoke_data.forget(10)]))
    (tmp_path / "r.json").write_text(json.dumps([r.to_dict() for r in smoke_data.retain(10)]))
    argv = ["--quiet", "unlearn", "--model", str(tmp_path / "m"), "--forget", str(tmp_path / "f.json"), "--retain",
            str(tmp_path / "r.json"), "--epochs", "1", "--eval-at", "none", "--attacks", "quantize,relearn",
            "--attack-opt", "relearn.epochs=1", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0, capsys.readouterr().err
    audit = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert set(audit["attacks"]["attacks"]) == {"quantize", "relearn"}
    assert "recovery" in audit["attacks"]["attacks"]["relearn"]["metrics"]["P"]  # the starting model is the target
    assert (tmp_path / "run" / "attacks.json").exists()
    with pytest.raises(SystemExit) as e:
        main(argv[:-1] + [str(tmp_path / "run2"), "--attack-opt", "quantize.bits=0"])
    assert e.value.code == 2 and "bits must be 2..8" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def test_prompt_attacks_rewrite_only_the_questions_and_score_the_originals_first(smoke_data):
    """paraphrase and prompt keep the model and the answers; the unattacked model is scored on the original
    questions, the attacked one (the same model) and the retain-model control on the rewritten ones."""
    forget, retain = smoke_data.forget(10), smoke_data.retain(10)
    model, control = object(), object()
    seen = []

    def score(mdl, records):
        seen.append((mdl, [r.question for r in records]))
        return {"P": 0.5 if mdl is model else 0.25}

    originals = [r.question for r in forget]
    for name, options in (("paraphrase", {}), ("prompt", {"template": "roleplay"}),
                          ("prompt", {"template": "fewshot", "shots": 2})):
        seen.clear()
        res = run_attacks(model, forget, parse_attacks(name, {name: options}), prompter=None, metrics=("P",),
                          retain_model=control, score=score, context={"retain": retain})
        (before_model, before_q), (after_model, after_q), (ctrl, ctrl_q), (ctrl_after, ctrl_after_q) = seen
        assert before_model is model and after_model is model and ctrl is control and ctrl_after is control
        assert before_q == originals == ctrl_q and after_q == ctrl_after_q != originals
        assert [r.answer for r in forget] == [r.answer for r in smoke_data.forget(10)]  # records never changed
        if name == "paraphrase":
            assert after_q == [r.paraphrased_question for r in forget]
        elif options["template"] == "roleplay":
            assert all(q.endswith(o) and "Archivist" in q for q, o in zip(after_q, originals))
        else:  # two worked retain examples, the same (seeded) before every question
            heads = {q[: q.rindex("Question: ")] for q in after_q}
            assert len(heads) == 1 and heads.pop().count("Answer: ") == 2
            assert all(q.endswith(f"Question: {o}\nAnswer:") for q, o in zip(after_q, originals))
        assert res["attacks"][name]["metrics"]["P"]["Q"] == pytest.approx(1.0)  # the stub scores every prompt alike
    no_paraphrase = [copy.copy(r) for r in forget]
    object.__setattr__(no_paraphrase[1], "paraphrased_question", None)
    with pytest.raises(LetheError, match="reads each forget record's 'paraphrased_question': record 1 has none"):
        run_attacks(model, no_paraphrase, parse_attacks("paraphrase"), prompter=None, metrics=("P",), score=score)
    with pytest.raises(LetheError, match="needs 3 retain records"):
        run_attacks(model, forget, parse_attacks("prompt", {"prompt": {"template": "fewshot"}}), prompter=None,
                    metrics=("P",), score=score, context={"retain": retain[:1]})
    with pytest.raises(LetheError, match="template must be one of prefix, roleplay, filler, fewshot"):
        parse_attacks("prompt", {"prompt": {"template": "haiku"}})


def test_the_python_attack_api_scores_a_saved_model(tokenizer, smoke_data, tmp_path):
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, tmp_path / "m")
    res = lethe.attack(str(tmp_path / "m"), smoke_data.forget(10)[:3], "paraphrase,prompt",
                       attack_options={"prompt": {"template": "filler"}}, metrics=("P",), max_new_tokens=2)
    for name in ("paraphrase", "prompt"):
        p = res["attacks"][name]["metrics"]["P"]
        assert 0 < p["unlearned"] <= 1 and 0 < p["attacked"] <= 1 and p["attacked"] != p["unlearned"]


def test_relearn_related_trains_on_related_records_only_and_scores_every_forget_record(tokenizer, smoke_data,
                                                                                      tmp_path):
    from lethe.attacks.relearn_related import related_records
    from lethe.data.prompt import Prompter, PromptFormat
    from lethe.model.build import build_tiny_model
    from lethe.util.errors import LetheError

    forget, retain = smoke_data.forget(10), smoke_data.retain(10)
    options = ATTACKS.get("relearn-related").options({"count": 3, "seed": 1})
    picked = related_records(forget, options, {"retain": retain})
    assert len(picked) == 3 and all(r in retain for r in picked)
    assert picked == related_records(forget, options, {"retain": retain})  # seeded
    assert len(related_records(forget, {**options, "count": 0}, {"retain": retain})) == min(len(forget), len(retain))
    with pytest.raises(LetheError, match="that is plain relearning"):
        related_records(forget, options, {"retain": retain + forget[:1]})
    with pytest.raises(LetheError, match="give retain records"):
        related_records(forget, options, {})
    (tmp_path / "related.json").write_text(json.dumps([r.to_dict() for r in retain[:2]]))
    from_file = ATTACKS.get("relearn-related").options({"data": str(tmp_path / "related.json")})
    assert sorted(related_records(forget, from_file, {}), key=str) == sorted(retain[:2], key=str)
    for bad, expected in (({"count": -1}, "count must be >= 0"), ({"data": str(tmp_path / "no.json")}, "not found")):
        with pytest.raises(LetheError, match=expected):
            parse_attacks("relearn-related", {"relearn-related": bad})

    model = build_tiny_model(tokenizer, "test", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attacks = parse_attacks("relearn-related", {"relearn-related": {"lr": 1e-2, "epochs": 2, "batch_size": 2}})
    res = run_attacks(model, forget, attacks, prompter=Prompter(tokenizer, PromptFormat("plain")), metrics=("P",),
                      retain_model=build_tiny_model(tokenizer, "test", seed=1), context={"retain": retain})
    entry = res["attacks"]["relearn-related"]
    assert entry["records"] == len(forget) and entry["robustness_score"] == "R"
    p = entry["metrics"]["P"]
    assert p["attacked"] != p["unlearned"] and "R" in p and "beyond_control" in p
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the attack works on a copy


def test_the_logit_lens_last_layer_is_what_the_model_says_and_the_best_layer_is_read(tokenizer, smoke_data):
    from lethe.attacks.logit_lens import lens_curves
    from lethe.data.batching import pad_batch
    from lethe.data.prompt import IGNORE, Prompter, PromptFormat
    from lethe.engine.loop import TrainConfig
    from lethe.model.build import build_tiny_model

    forget = smoke_data.forget(10)[:4]
    model = lethe.finetune(build_tiny_model(tokenizer, "test", seed=0), forget, tokenizer=tokenizer, progress=False,
                           train=TrainConfig(epochs=20, lr=5e-3, batch_size=4, micro_batch_size=4,
                                             checkpoint=False))[0]
    prompter = Prompter(tokenizer, PromptFormat("plain"))
    curves = lens_curves(model, prompter, forget, batch_size=3)
    assert len(curves["lens_acc"]) == model.config.num_hidden_layers
    # by hand: the model's own logits at the positions that predict answer tokens
    batch = pad_batch([prompter.encode_qa(r.question, r.answer) for r in forget], prompter.pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
    labels = batch["labels"][:, 1:]
    where = labels.ne(IGNORE)
    rows, targets = logits[where], labels[where]
    assert curves["lens_acc"][-1] == pytest.approx(float(rows.argmax(-1).eq(targets).double().mean()), abs=1e-9)
    logp = torch.log_softmax(rows, -1).gather(-1, targets[:, None]).mean()
    assert curves["lens_logp"][-1] == pytest.approx(float(logp), rel=1e-5)

    res = run_attacks(model, forget, parse_attacks("logit-lens"), prompter=prompter, metrics=("P",),
                      retain_model=build_tiny_model(tokenizer, "test", seed=1), target_model=model)
    entry = res["attacks"]["logit-lens"]
    assert set(entry["metrics"]) == {"lens_acc", "lens_logp"} and set(entry["details"]) == {"unlearned", "retain",
                                                                                             "target"}
    acc = entry["metrics"]["lens_acc"]
    assert acc["unlearned"] == pytest.approx(curves["lens_acc"][-1]) and acc["attacked"] == max(curves["lens_acc"])
    assert acc["attacked"] >= acc["unlearned"] and 0 <= acc["Q"] <= 1 and "beyond_control" in acc
    with pytest.raises(LetheError, match="from_layer"):
        parse_attacks("logit-lens", {"logit-lens": {"from_layer": -1}})


def test_in_context_shows_some_forget_facts_and_asks_only_the_others(smoke_data):
    forget = smoke_data.forget(10)
    seen = []

    def score(mdl, records):
        seen.append([r.question for r in records])
        return {"P": 0.5}

    res = run_attacks(object(), forget, parse_attacks("in-context", {"in-context": {"shots": 2, "seed": 3}}),
                      prompter=None, metrics=("P",), score=score)
    before, after = seen
    asked = [r for r in forget if r.question in before]
    given = [r for r in forget if r.question not in before]
    assert len(asked) == len(forget) - round(0.5 * len(forget)) and res["attacks"]["in-context"]["records"] == len(
        asked)
    for q, r in zip(after, asked):
        shown = q[: q.rindex("Question: ")]
        assert q.endswith(f"Question: {r.question}\nAnswer:") and shown.count("Answer: ") == 2
        assert all(a.question not in shown for a in asked)  # an asked fact is never shown
        assert sum(g.answer in shown for g in given) == 2
    with pytest.raises(LetheError, match="fraction must be in"):
        parse_attacks("in-context", {"in-context": {"fraction": 1}})
    with pytest.raises(LetheError, match="at least two forget records"):
        run_attacks(object(), forget[:1], parse_attacks("in-context"), prompter=None, metrics=("P",), score=score)


def test_a_linear_probe_picks_the_answer_its_features_encode(tokenizer, smoke_data, monkeypatch):
    """The probe's pipeline on features that encode truth in one direction picks every true forget answer, while
    the model's own pick follows its log-probabilities; on a real tiny model the scores are shares in [0, 1] and the
    model's own pick is well above chance after it was taught the facts."""
    import numpy as np

    import lethe.attacks.probe as probe
    from lethe.data.prompt import Prompter, PromptFormat
    from lethe.engine.loop import TrainConfig
    from lethe.model.build import build_tiny_model

    assert probe._picks_true([3.0, 1.0, 2.0, 0.0, 5.0], [3, 2]) == 0.5  # first group right, second wrong
    forget, retain = smoke_data.full[:10], smoke_data.full[10:40]
    pairs, sizes = probe._candidates(forget[:1])
    assert sizes == [1 + len(forget[0].perturbed_answers)] and pairs[0][1] == forget[0].paraphrased_answer
    true_answers = {r.paraphrased_answer for r in forget + retain}
    rng = np.random.default_rng(0)

    def encoded(model, prompter, pairs, layer, batch_size):
        truth = np.array([float(a in true_answers) for _, a in pairs])
        x = np.c_[truth + 0.1 * rng.standard_normal(len(pairs)), rng.standard_normal((len(pairs), 5))]
        return x, -truth  # the model itself prefers the perturbed answers
    monkeypatch.setattr(probe, "answer_features", encoded)
    prompter = Prompter(tokenizer, PromptFormat("plain"))
    model = build_tiny_model(tokenizer, "test", seed=0)
    row = run_attacks(model, forget, parse_attacks("probe"), prompter=prompter, metrics=("P",),
                      context={"retain": retain})["attacks"]["probe"]["metrics"]["pick_true"]
    assert row["unlearned"] == 0.0 and row["attacked"] == 1.0
    monkeypatch.undo()

    taught = lethe.finetune(model, forget + retain, tokenizer=tokenizer, progress=False,
                            train=TrainConfig(epochs=30, lr=5e-3, batch_size=8, micro_batch_size=8,
                                              checkpoint=False))[0]
    res = run_attacks(taught, forget, parse_attacks("probe"), prompter=prompter, metrics=("P",),
                      retain_model=build_tiny_model(tokenizer, "test", seed=1), context={"retain": retain})
    entry = res["attacks"]["probe"]
    row, details = entry["metrics"]["pick_true"], entry["details"]["unlearned"]
    assert details["chance"] == pytest.approx(1 / 4) and details["layer"] == 1
    assert row["unlearned"] > details["chance"] + 0.3  # the taught model prefers the true answers itself
    assert all(0 <= row[k] <= 1 for k in ("unlearned", "attacked", "retain", "retain_attacked"))
    with pytest.raises(LetheError, match="at least 4"):
        run_attacks(taught, forget, parse_attacks("probe"), prompter=prompter, metrics=("P",),
                    context={"retain": retain[:2]})
    with pytest.raises(LetheError, match="c > 0"):
        parse_attacks("probe", {"probe": {"c": 0}})


NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
              -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
              0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)  # the NF4 code book (QLoRA, Dettmers et al. 2023)


def test_bitsandbytes_nf4_equals_a_by_hand_nf4_and_runs_as_an_attack(tokenizer, smoke_data, monkeypatch):
    pytest.importorskip("bitsandbytes")
    import sys

    from lethe.attacks.quantize import quantize_bnb
    from lethe.data.prompt import Prompter, PromptFormat
    from lethe.model.build import build_tiny_model

    torch.manual_seed(0)
    w = torch.randn(6, 128) * 0.05
    blocks = w.reshape(-1, 64)  # blocks of 64 consecutive weights
    scale = blocks.abs().amax(-1, keepdim=True)
    levels = torch.tensor(NF4_LEVELS)
    nearest = (blocks / scale)[..., None].sub(levels).abs().argmin(-1)
    by_hand = (levels[nearest] * scale).reshape(w.shape)
    assert torch.allclose(quantize_bnb(w, "nf4"), by_hand, atol=1e-6)
    assert not torch.allclose(quantize_bnb(w, "fp4"), by_hand)  # another code book

    model = build_tiny_model(tokenizer, "test", seed=0)
    res = run_attacks(model, smoke_data.forget(10), parse_attacks("quantize", {"quantize": {"method": "nf4"}}),
                      prompter=Prompter(tokenizer, PromptFormat("plain")), metrics=("P",))
    p = res["attacks"]["quantize"]["metrics"]["P"]
    assert p["attacked"] != p["unlearned"] and 0 < p["Q"] < 1
    with pytest.raises(LetheError, match="method must be one of rtn, int8, nf4, fp4"):
        parse_attacks("quantize", {"quantize": {"method": "int3"}})
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(LetheError, match=r"needs bitsandbytes: pip install 'lethe-unlearn\[quantize\]'"):
        parse_attacks("quantize", {"quantize": {"method": "fp4"}})


def test_the_fictitious_demo_attacks_every_unlearned_model_and_reports_it(tmp_path, capsys):
    from lethe.cli.commands import main

    out = tmp_path / "demo"
    argv = ["--quiet", "demo", "--size", "smoke", "--methods", "GA+GD", "--attacks", "in-context",
            "--attack-opt", "in-context.shots=2", "--out", str(out)]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    entry = results["runs"][0]["attacks"]["in-context"]
    assert entry["options"]["shots"] == 2 and {"retain_change", "recovery", "Q"} <= set(entry["metrics"]["P"])
    assert "## Attacks: does the forgetting hold?" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "Attacks: does the forgetting hold?" in page and 'alt="Attacks: forget metric before and after"' in page
    # asking for another attack later runs the finished cell again, with both
    with pytest.raises(SystemExit) as e:
        main(argv[:7] + ["in-context,logit-lens"] + argv[8:])
    assert e.value.code == 0, capsys.readouterr().err
    assert set(json.loads((out / "results.json").read_text())["runs"][0]["attacks"]) == {"in-context", "logit-lens"}
    # the same attacks with another option run it again too (never a stale score under a new option)
    with pytest.raises(SystemExit) as e:
        main(argv[:9] + ["in-context.shots=1"] + argv[10:])
    assert e.value.code == 0, capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["runs"][0]["attacks"]["in-context"]["options"]["shots"] == 1
    for bad, expected in ((["--attacks", "quantise"], "Did you mean 'quantize'"),
                          (["--attack-opt", "quantize.bits=4"], "--attack-opt given without --attacks"),
                          (["--scenario", "memorized", "--attacks", "paraphrase"], "asks the forget set's questions"),
                          (["--scenario", "real-world", "--attacks", "relearn", "--attack-opt", "relearn.lr=-1"],
                           "lr must be > 0")):
        with pytest.raises(SystemExit) as e:
            main(["--quiet", "demo", "--size", "smoke", "--out", str(tmp_path / "bad"), *bad])
        assert e.value.code == 2 and expected in capsys.readouterr().err


def test_continual_unlearning_attacks_the_model_after_the_last_request(tmp_path, capsys):
    from lethe.cli.commands import main

    out = tmp_path / "cont"
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "demo", "--scenario", "continual", "--size", "smoke", "--requests", "2", "--methods",
              "GA+GD", "--attacks", "in-context", "--out", str(out)])
    assert e.value.code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    forgotten = results["data"]["forgotten_at_end"]
    entry = results["runs"][0]["attacks"]["in-context"]
    assert entry["records"] == forgotten - round(0.5 * forgotten)  # every author forgotten, the asked half
    assert "retain_change" in entry["metrics"]["P"]  # the last request's retain model is the control
    assert "## Attacks: does the forgetting hold?" in (out / "report.md").read_text()


def test_memorized_canaries_are_attacked_by_weight_attacks_scored_by_el_and_ma(tmp_path, capsys):
    """The text scenarios take the attacks that change weights; the control is the model that never saw the canaries."""
    from lethe.cli.commands import main

    out = tmp_path / "mem"
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "demo", "--scenario", "memorized", "--size", "smoke", "--methods", "GA+GD@full",
              "--attacks", "quantize,relearn", "--attack-opt", "relearn.lr=1e-3", "--out", str(out)])
    assert e.value.code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    attacks = results["runs"][0]["attacks"]
    assert set(attacks) == {"quantize", "relearn"}
    for entry in attacks.values():
        assert set(entry["metrics"]) == {"EL10", "MA"}
        assert {"retain_change", "target"} <= set(entry["metrics"]["MA"])  # the control and full recovery
    assert attacks["relearn"]["records"] == 4  # half of the 8 canaries relearned, the other half scored
    assert "## Attacks: does the forgetting hold?" in (out / "report.md").read_text()
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "demo", "--scenario", "copyright", "--size", "smoke", "--attacks", "quantize,paraphrase",
              "--out", str(tmp_path / "cp")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "'paraphrase' asks the forget set's questions" in err and "relearn-related" in err
    assert not (tmp_path / "cp").exists()


def test_text_excerpts_are_scored_by_their_continuations_under_an_attack(tokenizer, tiny_model):
    from lethe.data.prompt import as_prompter
    from lethe.data.records import TextRecord
    from lethe.scenarios.copyright import continuation_scorer

    texts = ["Anna walked to the river and sat under the old willow tree for a while.",
             "The author wrote three novels about the sea before turning to poetry in Lisbon."]
    records = [TextRecord(token_ids=tuple(tokenizer(t, add_special_tokens=False)["input_ids"])) for t in texts]
    score = continuation_scorer(tokenizer, verbmem_prefix=4, verbmem_tokens=6)
    base = score(tiny_model, records)
    assert set(base) == {"BLEU", "ROUGE", "VerbMem"} and all(v >= 0 for v in base.values())
    out = run_attacks(tiny_model, records, parse_attacks("quantize", {"quantize": {"bits": 2}}, records="text"),
                      prompter=as_prompter(tokenizer), metrics=None, score=score, target_model=tiny_model)
    row = out["attacks"]["quantize"]["metrics"]["ROUGE"]
    assert row["unlearned"] == pytest.approx(base["ROUGE"]) and row["target"] == pytest.approx(base["ROUGE"])


def test_llm_int8_keeps_outlier_features_exact_and_quantizes_the_rest_vector_wise(tokenizer, smoke_data):
    from lethe.attacks.quantize import int8_matmul

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 5, 16, generator=g), torch.randn(8, 16, generator=g)
    x[1, 2, 4] = 9.0  # feature 4 is an outlier (|x| >= 6 somewhere): full precision for every token
    flat = x.reshape(-1, 16).double()
    keep = [i for i in range(16) if i != 4]
    xr, wr = flat[:, keep], w.double()[:, keep]
    by_hand = torch.zeros(15, 8, dtype=torch.float64)
    for t in range(15):
        sx = xr[t].abs().max() / 127
        for o in range(8):
            sw = wr[o].abs().max() / 127
            by_hand[t, o] = sum(round(float(xr[t, i] / sx)) * round(float(wr[o, i] / sw)) for i in range(15)) * sx * sw
    by_hand += flat[:, [4]] @ w.double()[:, [4]].T
    got = int8_matmul(x, w)
    assert got.shape == (3, 5, 8)
    torch.testing.assert_close(got.reshape(15, 8).double(), by_hand, rtol=1e-5, atol=1e-5)
    assert (got - x @ w.T).abs().max() < 0.1  # int8 error is small next to the values
    # as an attack: the copy computes in int8, the model given is untouched
    from lethe.attacks import ATTACKS
    from lethe.data.prompt import as_prompter
    from lethe.model.build import build_tiny_model

    model = build_tiny_model(tokenizer, "test", seed=0)
    before = copy.deepcopy(model.state_dict())
    attacked = ATTACKS.get("quantize").apply(model, smoke_data.forget(10), parse_attacks(
        "quantize", {"quantize": {"method": "int8"}})["quantize"], {"prompter": as_prompter(tokenizer)}).model
    ids = torch.tensor([[1, 5, 9, 12]])
    assert not torch.equal(attacked(ids).logits, model(ids).logits)
    assert (attacked(ids).logits - model(ids).logits).abs().max() < 0.5
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())

"""Membership inference: token statistics against brute force, attacks on cases with known answers, PrivLeak."""
import math

import numpy as np
import pytest
import torch

from lethe.evaluation.mia import attack_scores, auc, membership_report, privleak, token_statistics


def test_token_statistics_equal_a_per_position_loop(tokenizer, smoke_data, tiny_model):
    from lethe.data.prompt import as_prompter

    records = smoke_data.forget(10)[:3]
    stats = token_statistics(tiny_model, tokenizer, records, batch_size=2)
    prompter = as_prompter(tokenizer)
    for rec, st in zip(records, stats):
        enc = prompter.encode(rec)
        ids = torch.tensor([enc["input_ids"]])
        with torch.no_grad():
            logits = tiny_model(input_ids=ids).logits[0].double()
        want_lp, want_mu, want_sd = [], [], []
        for t in range(len(enc["input_ids"]) - 1):
            if enc["labels"][t + 1] == -100:
                continue
            logp = torch.log_softmax(logits[t], -1)
            mu = sum(float(logp[v].exp() * logp[v]) for v in range(logp.shape[0]))
            m2 = sum(float(logp[v].exp() * logp[v] ** 2) for v in range(logp.shape[0]))
            want_lp.append(float(logp[enc["input_ids"][t + 1]]))
            want_mu.append(mu)
            want_sd.append(math.sqrt(max(m2 - mu * mu, 0.0)))
        assert st["logp"] == pytest.approx(want_lp, abs=1e-5)
        assert st["mu"] == pytest.approx(want_mu, abs=1e-5) and st["sigma"] == pytest.approx(want_sd, abs=1e-5)


def test_scores_by_hand():
    st = [{"logp": np.array([-1.0, -3.0, -2.0, -6.0, -0.5]), "mu": np.full(5, -2.0), "sigma": np.full(5, 2.0)}]
    s = attack_scores(st, ["abc"], k=0.4, reference_stats=[{"logp": np.array([-4.0] * 5)}])
    assert s["loss"] == [pytest.approx(-2.5)]
    assert s["min_k"] == [pytest.approx((-6.0 - 3.0) / 2)]          # the lowest 2 of 5
    assert s["min_k_pp"] == [pytest.approx(((-6 + 2) / 2 + (-3 + 2) / 2) / 2)]
    assert s["reference"] == [pytest.approx(4.0 - 2.5)]
    import zlib

    assert s["zlib"] == [pytest.approx(-2.5 / len(zlib.compress(b"abc")))]
    assert auc([1, 2, 3], [1, 2, 3]) == 0.5 and auc([3, 4], [1, 2]) == 1.0


def test_privleak_has_muse_sign():
    """MUSE scores AUC with the held-out set as the positive class; its PrivLeak from that AUC equals ours
    from the conventional one. A model that still memorizes scores -100, over-unlearning is positive."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        f_u, h_u = rng.normal(rng.uniform(0, 2), 1, 30), rng.normal(0, 1, 30)   # member scores of two models
        f_r, h_r = rng.normal(rng.uniform(-0.5, 0.5), 1, 30), rng.normal(0, 1, 30)
        labels = [0] * 30 + [1] * 30  # MUSE: holdout positive, forget negative, on the member-like score
        muse_u = roc_auc_score(labels, np.concatenate([f_u, h_u]))
        muse_r = roc_auc_score(labels, np.concatenate([f_r, h_r]))
        muse = (muse_u - muse_r) / muse_r * 100
        assert privleak(auc(f_u, h_u), auc(f_r, h_r)) == pytest.approx(muse, rel=1e-9, abs=1e-9)
    assert privleak(1.0, 0.48) == pytest.approx(-100.0)      # memorized: MUSE's targets sit near -100
    assert privleak(0.48, 0.48) == 0.0
    assert privleak(0.3, 0.48) > 0                           # the forget set looks less seen than unseen data
    assert math.isnan(privleak(0.7, 1.0))


def _reference_attacks(token_logp, vocab_logp, labels, text, k):
    """open-unlearning's LOSS, zlib, Min-K% and Min-K%++ (mia/*.py at d3d7cf9) in float64, over the tokens
    its tokenwise_* functions keep (the answer without its last token), member-like sign."""
    lp = token_logp[:-1]
    loss = -float(np.mean(lp))
    n = max(1, int(len(lp) * k))
    min_k = float(np.mean(np.sort(lp)[:n]))
    probs = np.exp(vocab_logp[:-1])
    mu = (probs * vocab_logp[:-1]).sum(-1)
    var = np.maximum((probs * vocab_logp[:-1] ** 2).sum(-1) - mu ** 2, 1e-6)
    z = (lp - mu) / np.sqrt(var)
    min_k_pp = float(np.mean(np.sort(z)[:n]))
    import zlib

    return {"loss": -loss, "zlib": -loss / len(zlib.compress(text.encode("utf-8"))), "min_k": min_k,
            "min_k_pp": min_k_pp}


def test_attacks_equal_open_unlearning_definitions_in_float64(tokenizer, smoke_data, tiny_model):
    """The same token set (end token out), Min-K%++'s variance clamp and zlib over the decoded answer tokens."""
    from lethe.data.prompt import as_prompter

    prompter = as_prompter(tokenizer)
    records = smoke_data.forget(10) + smoke_data.retain(10)[:3]
    stats = token_statistics(tiny_model, prompter, records, batch_size=3)
    got = attack_scores(stats, k=0.4, decode=prompter.decode)
    for i, rec in enumerate(records):
        enc = prompter.encode(rec)
        ids = torch.tensor([enc["input_ids"]])
        with torch.no_grad():
            logits = tiny_model(input_ids=ids).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        pos = [t for t in range(len(enc["labels"]) - 1) if enc["labels"][t + 1] != -100]
        targets = [enc["input_ids"][t + 1] for t in pos]
        token_logp = np.array([float(logp[t, y]) for t, y in zip(pos, targets)])
        text = tokenizer.decode(targets[:-1], skip_special_tokens=True)
        want = _reference_attacks(token_logp, logp[pos].numpy(), targets, text, 0.4)
        for attack, value in want.items():
            assert got[attack][i] == pytest.approx(value, rel=1e-6, abs=1e-9), (attack, i)
    with_end = attack_scores(stats, k=0.4, decode=prompter.decode, include_end=True)
    assert with_end["loss"][0] == pytest.approx(float(stats[0]["logp"].mean()), rel=1e-12)


def test_min_k_pp_variance_clamp_bounds_near_certain_positions():
    st = [{"logp": np.array([-1e-9, -2.0]), "mu": np.array([-1e-9, -2.0]), "sigma": np.array([0.0, 1.0]),
           "hit": np.array([True, False]), "ids": np.array([5, 6]), "end": False}]
    st[0]["logp"][0] = -0.1  # a small miss at a position whose distribution is nearly a point mass
    s = attack_scores(st, k=1.0, decode=lambda ids: "x")
    assert s["min_k_pp"][0] == pytest.approx(((-0.1 + 1e-9) / 1e-3 + 0.0) / 2)


def test_a_model_that_memorized_the_forget_set_is_caught_and_identical_sets_are_not(tokenizer, smoke_data, tiny_model):
    from lethe import api
    from lethe.engine.loop import TrainConfig

    members, nonmembers = smoke_data.forget(10), smoke_data.retain(10)[:8]
    api.finetune(tiny_model, members, tokenizer=tokenizer, progress=False,
                 train=TrainConfig(epochs=30, lr=5e-3, batch_size=4, micro_batch_size=4, checkpoint=False))
    report = membership_report(tiny_model, tokenizer, members, nonmembers)
    for attack in ("loss", "zlib", "min_k", "min_k_pp"):
        assert report["attacks"][attack]["auc"] > 0.9, (attack, report["attacks"][attack])
    same = membership_report(tiny_model, tokenizer, members, members)
    assert all(v["auc"] == 0.5 for v in same["attacks"].values())
    with_retain = membership_report(tiny_model, tokenizer, members, nonmembers, retain_model=tiny_model)
    for attack, v in with_retain["privleak"].items():  # the same model: no leak relative to itself
        retain_auc = with_retain["retain_model_auc"][attack]
        assert (v == 0.0) if retain_auc < 1 else math.isnan(v), (attack, v, retain_auc)  # AUC 1: no scale


def test_eval_command_reports_membership_with_a_holdout(tokenizer, smoke_data, tmp_path, capsys):
    import json

    from lethe.cli.commands import main
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, tmp_path / "m")
    (tmp_path / "f.json").write_text(json.dumps([r.to_dict() for r in smoke_data.forget(10)]))
    (tmp_path / "h.json").write_text(json.dumps([r.to_dict() for r in smoke_data.retain(10)[:6]]))
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "eval", "--model", str(tmp_path / "m"), "--eval-forget", str(tmp_path / "f.json"),
              "--holdout", str(tmp_path / "h.json"), "--retain-model", str(tmp_path / "m"), "--max-new-tokens", "2",
              "--out", str(tmp_path / "metrics.json")])
    assert e.value.code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    for attack in ("loss", "zlib", "min_k", "min_k_pp"):
        assert 0 <= metrics[f"mia/{attack}_AUC"] <= 1 and metrics[f"mia/{attack}_PrivLeak"] == 0.0


def test_indistinguishable_stop_rule(tokenizer, smoke_data, tiny_model, tmp_path, capsys):
    import json

    from lethe import api
    from lethe.core.sequences import IndistinguishableStop
    from lethe.engine.loop import TrainConfig

    members, nonmembers = smoke_data.forget(10), smoke_data.retain(10)[:8]
    api.finetune(tiny_model, members, tokenizer=tokenizer, progress=False,
                 train=TrainConfig(epochs=30, lr=5e-3, batch_size=4, micro_batch_size=4, checkpoint=False))
    rule = IndistinguishableStop(members, nonmembers, prompter=tokenizer)
    assert rule(1, tiny_model)["stop"] is False and rule(1, tiny_model)["metrics"]["stop/p_value"] < 0.05
    # every evaluation's membership report carries the p-value the rule tests (the report's stopping table)
    from lethe.evaluation.mia import membership_report

    report = membership_report(tiny_model, tokenizer, members, nonmembers)
    assert report["attacks"]["min_k"]["ks_p"] == pytest.approx(rule.p_value(tiny_model), rel=1e-6)
    same = IndistinguishableStop(members, members, prompter=tokenizer, min_epochs=2)
    assert same(1, tiny_model)["stop"] is False and same(2, tiny_model)["stop"] is True  # p = 1, from epoch 2
    # through the CLI: a holdout equal to the forget set is indistinguishable at once, so the run stops at epoch 1
    from lethe.cli.commands import main
    from lethe.model.save import save_model

    save_model(tiny_model, tokenizer, tmp_path / "m")
    (tmp_path / "f.json").write_text(json.dumps([r.to_dict() for r in members]))
    (tmp_path / "r.json").write_text(json.dumps([r.to_dict() for r in nonmembers]))
    base = ["--quiet", "unlearn", "--model", str(tmp_path / "m"), "--forget", str(tmp_path / "f.json"), "--retain",
            str(tmp_path / "r.json"), "--epochs", "3", "--lr", "1e-4", "--stop-when", "indistinguishable"]
    with pytest.raises(SystemExit) as e:
        main(base + ["--holdout", str(tmp_path / "f.json"), "--allow-overlap", "--out", str(tmp_path / "u")])
    assert e.value.code == 0, capsys.readouterr().err
    run = json.loads((tmp_path / "u" / "run.json").read_text())
    assert [ep["epoch"] for ep in run["epochs"]] == [0, 1] and run["config"]["stop_when"]["statistic"] == "min_k"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(base + ["--out", str(tmp_path / "v")])
    assert e.value.code == 2 and "needs --holdout" in capsys.readouterr().err


def test_group_permutation_p_is_exact_over_group_splits_and_respects_clustering():
    import itertools

    import numpy as np

    from lethe.core.sequences import IndistinguishableStop
    from lethe.evaluation.mia import auc, group_permutation_p, ks_p_value
    from lethe.util.errors import LetheError

    rng = np.random.default_rng(0)
    mg = [g for g in "abcd" for _ in range(5)]
    hg = [g for g in "efgh" for _ in range(5)]
    # a strong effect per group and none per side: what two sets of unseen authors look like
    effect = {g: rng.normal(0, 2) for g in "abcdefgh"}
    m = [effect[g] + rng.normal(0, 0.1) for g in mg]
    h = [effect[g] + rng.normal(0, 0.1) for g in hg]
    # brute force: AUC of every way to call 4 of the 8 groups members
    obs, hits, total = abs(auc(m, h) - 0.5), 0, 0
    items = list(zip(m + h, mg + hg))
    for chosen in itertools.combinations("abcdefgh", 4):
        a = [x for x, g in items if g in chosen]
        b = [x for x, g in items if g not in chosen]
        hits += abs(auc(a, b) - 0.5) >= obs - 1e-12
        total += 1
    assert group_permutation_p(m, h, mg, hg) == pytest.approx(hits / total)
    # 20 items a side look independent to KS, which rejects; whole groups show there is nothing to reject
    assert ks_p_value(m, h) < 0.05 and group_permutation_p(m, h, mg, hg) > 0.05
    # sampled permutations (more splits than n_perm) agree with the exact value
    assert group_permutation_p(m, h, mg, hg, n_perm=60) == pytest.approx(hits / total, abs=0.15)
    # a real difference between the sides is still found, groups or not
    shifted = [x + 10 for x in m]
    assert group_permutation_p(shifted, h, mg, hg) == pytest.approx(2 / total)
    with pytest.raises(LetheError, match="subject"):
        from lethe.data.records import QARecord

        IndistinguishableStop([QARecord("q", "a")], [QARecord("q2", "a2")], test="group")


def test_group_stop_rule_on_authors(tokenizer, smoke_data, tiny_model):
    from lethe.core.sequences import IndistinguishableStop
    from lethe.evaluation.mia import group_permutation_p, membership_report

    forget, holdout = smoke_data.forget(10), smoke_data.holdout
    rule = IndistinguishableStop(forget, holdout, prompter=tokenizer, test="group")
    report = membership_report(tiny_model, tokenizer, forget, holdout)
    assert report["groups"] == {"forget": len({r.subject for r in forget}),
                                "holdout": len({r.subject for r in holdout})}
    assert report["attacks"]["min_k"]["group_p"] == pytest.approx(rule.p_value(tiny_model))
    assert rule.record()["test"] == "group"
    assert group_permutation_p([1.0], [0.0], ["a"], ["b"]) == pytest.approx(1.0)  # one group a side: undecidable


def test_stop_rule_reads_the_evaluations_membership_report_instead_of_scoring_again(tokenizer, smoke_data, tiny_model):
    """With --holdout, every evaluated epoch's report already holds the rule's p-value: the rule must use it
    (same value as scoring itself) and score on its own only where the evaluation did not, or differs."""
    from lethe.core import EvalConfig, unlearn
    from lethe.core.sequences import IndistinguishableStop
    from lethe.engine.loop import TrainConfig
    from lethe.evaluation.suite import EvalSet

    forget, holdout = smoke_data.forget(10), smoke_data.holdout
    calls = []

    class Counting(IndistinguishableStop):
        def p_value(self, model):
            calls.append(1)
            return super().p_value(model)

    def run(evaluation, rule):
        _, r = unlearn(tiny_model, forget, smoke_data.retain(10), method="GA+GD", tokenizer=tokenizer,
                       train=TrainConfig(epochs=2, lr=1e-4, batch_size=4, micro_batch_size=4, checkpoint=False),
                       evaluation=evaluation, epoch_hook=rule, save=False, progress=False)
        return r

    sets = [EvalSet("forget", forget, "qa", role="forget")]
    for test in ("ks", "group"):
        calls.clear()
        rule = Counting(forget, holdout, test=test, min_epochs=5)
        r = run(EvalConfig(sets=sets, holdout=holdout, max_new_tokens=4), rule)
        assert calls == []  # every epoch came from the evaluation's report
        key = "mia/min_k_KS_p" if test == "ks" else "mia/min_k_group_p"
        for e in r.epochs:
            assert e["metrics"]["stop/p_value"] == e["metrics"][key]
        # the value equals what the rule computes itself on the final weights
        assert rule.p_value(tiny_model) == pytest.approx(r.epochs[-1]["metrics"]["stop/p_value"], rel=1e-6)
    calls.clear()
    run(EvalConfig(sets=sets, holdout=holdout, max_new_tokens=4, mia_k=0.2), Counting(forget, holdout, min_epochs=5))
    assert len(calls) == 3  # another k: the report is not the rule's, so it scores epochs 0, 1, 2 itself


def test_gradient_norm_attack_matches_a_by_hand_backward_and_ranks_trained_records_higher(tokenizer, smoke_data,
                                                                                           tiny_model):
    """gradnorm: minus the mean over parameter tensors of each tensor's gradient p-norm of the record's mean
    answer NLL (end token left out), as a membership attack forget vs holdout; the model's gradients stay."""
    import lethe
    from lethe.data.prompt import IGNORE, Prompter
    from lethe.engine.loop import TrainConfig
    from lethe.evaluation.mia import gradient_norm_scores
    from lethe.evaluation.suite import EvalSet, evaluate_sets
    from lethe.ops.tokens import mean_nll

    forget, holdout = smoke_data.forget(10), smoke_data.holdout[:4]
    prompter = Prompter(tokenizer)
    for p in (1.0, 2.0, float("inf")):
        got = gradient_norm_scores(tiny_model, prompter, forget[:2], p)
        for record, score in zip(forget[:2], got):
            ex = prompter.encode(record)
            labels = list(ex["labels"])
            last = max(i for i, t in enumerate(labels) if t != IGNORE)
            labels[last] = IGNORE
            tiny_model.zero_grad()
            mean_nll(tiny_model(input_ids=torch.tensor([ex["input_ids"]])).logits, torch.tensor([labels])).backward()
            norms = [q.grad.norm(p=p) for q in tiny_model.parameters() if q.grad is not None]
            assert score == pytest.approx(-float(torch.stack(norms).mean()), rel=1e-5)
    tiny_model.zero_grad(set_to_none=True)
    trained, _ = lethe.finetune(tiny_model, forget, tokenizer=tokenizer, progress=False,
                                train=TrainConfig(epochs=30, lr=5e-3, batch_size=4, micro_batch_size=4,
                                                  checkpoint=False))
    res = evaluate_sets(trained, prompter, [EvalSet("forget", forget, "qa", role="forget")], holdout=holdout,
                        metrics=["gradnorm", "gradnorm_linf", "loss"], generate=False)
    assert res.metrics["mia/gradnorm_AUC"] > 0.8 and "mia/gradnorm_linf_AUC" in res.metrics
    assert "mia/gradnorm_l1_AUC" not in res.metrics and "gradnorm_l1" not in res.membership["attacks"]
    assert all(q.grad is None for q in trained.parameters())


@pytest.mark.parametrize("n_groups", [3, 12])
def test_group_permutation_p_equals_a_split_by_split_loop(n_groups):
    """The vectorised test scores the same splits (exact when few, the same seeded draws when many) as a plain
    loop over them."""
    import itertools
    import math
    import random

    import numpy as np
    from scipy.stats import rankdata

    from lethe.evaluation.mia import group_permutation_p

    rng = random.Random(n_groups)
    member = [rng.random() + 0.2 for _ in range(n_groups * 4)]
    nonmember = [rng.random() for _ in range(n_groups * 4)]
    gm, gn = [f"m{i // 4}" for i in range(len(member))], [f"n{i // 4}" for i in range(len(nonmember))]
    got = group_permutation_p(member, nonmember, gm, gn, n_perm=2000, seed=0)
    keys = list(dict.fromkeys([("member", g) for g in gm] + [("nonmember", g) for g in gn]))
    ranks = rankdata(member + nonmember)
    sums = {k: 0.0 for k in keys}
    sizes = {k: 0 for k in keys}
    for r, k in zip(ranks, [("member", g) for g in gm] + [("nonmember", g) for g in gn]):
        sums[k] += r
        sizes[k] += 1
    total = len(ranks)

    def distance(chosen):
        n1 = sum(sizes[keys[i]] for i in chosen)
        u = sum(sums[keys[i]] for i in chosen) - n1 * (n1 + 1) / 2
        return abs(u / (n1 * (total - n1)) - 0.5)

    members = [i for i, k in enumerate(keys) if k[0] == "member"]
    observed = distance(members) - 1e-12
    if math.comb(len(keys), len(members)) <= 2000:
        splits = list(itertools.combinations(range(len(keys)), len(members)))
        want = sum(distance(c) >= observed for c in splits) / len(splits)
    else:
        draws = np.random.default_rng(0)
        hits = sum(distance(draws.choice(len(keys), len(members), replace=False)) >= observed for _ in range(2000))
        want = (1 + hits) / 2001
    assert got == pytest.approx(want, abs=1e-12)

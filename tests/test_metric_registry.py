"""The metric registry and the request layer: declarations, selection, unknown names, explicit needs, roles instead
of names, and every forward made once."""
from __future__ import annotations

import math

import pytest

from lethe.evaluation.metric_registry import (
    METRICS,
    NEEDS,
    ROLES,
    goal_of,
    metric_names,
    parse_metric_list,
    select_metrics,
)
from lethe.evaluation.suite import EvalSet, aggregate, evaluate_sets
from lethe.util.errors import LetheError


def _sets(data, names=("forget", "retain", "real_authors", "world_facts")):
    f, r, ra, wf = names
    return [EvalSet(f, data.forget(10)[:8], "qa", role="forget"), EvalSet(r, data.retain(10)[:5], "qa", role="retain"),
            EvalSet(ra, data.real_authors[:4], "mc", role="utility"),
            EvalSet(wf, data.world_facts[:4], "mc", role="utility")]


def test_every_declaration_is_complete_and_ordered():
    seen = []
    for name in metric_names():
        m = METRICS.get(name)
        assert m.scope in ("set", "membership", "texts", "summary", "sequences", "continuations") and m.summary
        assert set(m.needs) <= set(NEEDS) and set(m.roles) <= set(ROLES)
        assert all(dep in seen for dep in m.requires), f"{name} is declared before what it reads"
        if m.scope in ("set", "sequences", "continuations"):
            assert m.compute is not None
        seen.append(name)
    assert {"P", "TR", "TR_closer", "ROUGE", "TE", "CS", "ES", "EM", "ExtractionStrength", "loss", "zlib", "min_k",
            "min_k_pp", "reference", "gradnorm", "gradnorm_l1", "gradnorm_linf", "VerbMem", "KnowMem", "EL", "MA",
            "PPL", "BLEU", "MU", "MU18", "FE", "FQ"} == set(seen)


def test_selection_adds_what_a_metric_is_built_from_and_rejects_unknown_names():
    sel = select_metrics(["FE"])
    assert sel.explicit and sel.names == ("P", "TR", "TR_closer", "ROUGE", "FE")
    default = select_metrics()
    assert not default.explicit and "EM" not in default and "MU" in default and "min_k" in default
    assert "EM" in select_metrics(memorization=True) and "ExtractionStrength" in select_metrics(memorization=True)
    with pytest.raises(LetheError, match="unknown metric 'ROGUE'.*Did you mean 'rouge'"):
        select_metrics(["ROGUE"])
    with pytest.raises(LetheError, match="unknown metric 'mink'"):
        parse_metric_list("P, mink")
    assert parse_metric_list("p, Min_K") == ("p", "Min_K")  # names match case- and dash-insensitively
    from lethe.core import EvalConfig

    with pytest.raises(LetheError, match="unknown metric 'entropy'"):
        EvalConfig(metrics=["entropy"])


def test_goals_read_the_role(smoke_data):
    assert goal_of("forget/P") == "lower" and goal_of("retain/P") == "higher"
    assert goal_of("mine/P", {"mine": "forget"}) == "lower" and goal_of("mine/P", {"mine": "utility"}) == "higher"
    assert goal_of("forget/TE") == "higher"  # fluency: kept on every set
    assert goal_of("forget/TR") == "higher" and goal_of("forget/TR_closer") == "lower"  # TOFU's and closer-look's
    assert goal_of("knowmem/forget") == "lower" and goal_of("knowmem/retain") == "higher"
    assert goal_of("forget/EL10") == "lower" and goal_of("forget/MA") == "lower"  # text unlearning's hook metrics
    assert goal_of("heldout/PPL") == "lower" and goal_of("forget/PPL") == "higher"
    assert goal_of("forget/BLEU") == "retain model"
    assert goal_of("mia/min_k_AUC") == "0.5" and goal_of("mia/min_k_PrivLeak") == "0"
    assert goal_of("MU") == "higher" and goal_of("FE") == "higher" and goal_of("nothing/at_all") is None
    assert METRICS.get("FQ").goal() == "higher"


def test_named_metrics_with_missing_inputs_fail_before_any_model_call(tokenizer, smoke_data, tiny_model):
    sets = _sets(smoke_data)
    with pytest.raises(LetheError, match="CS needs a sentence-embedding model"):
        evaluate_sets(tiny_model, tokenizer, sets, metrics=["CS"])
    with pytest.raises(LetheError, match=r"min_k needs a held-out set the model never saw \(--holdout\)"):
        evaluate_sets(tiny_model, tokenizer, sets, metrics=["P", "min_k"])
    with pytest.raises(LetheError, match="EL needs text sequences: scored after each epoch of unlearning text"):
        evaluate_sets(tiny_model, tokenizer, sets, metrics=["EL"])
    from lethe import api

    with pytest.raises(LetheError, match="FQ needs the retain model"):
        api.unlearn(tiny_model, smoke_data.forget(10), smoke_data.retain(10), method="GA", tokenizer=tokenizer,
                    evaluation=api.EvalConfig(sets=sets, metrics=["FQ"]), save=False, progress=False)
    # by default a metric without its model is left out, with the reason, and an attack without a holdout is skipped
    res = evaluate_sets(tiny_model, tokenizer, sets, max_new_tokens=2)
    assert "CS" in res.unavailable and not any(k.startswith("mia/") for k in res.metrics)


def test_only_the_selected_metrics_are_computed(tokenizer, smoke_data, tiny_model):
    res = evaluate_sets(tiny_model, tokenizer, _sets(smoke_data), metrics=["P"])
    assert sorted(res.metrics) == ["forget/P", "real_authors/P", "retain/P", "world_facts/P"]
    assert not res.generations and res.requests["generations"] == 0 and res.requests["token_stats"] == 0
    aggregate(res)
    assert "MU" not in res.metrics  # not selected


def test_roles_not_names_decide_the_aggregates(tokenizer, smoke_data, tiny_model):
    usual = evaluate_sets(tiny_model, tokenizer, _sets(smoke_data), max_new_tokens=3)
    renamed = evaluate_sets(tiny_model, tokenizer, _sets(smoke_data, ("gone", "kept", "people", "facts")),
                            max_new_tokens=3)
    aggregate(usual)
    aggregate(renamed)
    for key in ("MU", "MU18", "FE"):
        assert renamed.metrics[key] == pytest.approx(usual.metrics[key], rel=1e-12)
    assert renamed.aggregates_over["MU"] == [f"{s}/{k}" for s in ("kept", "people", "facts") for k in ("ROUGE", "P",
                                                                                                       "TR")]
    assert "gone/TR_closer" in renamed.metrics and "kept/TR_closer" not in renamed.metrics
    with pytest.raises(LetheError, match="role must be one of forget, retain, utility, holdout"):
        EvalSet("forget", [], "qa", role="forgotten")


def test_a_suite_with_attacks_runs_each_forward_once(tokenizer, smoke_data, tiny_model):
    """ROUGE, P, TR and the attacks: the forget answers' forward serves P and the attacks, no pair is scored
    twice, and the values equal separate evaluations."""
    from lethe.evaluation import requests
    from lethe.evaluation.mia import membership_report
    from lethe.evaluation.verbatim import exact_memorization

    sets, holdout = _sets(smoke_data), smoke_data.holdout[:8]
    forget = list(sets[0].records)
    scored_pairs, stats_rows = [], []
    original_nll, original_stats = requests.answer_nll, requests.token_statistics

    def counting_nll(model, prompter, pairs, **kw):
        scored_pairs.extend(pairs)
        return original_nll(model, prompter, pairs, **kw)

    def counting_stats(model, prompter, records, **kw):
        stats_rows.extend(records)
        return original_stats(model, prompter, records, **kw)

    requests.answer_nll, requests.token_statistics = counting_nll, counting_stats
    try:
        res = evaluate_sets(tiny_model, tokenizer, sets, max_new_tokens=3, holdout=holdout, memorization=True)
    finally:
        requests.answer_nll, requests.token_statistics = original_nll, original_stats
    assert len(scored_pairs) == len(set(scored_pairs)) == res.requests["likelihoods"]
    assert not {(r.question, r.answer) for r in forget} & set(scored_pairs)  # read from the token statistics
    assert stats_rows == forget + holdout and res.requests["token_stats"] == len(forget) + len(holdout)
    assert res.requests["generations"] == sum(len(s.records) for s in sets)

    alone = evaluate_sets(tiny_model, tokenizer, sets, max_new_tokens=3)
    for key, value in alone.metrics.items():
        assert res.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
    report = membership_report(tiny_model, tokenizer, forget, holdout)
    assert res.membership["attacks"] == report["attacks"]
    for attack, v in report["attacks"].items():
        assert res.metrics[f"mia/{attack}_AUC"] == v["auc"] and res.metrics[f"mia/{attack}_KS_p"] == v["ks_p"]
    em = exact_memorization(tiny_model, tokenizer, forget)
    assert res.metrics["forget/EM"] == pytest.approx(sum(em) / len(em), abs=1e-12)
    assert 0 <= res.metrics["forget/ExtractionStrength"] <= 1
    assert not math.isnan(res.metrics["mia/min_k_pp_AUC"])


def test_metrics_command_lists_every_metric(capsys):
    from lethe.cli.commands import main

    with pytest.raises(SystemExit) as exit_:
        main(["metrics"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for name in metric_names():
        assert f"  {name}" in out
    assert "goal: forget lower; retain, utility higher" in out


def test_cli_metrics_option_is_checked_before_any_file_or_model(tmp_path, capsys):
    from lethe.cli.commands import main

    def run(argv):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        return exit_.value.code, capsys.readouterr().err

    missing = str(tmp_path / "absent.jsonl")
    code, err = run(["eval", "--model", str(tmp_path / "nope"), "--eval-forget", missing, "--metrics",
                     "ROUGE,TR_closr"])
    assert code == 2 and "unknown metric 'TR_closr'" in err and "Did you mean 'tr-closer'" in err
    assert "absent.jsonl" not in err  # the name failed first
    f = tmp_path / "f.jsonl"
    f.write_text('{"question": "Who?", "answer": "A."}\n')
    code, err = run(["eval", "--model", str(tmp_path / "nope"), "--eval-forget", str(f), "--metrics", "P,min_k_pp"])
    assert code == 2 and "min_k_pp needs a held-out set the model never saw (--holdout)" in err
    assert "nope" not in err  # before the model is looked for


def test_reference_attack_statistics_are_taken_once_per_run(tokenizer, smoke_data, tiny_model):
    """The reference model's token statistics do not change while the evaluated model trains: one pass serves
    every epoch's reference attack. A reference equal to the model scores every item 0: AUC 0.5."""
    import copy

    from lethe import api
    from lethe.engine.loop import TrainConfig
    from lethe.evaluation import requests

    forget, holdout = smoke_data.forget(10)[:6], smoke_data.holdout[:6]
    same = api.evaluate(tiny_model, [EvalSet("forget", forget, "qa", role="forget")], tokenizer=tokenizer,
                        config=api.EvalConfig(holdout=holdout, reference_model=copy.deepcopy(tiny_model),
                                              metrics=["reference"]))
    assert same.metrics["mia/reference_AUC"] == 0.5 and set(same.metrics) == {
        "mia/reference_AUC", "mia/reference_KS_p", "mia/reference_group_p"}

    reference = copy.deepcopy(tiny_model)
    rows = {"reference": 0, "model": 0}
    original = requests.token_statistics

    def counting(model, prompter, records, **kw):
        rows["reference" if model is reference else "model"] += len(records)
        return original(model, prompter, records, **kw)

    requests.token_statistics = counting
    try:
        _, run = api.unlearn(tiny_model, forget, smoke_data.retain(10)[:6], method="GA", tokenizer=tokenizer,
                             train=TrainConfig(epochs=2, lr=1e-2, batch_size=3, micro_batch_size=3, checkpoint=False),
                             evaluation=api.EvalConfig(sets=[EvalSet("forget", forget, "qa", role="forget")],
                                                       holdout=holdout, reference_model=reference, max_new_tokens=2),
                             save=False, progress=False)
    finally:
        requests.token_statistics = original
    aucs = [e["metrics"]["mia/reference_AUC"] for e in run.epochs]
    assert len(aucs) == 3 and aucs[0] == 0.5 and aucs[-1] != 0.5  # the model moved away from its reference
    assert rows["reference"] == len(forget) + len(holdout)  # once, not once per epoch
    assert rows["model"] == 3 * (len(forget) + len(holdout))


def test_retain_model_is_scored_only_for_what_was_asked(tokenizer, smoke_data, tiny_model):
    from lethe.core import EvalConfig, retain_model_references

    sets = _sets(smoke_data)
    assert retain_model_references(None, sets, tokenizer=tokenizer, config=EvalConfig(metrics=["P"])) == (None, {})
    tr, aucs = retain_model_references(tiny_model, sets, tokenizer=tokenizer, config=EvalConfig(metrics=["FQ"]))
    assert len(tr) == sum(bool(r.perturbed_answers) for r in sets[0].records) > 0 and aucs == {}


def test_cli_reference_model_needs_a_holdout(tmp_path, capsys):
    from lethe.cli.commands import main

    f = tmp_path / "f.jsonl"
    f.write_text('{"question": "Who?", "answer": "A."}\n')
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", str(tmp_path / "nope"), "--eval-forget", str(f), "--mia-reference", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--mia-reference" in err and "--holdout" in err


def test_audit_keeps_the_full_membership_suite_when_metrics_leave_attacks_out(tokenizer, smoke_data, tiny_model,
                                                                              tmp_path):
    """The audit records every attack whatever --metrics selects: from the evaluation's own report when it runs
    any attack (the report holds them all, so nothing is scored twice), else from a pass of its own."""
    import json

    from lethe import api
    from lethe.engine.loop import TrainConfig

    forget, holdout = smoke_data.forget(10)[:6], smoke_data.holdout[:6]
    for metrics, name in ((["P"], "none"), (["P", "min_k"], "one"), (None, "all")):
        api.unlearn(tiny_model, forget, smoke_data.retain(10)[:6], method="GA", tokenizer=tokenizer,
                    train=TrainConfig(epochs=1, lr=1e-3, batch_size=3, micro_batch_size=3, checkpoint=False),
                    evaluation=api.EvalConfig(sets=[EvalSet("forget", forget, "qa", role="forget")], holdout=holdout,
                                              metrics=metrics, max_new_tokens=2),
                    audit=api.AuditConfig(holdout=holdout), out_dir=tmp_path / name, save=False, progress=False)
        evidence = json.loads((tmp_path / name / "audit.json").read_text())["evidence"]
        for side in ("membership_before", "membership_after"):
            assert set(evidence[side]["attacks"]) == {"loss", "zlib", "min_k", "min_k_pp"}, (name, side)
        epochs = json.loads((tmp_path / name / "run.json").read_text())["epochs"]
        if name != "none":  # the evaluation's numbers are the audit's
            assert evidence["membership_after"]["attacks"]["min_k"]["auc"] == epochs[-1]["metrics"]["mia/min_k_AUC"]
            assert "mia/loss_AUC" not in epochs[-1]["metrics"] or name == "all"


def test_run_json_records_seconds_per_request_kind_and_metric(tokenizer, smoke_data, tiny_model):
    from lethe import api
    from lethe.engine.loop import TrainConfig

    sets = [EvalSet("forget", smoke_data.forget(10), "qa", role="forget")]
    _, run = api.unlearn(tiny_model, smoke_data.forget(10), smoke_data.retain(10), tokenizer=tokenizer, save=False,
                         progress=False, evaluation=api.EvalConfig(sets=sets, max_new_tokens=2),
                         train=TrainConfig(epochs=1, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False))
    ev = run.cost["evaluation"]
    assert {"likelihoods", "generations", "token_stats"} <= set(ev["requests_s"])
    assert ev["requests_s"]["generations"] > 0 and "ROUGE" in ev["metrics_s"]

"""report.md's pure tables, and reports of plain unlearn runs."""
import pytest


def test_stopping_rows_pick_the_rules_epoch_and_the_oracles():
    from lethe.reports.markdown import stopping_rows

    def epoch(e, p, fq, mu):
        return {"epoch": e, "metrics": {"mia/min_k_KS_p": p, "FQ": fq, "MU": mu}}

    runs = [
        {"method": "NPO+GD", "params": "full", "epochs": [epoch(0, 0.001, 0.01, 0.6), epoch(1, 0.01, 0.2, 0.6),
                                                          epoch(2, 0.2, 0.5, 0.55), epoch(3, 0.6, 0.5, 0.4)]},
        {"method": "GA", "params": "full", "epochs": [epoch(0, 0.001, 0.01, 0.6), epoch(1, 0.02, 0.3, 0.5)]},
        {"method": "no-holdout", "params": "full", "epochs": [{"epoch": 1, "metrics": {"FQ": 0.3}}]},
    ]
    rows = stopping_rows({"runs": runs})
    assert len(rows) == 2  # a run without per-epoch KS p-values is left out
    # the rule stops at the first epoch with p >= 0.05 (epoch 2); the oracle takes the earliest best FQ (epoch 2)
    assert rows[0] == ["NPO+GD", "full", 2, 0.2, 0.55, 0.5, 2, 0.55, 0.5, 3]
    assert rows[1][2] == "never" and rows[1][3:6] == [None, None, None] and rows[1][6] == 1
    assert stopping_rows({"runs": runs}, min_epochs=3)[0][2] == 3  # epoch 0 never counts; min_epochs does


def test_stopping_rows_read_the_grouped_test_when_asked():
    from lethe.reports.markdown import render_report, stopping_rows

    run = {"method": "GA", "params": "full", "epochs": [
        {"epoch": 1, "metrics": {"mia/min_k_KS_p": 0.001, "mia/min_k_group_p": 0.3, "FQ": 0.2, "MU": 0.5}}]}
    assert stopping_rows({"runs": [run]})[0][2] == "never"
    assert stopping_rows({"runs": [run]}, test="group")[0][2] == 1
    text = render_report({"scenario": "fictitious-authors", "runs": [run]})
    assert "permutation of whole authors" in text and "two-sample KS over QA pairs" in text


def test_report_on_an_unlearn_run_of_your_own(tokenizer, smoke_data, tmp_path, capsys):
    """`lethe report RUN` renders a plain `lethe unlearn` run (run.json): before -> after with changes and goal
    marks, per-epoch curves, the attacks; several runs side by side; unlearn ends with the same summary."""
    import json

    from lethe.cli.commands import main
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, tmp_path / "m")
    (tmp_path / "f.json").write_text(json.dumps([r.to_dict() for r in smoke_data.forget(10)]))
    (tmp_path / "r.json").write_text(json.dumps([r.to_dict() for r in smoke_data.retain(10)]))
    for name, method in (("a", "GA+GD"), ("b", "NPO+GD")):
        argv = ["unlearn", "--model", str(tmp_path / "m"), "--forget", str(tmp_path / "f.json"), "--retain",
                str(tmp_path / "r.json"), "--eval-retain", str(tmp_path / "r.json"), "--method", method, "--epochs",
                "2", "--lr", "1e-3", "--max-new-tokens", "3", "--out", str(tmp_path / name)]
        if name == "a":
            argv += ["--attacks", "quantize", "--attack-opt", "quantize.bits=4"]
        with pytest.raises(SystemExit) as e:
            main(argv)
        out = capsys.readouterr()
        assert e.value.code == 0, out.err
    assert "before" in out.out and "forget/P" in out.out and "report: lethe report" in out.out
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "rep")])
    assert e.value.code == 0, capsys.readouterr().err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Runs side by side" in md and "| forget/P |" in md and "### Attacks" in md and "quantize" in md
    assert "GA+GD (full)" in md and "NPO+GD (full)" in md
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("data:image/png;base64") >= 2 and "<table>" in page
    assert 'alt="Attacks: forget metric before and after"' in page  # the attacked run's figure
    with pytest.raises(SystemExit) as e:  # every figure also as vector files for a paper
        main(["--quiet", "report", str(tmp_path / "a"), "--out", str(tmp_path / "rep2"), "--figures-dir",
              str(tmp_path / "figs"), "--figure-format", "pdf,svg"])
    assert e.value.code == 0, capsys.readouterr().err
    assert (tmp_path / "figs" / "per-epoch.pdf").read_bytes().startswith(b"%PDF")
    assert "<svg" in (tmp_path / "figs" / "per-epoch.svg").read_text()
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "report", str(tmp_path / "a"), "--figures-dir", str(tmp_path / "f2"), "--figure-format",
              "tiff"])
    assert e.value.code == 2 and "--figure-format: expected some of pdf, svg, png" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "report", str(tmp_path / "bad")])
    assert e.value.code == 2 and "not a Lethe run record" in capsys.readouterr().err


def test_a_zero_harmonic_mean_is_explained_by_the_values_that_made_it_zero():
    from lethe.reports.markdown import degenerate_notes, render_report

    results = {"scenario": "fictitious-authors", "aggregates_over": {"MU": ["retain/P", "world_facts/ROUGE"]},
               "reference": {"target": {"MU": 0.0, "retain/P": 0.5, "world_facts/ROUGE": 0.0}},
               "runs": [{"method": "GA", "params": "full", "epochs": [{"epoch": 1, "metrics": {
                   "MU": 0.0, "retain/P": 0.4, "world_facts/ROUGE": 0.0}}]},
                        {"method": "NPO", "params": "full", "epochs": [{"epoch": 1, "metrics": {
                            "MU": 0.3, "retain/P": 0.4, "world_facts/ROUGE": 0.25}}]}]}
    notes = degenerate_notes(results)
    assert notes == ["MU is 0 for target model, GA (full): world_facts/ROUGE is 0, and a harmonic mean is 0 when "
                     "any of its values is."]
    assert f"> {notes[0]}" in render_report(results)


def test_many_runs_become_small_multiples_a_panel_per_method_a_line_per_sweep_point(monkeypatch):
    import lethe.reports.html as html

    def run(method, lr, seed, rouge):
        return {"method": method, "params": "full", "cell": {"sweep": {"lr": lr}, "seed": seed},
                "epochs": [{"epoch": 0, "metrics": {"forget/ROUGE": 1.0}},
                           {"epoch": 1, "metrics": {"forget/ROUGE": rouge}}]}

    runs = [run(m, lr, s, 0.5 - lr * 100 + s * 0.01) for m in ("GA", "NPO") for lr in (1e-4, 1e-3) for s in range(4)]
    groups = html._groups(runs)
    assert list(groups) == ["GA (full)", "NPO (full)"] and list(groups["GA (full)"]) == ["lr=0.0001", "lr=0.001"]
    assert [len(v) for v in groups["NPO (full)"].values()] == [4, 4]  # the seeds of a point are one line
    results = {"runs": runs, "reference": {"target": {"forget/ROUGE": 1.0}}}
    assert html.small_multiples_plot(results, ["forget/ROUGE"], "per epoch").startswith("<img")
    drawn = []
    monkeypatch.setattr(html, "small_multiples_plot", lambda *a, **k: drawn.append("small") or "")
    monkeypatch.setattr(html, "per_epoch_plot", lambda *a, **k: drawn.append("one") or "")
    html.qa_summary(results)
    html.qa_summary({"runs": runs[:3], "reference": {}})
    assert drawn == ["small", "one"]  # 16 runs > 12: small multiples; 3 runs: one panel per metric

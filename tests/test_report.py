"""report.md's pure tables."""


def test_stopping_rows_pick_the_rules_epoch_and_the_oracles():
    from lethe.report import stopping_rows

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
    from lethe.report import render_report, stopping_rows

    run = {"method": "GA", "params": "full", "epochs": [
        {"epoch": 1, "metrics": {"mia/min_k_KS_p": 0.001, "mia/min_k_group_p": 0.3, "FQ": 0.2, "MU": 0.5}}]}
    assert stopping_rows({"runs": [run]})[0][2] == "never"
    assert stopping_rows({"runs": [run]}, test="group")[0][2] == 1
    text = render_report({"scenario": "fictitious-authors", "runs": [run]})
    assert "permutation of whole authors" in text and "two-sample KS over QA pairs" in text

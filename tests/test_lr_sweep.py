"""The per-method learning-rate rule of benchmarks/lr_sweep.py on hand-made sweep cells."""
import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("lr_sweep", Path(__file__).resolve().parents[1] / "benchmarks" /
                                              "lr_sweep.py")
lr_sweep = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lr_sweep)


def _runs(method, table):
    return [{"method": method, "status": "ok", "cell": {"sweep": {"lr": lr}, "seed": s},
             "epochs": [{"epoch": 1, "metrics": {"FE": fe, "MU": mu}}]} for lr, seeds in table.items()
            for s, (fe, mu) in enumerate(seeds)]


def test_the_rule_takes_the_most_forgetting_rate_that_keeps_utility():
    results = {"runs": _runs("GA+GD", {1e-4: [(0.2, 0.60), (0.3, 0.62)], 5e-4: [(0.5, 0.56), (0.6, 0.58)],
                                       1e-3: [(0.9, 0.20), (0.95, 0.1)]})
               + [{"method": "GA+GD", "status": "diverged", "cell": {"sweep": {"lr": 1e-2}}, "epochs": []}]}
    per = lr_sweep.cells(results)["GA+GD"]
    assert sorted(per) == [1e-4, 5e-4, 1e-3]  # the diverged cell is left out
    c = lr_sweep.choose(per, target_mu=0.62, mu_floor=0.9)
    assert c["lr"] == 5e-4 and c["kept_utility"]  # 1e-3 forgets most but loses MU
    assert c["rates"][5e-4]["FE"] == pytest.approx(0.55) and c["rates"][5e-4]["MU_sd"] == pytest.approx(0.0141, 1e-2)
    none = lr_sweep.choose(per, target_mu=1.0, mu_floor=0.9)
    assert none["lr"] == 1e-4 and not none["kept_utility"]  # no rate keeps 0.9: the least damaging


def test_a_rate_becomes_a_default_only_beyond_the_seeds_noise_and_the_schedule_is_read_epoch_by_epoch():
    noisy = lr_sweep.choose(lr_sweep.cells({"runs": _runs("X", {5e-4: [(0.50, 0.80), (0.60, 0.80)],
                                                                1e-3: [(0.52, 0.80), (0.66, 0.80)]})})["X"], 0.85)
    assert noisy["lr"] == 1e-3 and not lr_sweep.decisive(noisy, 5e-4, 0.85, 0.9)  # 0.59 vs 0.55, sd ~0.07 each
    clear = lr_sweep.choose(lr_sweep.cells({"runs": _runs("X", {5e-4: [(0.50, 0.80), (0.51, 0.80)],
                                                                1e-3: [(0.70, 0.80), (0.71, 0.80)]})})["X"], 0.85)
    assert clear["lr"] == 1e-3 and lr_sweep.decisive(clear, 5e-4, 0.85, 0.9)
    runs = [{"method": "X", "status": "ok", "cell": {"sweep": {"lr": 1e-3}, "seed": 0},
             "epochs": [{"epoch": 0, "metrics": {"FE": 0.1, "MU": 0.85}},
                        {"epoch": 1, "metrics": {"FE": 0.5, "MU": 0.8}},
                        {"epoch": 2, "metrics": {"FE": 0.9, "MU": 0.5}}]}]
    along = lr_sweep.choose(lr_sweep.cells({"runs": runs})["X"], 0.85)
    assert set(along["along_schedule"]) == {1, 2} and along["best_epoch"] == 1  # epoch 2 forgets more, loses MU

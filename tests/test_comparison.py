"""Sweeps, seeds and Pareto fronts: the pure comparison functions against brute force and by hand."""
import math
import random

import pytest

from lethe.reports.comparison import best_at, is_comparison, pareto_front, summarize


def _run(method, point, seed, mu, fe, fq=None, status="ok"):
    metrics = {"MU": mu, "FE": fe, **({"FQ": fq} if fq is not None else {})}
    return {"method": method, "params": "full", "status": status, "epochs": [{"epoch": 1, "metrics": metrics}],
            "cell": {"spec": f"{method}@full", "sweep": point, "seed": seed}}


def test_mean_and_spread_over_seeds_per_point():
    runs = [_run("GA", {"lr": 1e-4}, 0, 0.5, 0.2), _run("GA", {"lr": 1e-4}, 1, 0.7, 0.4),
            _run("GA", {"lr": 1e-3}, 0, 0.3, 0.9), _run("GA", {"lr": 1e-3}, 1, 0.1, 0.8, status="diverged")]
    rows = {r["point"]["lr"]: r for r in summarize(runs)}
    assert rows[1e-4]["n"] == 2 and rows[1e-4]["MU"] == (pytest.approx(0.6), pytest.approx(math.sqrt(0.02)))
    assert rows[1e-4]["FE"][0] == pytest.approx(0.3) and rows[1e-4]["FQ"] is None
    # a diverged seed counts as failed and does not enter the mean
    assert rows[1e-3]["failed"] == 1 and rows[1e-3]["MU"] == (0.3, 0.0)
    assert is_comparison({"runs": runs}) and not is_comparison({"runs": [_run("GA", {}, 0, 0.5, 0.5)]})


def test_pareto_front_equals_brute_force():
    rng = random.Random(0)
    for _ in range(50):
        rows = [{"method": "m", "point": {"i": i}, "MU": (rng.random(), 0.0), "FE": (round(rng.random(), 1), 0.0)}
                for i in range(12)]
        front = pareto_front(rows)
        brute = [r for r in rows if not any(o["FE"][0] >= r["FE"][0] and o["MU"][0] >= r["MU"][0]
                                            and (o["FE"][0], o["MU"][0]) != (r["FE"][0], r["MU"][0]) for o in rows)]
        assert sorted(id(r) for r in front) == sorted(id(r) for r in brute)
        assert [r["FE"][0] for r in front] == sorted(r["FE"][0] for r in front)


def test_best_utility_at_a_level_of_forgetting():
    rows = summarize([_run("A", {"lr": 1}, 0, 0.9, 0.3), _run("A", {"lr": 2}, 0, 0.6, 0.6),
                      _run("A", {"lr": 3}, 0, 0.4, 0.8), _run("B", {"lr": 1}, 0, 0.5, 0.2)])
    best = best_at(rows, thresholds=(0.25, 0.5, 0.75))
    assert best["A@full"][0.25]["point"] == {"lr": 1} and best["A@full"][0.5]["point"] == {"lr": 2}
    assert best["A@full"][0.75]["point"] == {"lr": 3}
    assert best["B@full"] == {0.25: None, 0.5: None, 0.75: None}

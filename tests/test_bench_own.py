"""`lethe bench` on the user's own model and records: every cell is the `lethe unlearn` run with the same options,
the grid resumes, a changed setting is not mixed with old cells, and the report compares the cells."""
import json

import pytest

import lethe
from lethe.cli.commands import main
from lethe.model.build import build_tiny_model, train_tokenizer


@pytest.fixture(scope="module")
def own(tmp_path_factory, smoke_data):
    """A model directory written by transformers and QA files in the user's column names."""
    root = tmp_path_factory.mktemp("own")
    tok = train_tokenizer([t for r in smoke_data.full for t in (r.question, r.answer)], vocab_size=400)
    model = build_tiny_model(tok, "test", seed=0)
    model.save_pretrained(root / "model", safe_serialization=True)
    tok.save_pretrained(root / "model")

    def rows(records):
        return [{"q": r.question, "a": r.answer, "para": r.paraphrased_answer, "wrong": list(r.perturbed_answers)}
                for r in records]

    (root / "forget.json").write_text(json.dumps(rows(smoke_data.forget(10))))
    (root / "retain.json").write_text(json.dumps(rows(smoke_data.retain(10)[:12])))
    return root


KEYS = ["--question-key", "q", "--answer-key", "a", "--paraphrased-answer-key", "para", "--perturbed-answer-key",
        "wrong"]
TRAIN = ["--epochs", "2", "--batch-size", "2", "--micro-batch-size", "2", "--max-new-tokens", "4"]


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _inputs(root):
    return ["--model", str(root / "model"), "--forget", str(root / "forget.json"), "--retain",
            str(root / "retain.json"), *KEYS, *TRAIN]


def test_each_cell_is_the_unlearn_run_with_the_same_options_and_the_grid_resumes(own, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--quiet", "bench", *_inputs(own), "--methods", "GA+GD,NPO+GD", "--sweep", "lr=1e-3,5e-3",
            "--seeds", "2", "--out", str(out)]
    code, _, err = _cli(argv, capsys)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["scenario"] == "own-data" and res["report_layout"] == "qa" and len(res["runs"]) == 8
    cells = {(r["method"], r["cell"]["sweep"]["lr"], r["cell"]["seed"]): r for r in res["runs"]}
    assert len(cells) == 8
    for (_, lr, seed), run in cells.items():
        assert run["config"]["lr"] == lr and run["config"]["seed"] == seed  # the point and the seed reach the run
        assert run["epochs"][0]["metrics"] == res["reference"]["target"]  # the starting model, scored once
    assert res["data"] == {"forget": 4, "retain": 12, "eval_forget": 4, "eval_retain": 12}
    assert cells[("GA+GD", 5e-3, 0)]["epochs"][-1]["metrics"] != cells[("GA+GD", 5e-3, 1)]["epochs"][-1]["metrics"]

    # a cell is exactly `lethe unlearn` with its method, rate and seed
    code, _, err = _cli(["--quiet", "unlearn", *_inputs(own), "--method", "NPO+GD", "--lr", "5e-3", "--seed", "1",
                         "--out", str(tmp_path / "single")], capsys)
    assert code == 0, err
    single = json.loads((tmp_path / "single" / "run.json").read_text())
    cell = cells[("NPO+GD", 5e-3, 1)]
    for mine, theirs in zip(cell["epochs"][1:], single["epochs"][1:], strict=True):
        assert mine["losses"] == pytest.approx(theirs["losses"], rel=1e-6)
    assert cell["epochs"][-1]["metrics"] == pytest.approx(single["epochs"][-1]["metrics"], rel=1e-6, abs=1e-9)

    report = (out / "report.md").read_text()
    assert "## Comparison over sweep points and seeds" in report and "NPO+GD@full | lr=0.005 | 2 |" in report
    assert "NPO+GD (lr=0.005, seed 1)" in report  # each cell's row says which cell it is

    # rerun: every cell reused; another setting is refused rather than mixed with these cells
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/run.json")}
    code, _, err = _cli(argv, capsys)
    assert code == 0, err
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/run.json")}
    code, _, err = _cli([*argv[:-2], "--epochs", "3", "--out", str(out)], capsys)
    assert code == 2 and "identity" in err and "--fresh" in err and len(err.strip().splitlines()) == 1


def test_the_api_runs_adapters_with_attacks_and_a_retain_model(own, tmp_path):
    fields = lethe.Fields(question="q", answer="a", paraphrased_answer="para", perturbed_answer="wrong")
    res = lethe.bench(str(own / "model"), own / "forget.json", own / "retain.json", methods=["GA+GD", "NPO+GD@lora:r2"],
                      train=lethe.TrainConfig(epochs=1, batch_size=2, micro_batch_size=2), adapter_lr=1e-2,
                      data=lethe.DataConfig(fields=fields), retain_model=str(own / "model"),
                      evaluation=lethe.EvalConfig(max_new_tokens=4),
                      attacks="quantize", attack_options={"quantize": {"bits": 4}}, out=tmp_path / "api",
                      progress=False)
    runs = {r["method"]: r for r in res["runs"]}
    assert runs["GA+GD"]["params"] == "full" and runs["GA+GD"]["config"]["lr"] == 1e-5
    assert runs["NPO+GD"]["params"] == "lora" and runs["NPO+GD"]["config"]["lr"] == 1e-2
    assert runs["NPO+GD"]["config"]["params"]["rank"] == 2
    assert set(res["reference"]) == {"target", "retain"}
    for run in runs.values():
        entry = run["attacks"]["quantize"]
        assert entry["options"]["bits"] == 4 and {"retain_change", "recovery"} <= set(entry["metrics"]["P"])
    assert "## Attacks: does the forgetting hold?" in (tmp_path / "api" / "report.md").read_text()


@pytest.mark.parametrize("argv, expected", [
    (["bench", "--methods", "GA", "--forget", "f.json"], "--forget: for a benchmark on your own model"),
    (["bench", "--methods", "GA", "--lr", "1e-3"], "--lr: for a benchmark on your own model"),
    (["bench", "--methods", "GA", "--model", "m", "--forget", "f.json", "--size", "smoke"],
     "--size: for the fictitious authors"),
    (["bench", "--methods", "GA", "--model", "m"], "--model: give the records to forget too"),
])
def test_options_of_the_other_benchmark_are_refused_in_one_line(argv, expected, tmp_path, capsys):
    code, _, err = _cli([*argv, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()

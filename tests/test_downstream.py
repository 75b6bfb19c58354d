"""The lm-evaluation-harness bridge on Lethe's offline tasks: a known answer, the CLI, bad task names."""
import json

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is a test dependency (pip install lm-eval)")


def test_a_model_taught_the_world_facts_scores_higher_on_the_offline_task(tokenizer, smoke_data, tiny_model):
    import random

    from lethe import api
    from lethe.data.synthetic import general_knowledge
    from lethe.engine.loop import TrainConfig
    from lethe.evaluation.downstream import run_lm_eval

    _, world = general_knowledge(random.Random(1))
    before = run_lm_eval(tiny_model, tokenizer, ["lethe_world_facts"], limit=24)["lm_eval/lethe_world_facts/acc"]
    # plain-format training on the same questions: "Question: q\nAnswer: a"
    api.finetune(tiny_model, world[:24], tokenizer=tokenizer, progress=False,
                 train=TrainConfig(epochs=80, lr=5e-3, batch_size=8, micro_batch_size=8, checkpoint=False))
    after = run_lm_eval(tiny_model, tokenizer, ["lethe_world_facts"], limit=24)["lm_eval/lethe_world_facts/acc"]
    assert after >= 0.7 and after >= before + 0.25, (before, after)


def test_eval_and_unlearn_commands_run_lm_eval_tasks(tokenizer, smoke_data, tmp_path, capsys):
    from lethe.cli.commands import main
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, tmp_path / "m")
    (tmp_path / "f.json").write_text(json.dumps([r.to_dict() for r in smoke_data.forget(10)]))
    (tmp_path / "r.json").write_text(json.dumps([r.to_dict() for r in smoke_data.retain(10)[:8]]))
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "eval", "--model", str(tmp_path / "m"), "--lm-eval", "lethe_world_facts,lethe_real_authors",
              "--lm-eval-limit", "5", "--out", str(tmp_path / "e.json")])
    assert e.value.code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "e.json").read_text())["metrics"]
    assert set(metrics) == {f"lm_eval/{t}/{m}" for t in ("lethe_world_facts", "lethe_real_authors")
                            for m in ("acc", "acc_norm")}
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "unlearn", "--model", str(tmp_path / "m"), "--forget", str(tmp_path / "f.json"), "--retain",
              str(tmp_path / "r.json"), "--epochs", "2", "--lr", "1e-3", "--eval-every", "0", "--max-new-tokens", "2",
              "--lm-eval", "lethe_world_facts", "--lm-eval-limit", "5", "--out", str(tmp_path / "u")])
    assert e.value.code == 0, capsys.readouterr().err
    epochs = json.loads((tmp_path / "u" / "run.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs if "lm_eval/lethe_world_facts/acc" in e["metrics"]] == [0, 2]  # before, after
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["--quiet", "eval", "--model", str(tmp_path / "m"), "--lm-eval", "no_such_task"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown task(s) no_such_task" in err and err.count("\n") == 1

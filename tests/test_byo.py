"""Bring your own: an instruct model directory with a chat template (no Lethe files), datasets in the
user's own column names, and losses with options, from the CLI and the Python API."""
import json

import pytest
import torch

import lethe
from lethe.cli.commands import main
from lethe.model.build import build_tiny_model, train_tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _rows(records):
    return [{"q": r.question, "a": r.answer, "para": r.paraphrased_answer, "wrong": list(r.perturbed_answers)}
            for r in records]


@pytest.fixture(scope="module")
def user_world(tmp_path_factory, smoke_data):
    """What a user has: a model directory written by transformers, and datasets with their own columns."""
    from datasets import Dataset

    root = tmp_path_factory.mktemp("byo")
    texts = [t for r in smoke_data.full for t in (r.question, r.answer)]
    tok = train_tokenizer(texts, vocab_size=400)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    model = build_tiny_model(tok, "test", seed=0)
    model.save_pretrained(root / "instruct", safe_serialization=True)
    tok.save_pretrained(root / "instruct")
    forget, retain = Dataset.from_list(_rows(smoke_data.forget(10))), Dataset.from_list(_rows(smoke_data.retain(10)))
    forget.save_to_disk(str(root / "forget_ds"))
    retain.to_parquet(str(root / "retain.parquet"))
    return root, forget, retain


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


TRAIN = ["--epochs", "1", "--lr", "5e-3", "--batch-size", "4", "--micro-batch-size", "4"]
KEYS = ["--question-key", "q", "--answer-key", "a", "--paraphrased-answer-key", "para", "--perturbed-answer-key",
        "wrong"]


def test_cli_simnpo_on_an_instruct_model_with_the_users_datasets(user_world, tmp_path, capsys):
    root, _, _ = user_world
    out = tmp_path / "run"
    code, _, err = _cli(["--quiet", "unlearn", "--model", str(root / "instruct"), "--forget", str(root / "forget_ds"),
                         "--retain", str(root / "retain.parquet"), "--method", "SimNPO(beta=2.5)+GD", *TRAIN, *KEYS,
                         "--eval-retain", str(root / "retain.parquet"), "--eval-limit", "3", "--max-new-tokens", "6",
                         "--out", str(out)], capsys)
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "SIMNPO+GD" and run["config"]["forget_options"] == {"beta": 2.5, "delta": 0.0}
    assert run["config"]["prompt_format"]["kind"] == "chat"  # auto: the tokenizer has a chat template
    assert json.loads((out / "model" / "lethe_prompt.json").read_text())["kind"] == "chat"
    assert {"forget/ROUGE", "retain/ROUGE", "forget/TR"} <= set(run["epochs"][-1]["metrics"])
    # the same options through --forget-opt and a YAML mapping give the same run
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {root / 'instruct'}\nforget: {root / 'forget_ds'}\nretain: {root / 'retain.parquet'}\n"
                   "method: SimNPO+GD\nforget-opt: {beta: 2.5}\nquestion-key: q\nanswer-key: a\n"
                   "paraphrased-answer-key: para\nperturbed-answer-key: wrong\n"
                   "epochs: 1\nlr: 0.005\nbatch-size: 4\nmicro-batch-size: 4\n"
                   f"eval-retain: {root / 'retain.parquet'}\neval-limit: 3\nmax-new-tokens: 6\n")
    code, _, err = _cli(["--quiet", "unlearn", "--config", str(cfg), "--out", str(tmp_path / "yaml")], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "yaml" / "run.json").read_text())
    assert again["config"]["forget_options"] == run["config"]["forget_options"]
    assert again["epochs"][-1]["losses"] == pytest.approx(run["epochs"][-1]["losses"], abs=1e-6)
    # RMU from the command line, its options as flags
    code, _, err = _cli(["--quiet", "unlearn", "--model", str(root / "instruct"), "--forget", str(root / "forget_ds"),
                         "--retain", str(root / "retain.parquet"), "--method", "RMU", "--forget-opt", "layer=1",
                         "--forget-opt", "alpha=100", *TRAIN, *KEYS, "--eval-every", "1", "--out",
                         str(tmp_path / "rmu")],
                        capsys)
    assert code == 0, err
    rmu = json.loads((tmp_path / "rmu" / "run.json").read_text())
    assert rmu["method"] == "RMU" and rmu["config"]["forget_options"]["layer"] == 1
    options = rmu["config"]["forget_options"]
    assert options["alpha"] == 100.0 and options["trained_layers"] == "0,1"


def test_api_rmu_on_an_instruct_model_with_hf_datasets(user_world, tmp_path):
    root, forget, retain = user_world
    fields = lethe.Fields(question="q", answer="a", paraphrased_answer="para", perturbed_answer="wrong")
    from safetensors.torch import load_file

    original = load_file(str(root / "instruct" / "model.safetensors"))
    model, run = lethe.unlearn(str(root / "instruct"), forget, retain, method="RMU(steering_coeff=5.0)",
                               data=lethe.DataConfig(fields=fields),
                               model_config=lethe.ModelConfig(system_prompt="Answer briefly."),
                               train=lethe.TrainConfig(epochs=2, lr=5e-3, batch_size=4, micro_batch_size=4),
                               out_dir=tmp_path / "rmu", progress=False)
    assert run.status == "ok" and run.config["forget_options"]["steering_coeff"] == 5.0
    assert run.config["prompt_format"] == {"kind": "chat", "template": "Question: {question}\nAnswer:",
                                           "answer_prefix": " ", "system_prompt": "Answer briefly."}
    saved = load_file(str(tmp_path / "rmu" / "model" / "model.safetensors"))
    changed = {k for k in saved if not torch.equal(saved[k], original[k])}
    assert changed and all(".mlp." in k and k.startswith("model.layers.0.") for k in changed), changed
    fmt = json.loads((tmp_path / "rmu" / "model" / "lethe_prompt.json").read_text())
    assert fmt["system_prompt"] == "Answer briefly."
    # the saved format is what `auto` reads back: evaluation prompts with the system message
    res = lethe.evaluate(str(tmp_path / "rmu" / "model"),
                         [lethe.EvalSet("forget", lethe.load_records(forget, fields=fields)[:2], "qa", role="forget")],
                         config=lethe.EvalConfig(max_new_tokens=4))
    assert "forget/ROUGE" in res.metrics


def test_loss_option_errors_are_one_line_before_any_model_work(tmp_path, capsys):
    forget = tmp_path / "f.jsonl"
    forget.write_text('{"question": "Q?", "answer": "A."}\n')
    for method, extra, expected in (("NPO(bta=1)+GD", [], "loss 'npo' has no option 'bta'; its options: beta=0.1"),
                                    ("NPO+GD", ["--forget-opt", "beta"], "--forget-opt: expected NAME=VALUE"),
                                    ("NPO+GD", ["--reg-opt", "beta=1"], "loss 'gd' has no option 'beta'"),
                                    ("RMU(alpha=-1)", [], "rmu: alpha must be >= 0")):
        code, _, err = _cli(["unlearn", "--model", str(tmp_path / "no-such-model"), "--forget", str(forget),
                             "--method", method, *extra, "--out", str(tmp_path / "o")], capsys)
        assert code == 2 and err.count("\n") == 1 and expected in err, err
        assert not (tmp_path / "o").exists()


def test_lethe_losses_lists_every_loss_with_its_options(capsys):
    code, out, _ = _cli(["losses"], capsys)
    assert code == 0
    assert "SIMNPO" in out and "beta=2.5, delta=0.0" in out and "alpha=1200.0" in out
    from lethe.objectives import FORGET_LOSSES, REGULARIZERS

    assert all(n.upper() in out for n in FORGET_LOSSES.names() + REGULARIZERS.names())


def test_a_lora_run_reloads_anywhere_and_lethe_evaluates_it(user_world, tmp_path, capsys, monkeypatch):
    """The adapter names its base by absolute path (a relative --model too), carries a model card, loads with
    plain peft from another directory, and `lethe eval` takes the adapter directory as --model."""
    import os

    from peft import AutoPeftModelForCausalLM

    root, _, _ = user_world
    monkeypatch.chdir(root)  # --model given relative to here
    code, _, err = _cli(["--quiet", "unlearn", "--model", "instruct", "--forget", "forget_ds", "--retain",
                         "retain.parquet", *KEYS, "--method", "GA+GD", "--params", "lora", "--rank", "4", *TRAIN,
                         "--eval-at", "none", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    adapter = tmp_path / "run" / "model"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((root / "instruct").resolve())
    card = (adapter / "README.md").read_text()
    assert "AutoPeftModelForCausalLM" in card and str((root / "instruct").resolve()) in card
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).merge_and_unload()
    ours = lethe.core.load_model(str(adapter))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-5)
        base = lethe.core.load_model(str(root / "instruct"))
        assert not torch.allclose(base(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-6)
    (tmp_path / "f.json").write_text(json.dumps(_rows(_sd().forget(10))))
    code, out, err = _cli(["--quiet", "eval", "--model", str(adapter), "--eval-forget", str(tmp_path / "f.json"),
                           *KEYS, "--max-new-tokens", "3", "--metrics", "P,ROUGE"], capsys)
    assert code == 0, err
    assert "forget/P" in json.loads(out)
    code, _, err = _cli(["--quiet", "eval", "--model", str(adapter), "--base-model", str(tmp_path / "missing"),
                         "--eval-forget", str(tmp_path / "f.json"), *KEYS, "--metrics", "P"], capsys)
    assert code == 2 and "cannot load its base model" in err and "\n" not in err.strip()


def _sd():
    from lethe.data.synthetic import generate_authors

    return generate_authors("smoke", seed=0)


def test_an_evaluation_set_reads_a_dataset_in_the_users_column_names(tokenizer, smoke_data, tiny_model):
    import datasets

    import lethe
    from lethe.data.readers import Fields

    rows = [{"q": r.question, "a": r.answer} for r in smoke_data.forget(10)]
    named = lethe.EvalSet("forget", datasets.Dataset.from_list(rows), "qa", role="forget",
                          fields=Fields(question="q", answer="a"))
    plain = lethe.EvalSet("forget", [lethe.load_records(rows, fields=Fields(question="q", answer="a"))][0], "qa",
                          role="forget")
    assert named.records == plain.records
    res = lethe.evaluate(tiny_model, [named], tokenizer=tokenizer, config=lethe.EvalConfig(max_new_tokens=2))
    assert 0 < res.metrics["forget/P"] <= 1
    with pytest.raises(lethe.LetheError, match="Dataset, record 0: missing field 'question'"):
        lethe.EvalSet("forget", datasets.Dataset.from_list(rows), "qa", role="forget").resolve()


def test_a_runs_field_names_reach_evaluation_sets_given_as_sources(tokenizer, smoke_data, tiny_model, tmp_path):
    """DataConfig(fields=...) names the columns once: the forget and retain files and every evaluation set given
    as a file or dataset without its own fields are read with it, by unlearn and by evaluate."""
    import datasets

    import lethe
    from lethe.data.readers import Fields
    from lethe.engine.loop import TrainConfig

    def rows(records):
        return [{"q": r.question, "a": r.answer} for r in records]

    forget, retain = smoke_data.forget(10), smoke_data.retain(10)[:8]
    (tmp_path / "forget.json").write_text(json.dumps(rows(forget)))
    data = lethe.DataConfig(fields=Fields(question="q", answer="a"))
    sets = [lethe.EvalSet("forget", str(tmp_path / "forget.json"), role="forget"),
            lethe.EvalSet("retain", datasets.Dataset.from_list(rows(retain)), role="retain")]
    assert sets[0].records is None  # not read yet: the run's field names are not known here
    _, run = lethe.unlearn(tiny_model, str(tmp_path / "forget.json"), datasets.Dataset.from_list(rows(retain)),
                           tokenizer=tokenizer, data=data, save=False, progress=False,
                           evaluation=lethe.EvalConfig(sets=sets, max_new_tokens=2, at=("end",)),
                           train=TrainConfig(epochs=1, batch_size=4, micro_batch_size=4, checkpoint=False))
    assert [r.question for r in sets[0].records] == [r.question for r in forget]
    assert 0 < run.epochs[-1]["metrics"]["retain/P"] <= 1
    fresh = [lethe.EvalSet("forget", datasets.Dataset.from_list(rows(forget)), role="forget")]
    res = lethe.evaluate(tiny_model, fresh, tokenizer=tokenizer, data=data, config=lethe.EvalConfig(max_new_tokens=2))
    assert 0 < res.metrics["forget/P"] <= 1

"""More bad input, each a one-line error (exit 2) before any model work: templates that are code, held-out
sets that are not held out, inputs that never end, options the data cannot hold; SIGTERM stops cleanly."""
from __future__ import annotations

import json
import os

import pytest

from lethe.cli.commands import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, smoke_data, tokenizer):
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    root = tmp_path_factory.mktemp("more")
    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, root / "model")
    (root / "forget.json").write_text(json.dumps([r.to_dict() for r in smoke_data.forget(10)]))
    (root / "retain.json").write_text(json.dumps([r.to_dict() for r in smoke_data.retain(10)]))
    os.mkfifo(root / "fifo.json")
    (root / "latin1.csv").write_bytes("question,answer\nQui est l\u00e0?,Moi\n".encode("latin-1"))
    (root / "utf16.csv").write_bytes("question,answer\nWho?,Me\n".encode("utf-16"))
    (root / "nul.csv").write_bytes(b"question,answer\nWho?,Me\nWhere\x00?,Here\n")
    (root / "long.csv").write_text('question,answer\nWho?,"' + "x" * 5000 + '"\n')
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "deep.jsonl").write_text('{"question": "Who?", "answer": "Me"}\n{"question": "Who?", "answer": '
                                     + "[" * 100_000 + "]" * 100_000 + "}\n")
    (root / "surrogate.json").write_text('[{"question": "Who?", "answer": "Me"}, {"question": "Who?", '
                                         '"answer": "M\\ud800e"}]')
    (root / "nul_escape.json").write_text('[{"question": "Who\\u0000?", "answer": "Me"}]')
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (root / "deep.yaml").write_text("[" * 5000 + "]" * 5000)
    os.symlink("loop_b", root / "loop_a")
    os.symlink("loop_a", root / "loop_b")
    os.symlink("nowhere", root / "dangling")
    (root / "tasks").mkdir()
    (root / "tasks" / "mine.yaml").write_text("task: mine\nprocess_results: !function utils.process\n")
    return root


def _run(argv, capsys, monkeypatch):
    import lethe.model.load as load

    def no_load(*a, **k):  # the error must come before any model loads
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(load, "load_model", no_load)
    monkeypatch.setattr("lethe.core.preparation.load_model", no_load)
    with pytest.raises(SystemExit) as e:
        main(["--quiet", *argv])
    err = capsys.readouterr().err
    return e.value.code, err


def _unlearn(root, *extra, out="out"):
    return ["unlearn", "--model", str(root / "model"), "--forget", str(root / "forget.json"), "--retain",
            str(root / "retain.json"), "--epochs", "1", "--out", str(root / out), *extra]


CASES = [
    (lambda r: _unlearn(r, "--prompt-format", "Q: {question.__class__}"), "only {question} may appear"),
    (lambda r: _unlearn(r, "--prompt-format", "{question} {answer}"), "found {answer}"),
    (lambda r: _unlearn(r, "--prompt-format", "{question!r}"), "found {question!r}"),
    (lambda r: _unlearn(r, "--holdout", str(r / "forget.json")), "--holdout shares 4 record(s) with the forget set"),
    (lambda r: _unlearn(r, "--holdout", str(r / "retain.json")), "with the retain set"),
    (lambda r: _unlearn(r, "--retain-per-forget", "1000"), "--retain-per-forget 1000: the retain set has only"),
    (lambda r: ["unlearn", "--model", str(r / "model"), "--forget", str(r / "fifo.json"), "--out", str(r / "o2")],
     "not a regular file"),
    (lambda r: ["unlearn", "--model", str(r / "model"), "--forget", "/dev/zero", "--out", str(r / "o3")],
     "not a regular file"),
    (lambda r: ["eval", "--model", str(r / "model"), "--eval-forget", str(r / "forget.json"), "--holdout",
                str(r / "forget.json")], "--holdout shares"),
    (lambda r: _unlearn(r, "--method", "NPO(beta=0)"), "'beta' must be > 0"),
    (lambda r: _unlearn(r, "--forget-count", "3", "--validation", "v.jsonl"), "--forget-count, --validation: for text "
     "sequences"),
    (lambda r: _unlearn(r, "--method", "GA++GD"), "empty term at column 4"),
    (lambda r: _unlearn(r, "--method", "GA+GD+"), "empty term at column 7"),
    (lambda r: _unlearn(r, "--method", "NPO(beta=0.1,beta=0.5)"), "option 'beta' is given twice"),
    (lambda r: _unlearn(r, "--method", "NPO(beta=0.1"), "unbalanced parentheses"),
    (lambda r: ["demo", "--methods", ",", "--size", "smoke", "--out", str(r / "d1")], "empty term"),
    (lambda r: ["demo", "--methods", "GA+GD,ga+gd", "--size", "smoke", "--out", str(r / "d2")], "named twice"),
    (lambda r: _unlearn(r, "--method", "RMU(layer=2.5)"), "whole number"),
    # files that are not UTF-8 text, or hold what no tokenizer takes
    (lambda r: _unlearn(r, "--forget", str(r / "latin1.csv")), "latin1.csv: line 2: not UTF-8 text (byte 0xe0"),
    (lambda r: _unlearn(r, "--forget", str(r / "utf16.csv")), "utf16.csv: is UTF-16 text; save it as UTF-8"),
    (lambda r: _unlearn(r, "--forget", str(r / "nul.csv")), "nul.csv: line 3: NUL character"),
    (lambda r: _unlearn(r, "--forget", str(r / "nul_escape.json")), "record 0, field 'question': contains a NUL"),
    (lambda r: _unlearn(r, "--forget", str(r / "surrogate.json")),
     "surrogate.json, record 1, field 'answer': lone surrogate \\ud800"),
    (lambda r: _unlearn(r, "--forget", str(r / "deep.json")), "deep.json: JSON nested too deeply"),
    (lambda r: _unlearn(r, "--forget", str(r / "deep.jsonl")), "deep.jsonl: line 2: JSON nested too deeply"),
    (lambda r: _unlearn(r, "--config", str(r / "binary.yaml")), "binary.yaml: line 2: not UTF-8 text (byte 0x80"),
    (lambda r: _unlearn(r, "--config", str(r / "deep.yaml")), "deep.yaml: nested too deeply"),
    # output paths that lead nowhere
    (lambda r: _unlearn(r, out="loop_a"), "loop_a is a symbolic link that leads nowhere"),
    (lambda r: _unlearn(r, out="loop_a/run"), "loop_a is a symbolic link that leads nowhere"),
    (lambda r: _unlearn(r, out="dangling"), "dangling is a symbolic link that leads nowhere"),
    # backends asked for but missing, task directories that are missing or run code
    (lambda r: _unlearn(r, "--attn-implementation", "flash_attention_2", "--device", "cpu"), "runs on CUDA only"),
    (lambda r: _unlearn(r, "--lm-eval", "lethe_world_facts", "--lm-eval-tasks-dir", str(r / "nowhere")),
     "directory not found"),
    (lambda r: _unlearn(r, "--lm-eval", "lethe_world_facts", "--lm-eval-tasks-dir", str(r / "tasks")),
     "mine.yaml: uses lm-eval's !function, which runs Python code"),
    # scenario options beyond what the size's data holds
    (lambda r: ["demo", "--scenario", "memorized", "--size", "smoke", "--requests", "100", "--out", str(r / "d3")],
     "--requests 100: at most 8 at size smoke"),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_refused_in_one_line_before_any_model_loads(files, capsys, monkeypatch, case):
    argv, expected = CASES[case]
    code, err = _run(argv(files), capsys, monkeypatch)
    assert code == 2 and expected in err and err.strip().count("\n") == 0, err
    assert not (files / "out" / "run.json").exists()


def test_input_size_cap_names_the_file(files, capsys, monkeypatch):
    monkeypatch.setenv("LETHE_MAX_INPUT_BYTES", "100")
    code, err = _run(_unlearn(files, out="o4"), capsys, monkeypatch)
    assert code == 2 and "forget.json" in err and "cap on one input file" in err


def test_sigterm_stops_like_sigint_with_a_message(capsys, monkeypatch):
    import lethe.cli.commands as cli

    def terminated(argv):
        cli._on_sigterm(15, None)

    monkeypatch.setattr(cli, "run", terminated)
    with pytest.raises(SystemExit) as e:
        main(["unlearn", "--model", "x"])
    assert e.value.code == 143 and "stopped by SIGTERM; rerun with --resume" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["demo"])
    assert "rerun the same command to continue" in capsys.readouterr().err


def test_a_config_file_giving_an_option_twice_and_a_seed_out_of_range_are_one_line_errors(tmp_path, capsys,
                                                                                          monkeypatch):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 2\nlr: 0.001\nepochs: 3\n")
    code, err = _run(["unlearn", "--config", str(cfg), "--model", "m", "--forget", "f.json", "--out",
                      str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 2 and "run.yaml: key 'epochs' appears twice (line 3)" in err and len(err.strip().splitlines()) == 1
    for argv in (["demo", "--seed", str(2**64)], ["unlearn", "--model", "m", "--forget", "f.json", "--seed",
                                                 str(2**64), "--out", str(tmp_path / "o")]):
        code, err = _run(argv, capsys, monkeypatch)
        assert code == 2 and "--seed" in err and len(err.strip().splitlines()) == 1, err


def test_a_max_length_the_prompt_fills_is_one_line_naming_the_record(tokenizer, smoke_data, tiny_model):
    import lethe
    from lethe.engine.loop import TrainConfig
    from lethe.util.errors import LetheError

    short = lethe.ModelConfig(max_length=4)  # shorter than any question's prompt
    train = TrainConfig(epochs=1, batch_size=2, micro_batch_size=2, checkpoint=False)
    with pytest.raises(LetheError, match=r"forget record 0: no answer token left to train on at --max-length 4"):
        lethe.unlearn(tiny_model, smoke_data.forget(10), smoke_data.retain(10), tokenizer=tokenizer, save=False,
                      progress=False, model_config=short, train=train)
    with pytest.raises(LetheError, match=r"training record 0: no answer token left"):
        lethe.finetune(tiny_model, smoke_data.forget(10), tokenizer=tokenizer, progress=False, model_config=short,
                       train=train)


def test_a_csv_field_over_the_limit_names_the_record(files, capsys, monkeypatch):
    import lethe.data.readers as readers

    monkeypatch.setattr(readers, "MAX_CSV_FIELD_CHARS", 1000)
    code, err = _run(_unlearn(files, "--forget", str(files / "long.csv")), capsys, monkeypatch)
    assert code == 2 and "long.csv, record 0: a field is longer than 1,000 characters" in err, err
    monkeypatch.setattr(readers, "MAX_CSV_FIELD_CHARS", 1 << 24)
    import csv

    limit = csv.field_size_limit()
    assert len(readers.read_csv_rows(files / "long.csv")[0]["answer"]) == 5000  # over csv's default is fine
    assert csv.field_size_limit() == limit  # and the csv module's own limit is left as it was


def test_a_trusted_task_directory_may_use_function_entries(files):
    from lethe.evaluation.downstream import check_tasks_dir

    check_tasks_dir(files / "tasks", trust_code=True)


def test_a_storage_error_inside_safetensors_is_one_line_naming_the_file(files, capsys, monkeypatch):
    from safetensors import SafetensorError

    import lethe.engine.checkpoint as checkpoint

    def full_disk(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    out = files / "full"
    with pytest.raises(SystemExit) as e:
        main(["--quiet", *_unlearn(files, "--eval-at", "none", out="full")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip().count("\n") == 0, err
    assert f"{out / 'checkpoint' / 'model.safetensors'}: no space left on the device" in err
    assert not (out / "model").exists() and not (out / "run.json").exists()

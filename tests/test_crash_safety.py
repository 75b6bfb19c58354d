"""Runs killed with SIGKILL at named points (LETHE_CRASH_AT) resume to the same weights and results as an
uninterrupted run; one run per directory; state that cannot lie."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from lethe.cli.commands import main


def _lethe(argv, crash=None, cwd=None):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("LETHE_CRASH_AT", None)
    if crash:
        env["LETHE_CRASH_AT"] = crash
    return subprocess.run([sys.executable, "-m", "lethe.cli", "--quiet", *argv], env=env, capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, smoke_data, tokenizer):
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    root = tmp_path_factory.mktemp("crash")
    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, root / "model")
    (root / "forget.json").write_text(json.dumps([r.to_dict() for r in smoke_data.forget(10)]))
    (root / "retain.json").write_text(json.dumps([r.to_dict() for r in smoke_data.retain(10)[:12]]))
    return root


def _unlearn_argv(root, out):
    return ["unlearn", "--model", str(root / "model"), "--forget", str(root / "forget.json"), "--retain",
            str(root / "retain.json"), "--method", "NPO+GD", "--epochs", "3", "--lr", "1e-3", "--batch-size", "2",
            "--micro-batch-size", "2", "--eval-retain", str(root / "retain.json"), "--max-new-tokens", "4",
            "--out", str(out)]


def _outcome(out):
    run = json.loads((out / "run.json").read_text())
    weights = (out / "model" / "model.safetensors").read_bytes()
    return weights, {k: run[k] for k in ("epochs", "samples", "config", "status", "method")}, \
        {k: v for k, v in run["cost"].items() if k.startswith("tokens") or k in ("epochs", "steps")}


@pytest.fixture(scope="module")
def uninterrupted(inputs):
    out = inputs / "reference"
    done = _lethe(_unlearn_argv(inputs, out))
    assert done.returncode == 0, done.stderr
    return _outcome(out)


@pytest.mark.parametrize("point", ["step:2", "checkpoint-swap:2", "evaluation:3", "save"])
def test_unlearn_killed_then_resumed_matches_an_uninterrupted_run(point, inputs, uninterrupted, tmp_path):
    out = tmp_path / "run"
    killed = _lethe(_unlearn_argv(inputs, out), crash=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "run.json").exists()
    resumed = _lethe(_unlearn_argv(inputs, out) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    weights, record, tokens = _outcome(out)
    assert weights == uninterrupted[0]  # bit-identical
    assert record == uninterrupted[1]   # metrics, samples (from the saved weights), recorded options
    assert tokens == uninterrupted[2]
    assert not [p for p in out.iterdir() if p.name.startswith(".lethe-tmp.")]  # temporaries of the kill removed
    assert not (out / ".lethe.lock").exists()


def test_finetune_killed_then_resumed_matches(inputs, tmp_path):
    argv = ["finetune", "--model", "tiny:test", "--data", str(inputs / "forget.json"), "--epochs", "3",
            "--batch-size", "2", "--micro-batch-size", "2", "--lr", "1e-3"]
    ref = _lethe(argv + ["--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr
    killed = _lethe(argv + ["--out", str(tmp_path / "m")], crash="step:4")
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "m").exists()  # no complete-looking model from a killed run
    resumed = _lethe(argv + ["--out", str(tmp_path / "m"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    hist = lambda d: json.loads((d / "lethe_finetune.json").read_text())["history"]  # noqa: E731
    assert hist(tmp_path / "m") == hist(tmp_path / "ref")


def test_resume_refuses_other_options_model_or_data(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    killed = _lethe(_unlearn_argv(inputs, out), crash="step:3")
    assert killed.returncode == -signal.SIGKILL
    cases = [(["--lr", "2e-3"], "lr: 0.001 -> 0.002"), (["--method", "GA+GD"], "method"),
             (["--retain", str(inputs / "forget.json"), "--allow-overlap"], "retain_sha256")]
    for extra, expect in cases:
        with pytest.raises(SystemExit) as e:
            main(["--quiet", *_unlearn_argv(inputs, out), "--resume", *extra])
        err = capsys.readouterr().err  # (the first also says it takes over the killed run's lock)
        errors = [ln for ln in err.splitlines() if ln.startswith("lethe: error:")]
        assert e.value.code == 2 and len(errors) == 1 and expect in errors[0], err
    other = tmp_path / "other_model"
    import shutil

    shutil.copytree(inputs / "model", other)
    from safetensors.torch import load_file, save_file

    state = load_file(str(other / "model.safetensors"))
    name = sorted(state)[0]
    state[name] = state[name] + 1
    save_file(state, str(other / "model.safetensors"), metadata={"format": "pt"})
    argv = _unlearn_argv(inputs, out)
    argv[argv.index("--model") + 1] = str(other)
    with pytest.raises(SystemExit) as e:
        main(["--quiet", *argv, "--resume"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "model_sha256" in err, err


def test_a_second_run_on_a_locked_directory_is_refused_and_a_stale_lock_taken_over(inputs, tmp_path, capsys):
    import socket

    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lethe.lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                     "started": "2026-01-01T00:00:00", "command": "unlearn GA+GD"}))
        with pytest.raises(SystemExit) as e:
            main(["--quiet", *_unlearn_argv(inputs, out)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"in use by another Lethe run (pid {sleeper.pid}" in err and err.count("\n") == 1
        assert sorted(p.name for p in out.iterdir()) == [".lethe.lock"]  # nothing else written
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone: its lock is stale and taken over, with a message
    (out / ".lethe-tmp.ckpt.abc").mkdir()  # a temporary the dead run left
    with pytest.raises(SystemExit) as e:
        main(["--quiet", *_unlearn_argv(inputs, out), "--epochs", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 0, err
    assert "taking over" in err and str(sleeper.pid) in err
    assert not (out / ".lethe.lock").exists() and not (out / ".lethe-tmp.ckpt.abc").exists()


def test_rerun_into_a_finished_directory_needs_overwrite_and_then_replaces_it(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--quiet", *_unlearn_argv(inputs, out), "--epochs", "1"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "already holds a run" in err
    killed = _lethe(argv[1:] + ["--overwrite"], crash="step:1")
    assert killed.returncode == -signal.SIGKILL
    # the old result was deleted when the new run started: nothing complete-looking is left beside it
    assert not (out / "run.json").exists() and not (out / "model").exists()


def test_saved_files_follow_the_umask(inputs, tmp_path):
    from lethe.model.load import load_model, load_tokenizer
    from lethe.model.save import save_model

    old = os.umask(0o022)
    try:
        save_model(load_model(inputs / "model"), load_tokenizer(inputs / "model"), tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert modes["model.safetensors"] == 0o644 and (tmp_path / "m").stat().st_mode & 0o777 == 0o755, modes


def test_a_torn_last_log_line_is_dropped(tmp_path):
    from lethe.util.io import read_jsonl

    log = tmp_path / "steps.jsonl"
    log.write_text('{"epoch": 0, "step": 1}\n{"epoch": 0, "step": 2}\n{"epoch": 1, "st')
    assert read_jsonl(log) == [{"epoch": 0, "step": 1}, {"epoch": 0, "step": 2}]
    log.write_text('{"epoch": 0, "step": 1}\n{"epo\n{"epoch": 1}\n')
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(log)  # a damaged line in the middle is not a kill: it is reported


@pytest.mark.parametrize("change", [["--model", "no/such/model"], ["--method", "RMU(layer=999)"]])
def test_overwrite_that_fails_leaves_the_finished_run_intact(inputs, tmp_path, capsys, change):
    """--overwrite moves the earlier run aside; an error before the new run finishes (a model that does not
    exist, an option refused once the model is known) puts it back byte for byte."""
    out = tmp_path / "run"
    argv = ["--quiet", *_unlearn_argv(inputs, out), "--epochs", "1"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and ".lethe.lock" not in p.name}
    capsys.readouterr()
    bad = list(argv)
    i = bad.index(change[0]) if change[0] in bad else None
    if i is None:
        bad += change
    else:
        bad[i + 1] = change[1]
    with pytest.raises(SystemExit) as e:
        main(bad + ["--overwrite"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and ".lethe.lock" not in p.name}
    assert after == before and not (out / ".lethe-replaced").exists()
    with pytest.raises(SystemExit) as e:  # a good --overwrite replaces it and leaves nothing aside
        main(argv + ["--overwrite"])
    assert e.value.code == 0 and (out / "run.json").exists() and not (out / ".lethe-replaced").exists()


def test_a_finished_run_drops_its_checkpoint_unless_asked_to_keep_it(inputs, tmp_path, capsys):
    argv = ["--quiet", *_unlearn_argv(inputs, tmp_path / "dropped"), "--epochs", "1"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0, capsys.readouterr().err
    assert (tmp_path / "dropped" / "model").exists() and not (tmp_path / "dropped" / "checkpoint").exists()
    with pytest.raises(SystemExit) as e:
        main(["--quiet", *_unlearn_argv(inputs, tmp_path / "kept"), "--epochs", "1", "--keep-checkpoint", "last"])
    assert e.value.code == 0
    assert (tmp_path / "kept" / "checkpoint").exists()

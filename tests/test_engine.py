import json

import pytest
import torch

from lethe.data.records import QARecord
from lethe.engine.loop import StepOutput, TrainConfig, train
from lethe.engine.schedule import lr_factor
from lethe.engine.tasks import FinetuneTask
from lethe.model.build import build_tiny_model


def test_schedule_warms_up_then_decays_linearly():
    f = [lr_factor(s, 4, 12) for s in range(12)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == pytest.approx(1.0) and f[11] == pytest.approx(1 / 8)
    assert all(a >= b for a, b in zip(f[3:], f[4:]))
    assert lr_factor(0, 0, 10) == 1.0


def test_finetuning_lowers_the_loss(tokenizer, tiny_model, smoke_data):
    task = FinetuneTask(tokenizer, smoke_data.full)
    cfg = TrainConfig(epochs=6, lr=3e-3, batch_size=8, micro_batch_size=8, checkpoint=False)
    result = train(tiny_model, lengths=task.lengths, step_fn=task, config=cfg, progress=False)
    losses = [h["losses"]["loss"] for h in result.history]
    assert losses[-1] < losses[0] * 0.8, losses
    assert result.cost.tokens_trained > 0 and result.cost.steps == 6 * 5


class Killer:
    """Wraps a task; raises KeyboardInterrupt on its n-th call (a kill mid-epoch)."""

    def __init__(self, task, n):
        self.task, self.n, self.calls = task, n, 0
        self.lengths, self.counts = task.lengths, task.counts

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.task(*a, **kw)


def test_killed_then_resumed_run_matches_uninterrupted(tmp_path, tokenizer, smoke_data):
    task = FinetuneTask(tokenizer, smoke_data.full)
    cfg = TrainConfig(epochs=3, lr=3e-3, batch_size=16, micro_batch_size=8)
    ref = build_tiny_model(tokenizer, "test", seed=1)
    train(ref, lengths=task.lengths, step_fn=task, config=cfg, run_dir=tmp_path / "a", progress=False)

    killed = build_tiny_model(tokenizer, "test", seed=1)
    with pytest.raises(KeyboardInterrupt):  # 5 micro-batches per epoch: call 8 is inside epoch 2
        train(killed, lengths=task.lengths, step_fn=Killer(task, 8), config=cfg, run_dir=tmp_path / "b", progress=False)
    resumed = build_tiny_model(tokenizer, "test", seed=99)  # a fresh process would start from other weights
    result = train(resumed, lengths=task.lengths, step_fn=task, config=cfg, run_dir=tmp_path / "b", resume=True,
                   progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    for (name, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    steps = (tmp_path / "b" / "steps.jsonl").read_text().splitlines()
    assert len(steps) == len((tmp_path / "a" / "steps.jsonl").read_text().splitlines())


def test_a_run_started_over_in_the_same_directory_does_not_append_to_its_old_step_log(tmp_path, tokenizer, smoke_data):
    task = FinetuneTask(tokenizer, smoke_data.full[:16])
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=8, micro_batch_size=8, checkpoint=False)
    for seed in (1, 2):  # the second run starts over (no resume): its log replaces the first one's
        train(build_tiny_model(tokenizer, "test", seed=seed), lengths=task.lengths, step_fn=task, config=cfg,
              run_dir=tmp_path, progress=False)
    steps = (tmp_path / "steps.jsonl").read_text().splitlines()
    assert [json.loads(s)["step"] for s in steps] == [1, 2, 3, 4]


def test_accumulation_1x8_equals_4x2(tokenizer, monkeypatch):
    # Equal-length examples (the simple case; unequal lengths below).
    recs = [QARecord(question=f"Where was author {i} born?", answer=f"In city {i}.") for i in range(8)]
    task = FinetuneTask(tokenizer, recs)
    assert len(set(task.lengths)) == 1
    one, four = (_step_grads(3, tokenizer, task, 8, micro, monkeypatch) for micro in (8, 2))  # 1 x 8 and 4 x 2
    for a, b in zip(one, four):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def _step_grads(model_seed, tokenizer, task, batch, micro, monkeypatch):
    seen = []
    original = torch.optim.AdamW.step

    def recording_step(self, *a, **k):
        seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    m = build_tiny_model(tokenizer, "test", seed=model_seed)
    if hasattr(task, "cache_reference"):
        task.cache_reference(m, torch.device("cpu"))
    cfg = TrainConfig(epochs=1, lr=1e-2, batch_size=batch, micro_batch_size=micro, max_grad_norm=0, checkpoint=False)
    train(m, lengths=task.lengths, step_fn=task, config=cfg, progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", original)
    assert len(seen) == 1
    return seen[0]


def test_accumulation_is_token_weighted_with_unequal_lengths(tokenizer, smoke_data, monkeypatch):
    """One step over 8 examples of unequal lengths: 1 micro-batch of 8 and 4 of 2 give the same gradient
    (a token in a short micro-batch weighs what a token in a long one does)."""
    recs = [QARecord(question=f"Where was author {i} born?", answer="In a city " + "far " * (3 * i) + "away.")
            for i in range(8)]
    task = FinetuneTask(tokenizer, recs)
    assert len(set(task.lengths)) == 8
    one, four = (_step_grads(3, tokenizer, task, 8, micro, monkeypatch) for micro in (8, 2))
    for a, b in zip(one, four):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("method", ["GA+GD", "NPO+GD", "ME+GD", "IDK+AP"])
def test_unlearning_accumulation_weights_each_part_by_its_own_units(tokenizer, smoke_data, monkeypatch, method):
    from lethe.engine.tasks import UnlearnTask
    from lethe.objectives import parse_method

    forget = smoke_data.full[:8]
    task = UnlearnTask(tokenizer, parse_method(method), forget, smoke_data.full[8:24], retain_per_forget=2)
    assert len(set(task.lengths)) > 2
    one, four = (_step_grads(4, tokenizer, task, 8, micro, monkeypatch) for micro in (8, 2))
    for a, b in zip(one, four):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, tiny_model):
    from lethe.util.errors import DivergenceError

    def step(model, idx, device):
        p = next(model.parameters())
        return StepOutput((p.sum() * 0) + float("inf"))

    with pytest.raises(DivergenceError, match="loss became inf at epoch 1"):
        train(tiny_model, lengths=[3] * 4, step_fn=step, config=TrainConfig(epochs=1, micro_batch_size=2),
              run_dir=tmp_path, progress=False)
    assert "diverged" in (tmp_path / "steps.jsonl").read_text()


def test_tensorboard_tracker_logs_steps_and_epoch_metrics(tokenizer, tiny_model, smoke_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lethe.util.errors import LetheError

    task = FinetuneTask(tokenizer, smoke_data.full[:16])
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=8, micro_batch_size=8, checkpoint=False, log_with="tensorboard")
    train(tiny_model, lengths=task.lengths, step_fn=task, config=cfg, run_dir=tmp_path / "run", progress=False,
          on_epoch_end=lambda epoch, model: {"metrics": {"forget/ROUGE": 0.5 / epoch}}, desc="GA+GD")
    logdir = tmp_path / "run" / "logs" / "ga_gd"  # one directory per run, named after it
    assert list(logdir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"lr", "train/loss", "epoch/loss", "eval/forget/ROUGE"} <= set(tags)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [round(e.value, 6) for e in acc.Scalars("eval/forget/ROUGE")] == [0.5, 0.25]
    with pytest.raises(LetheError, match="run directory"):
        train(tiny_model, lengths=task.lengths, step_fn=task, config=cfg, progress=False)
    with pytest.raises(LetheError, match="unknown tracker"):
        from lethe.engine.loop import make_accelerator

        make_accelerator("comet-ish")


def test_select_best_keeps_the_chosen_epoch_and_survives_resume(tokenizer, smoke_data, tmp_path, capsys):
    """--select-by min:forget/P keeps the epoch with the lowest forget P (not the last) in RUN/model, the last
    epoch in RUN/last; run.json and audit.json say which; a killed run resumed keeps the same choice."""
    import json

    from safetensors.torch import load_file

    from lethe.cli.commands import main
    from lethe.engine.select import Selection
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, tmp_path / "m")
    (tmp_path / "f.json").write_text(json.dumps([r.to_dict() for r in smoke_data.forget(10)]))
    (tmp_path / "r.json").write_text(json.dumps([r.to_dict() for r in smoke_data.retain(10)]))
    # GA then GD-only drift: choose by the largest forget P (the epoch GA has moved least), surely not the last
    argv = ["--quiet", "unlearn", "--model", str(tmp_path / "m"), "--forget", str(tmp_path / "f.json"), "--retain",
            str(tmp_path / "r.json"), "--method", "GA+GD", "--epochs", "3", "--lr", "5e-3", "--batch-size", "4",
            "--micro-batch-size", "4", "--max-new-tokens", "2", "--metrics", "P", "--select-by", "max:forget/P"]
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(tmp_path / "run")])
    assert e.value.code == 0, capsys.readouterr().err
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    p = {ep["epoch"]: ep["metrics"]["forget/P"] for ep in run["epochs"] if ep["epoch"] > 0}
    best = max(p, key=p.get)
    assert run["selected"]["epoch"] == best and run["selected"]["by"] == "max:forget/P"
    audit = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert audit["selected"]["epoch"] == best
    if best != 3:
        assert (tmp_path / "run" / "last" / "model.safetensors").exists()
        a = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
        b = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
        assert any(not torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "run" / ".lethe-best").exists()
    # killed after scoring epoch 3 (before its checkpoint), then resumed: the same epoch kept, the same weights
    import os
    import subprocess
    import sys

    env = {**os.environ, "LETHE_CRASH_AT": "evaluation:4", "PYTHONHASHSEED": "0"}
    killed = subprocess.run([sys.executable, "-m", "lethe.cli", *argv, "--out", str(tmp_path / "again")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9 and (tmp_path / "again" / ".lethe-best" / "best.json").exists()
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(tmp_path / "again"), "--resume"])
    assert e.value.code == 0, capsys.readouterr().err
    again = json.loads((tmp_path / "again" / "run.json").read_text())
    assert again["selected"]["epoch"] == best
    a = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "again" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    from lethe.util.errors import LetheError

    with pytest.raises(LetheError, match="--select-by"):
        Selection("best")
    with pytest.raises(SystemExit) as e:
        main(argv[:-2] + ["--select-by", "fq", "--eval-at", "none", "--out", str(tmp_path / "x")])
    assert e.value.code == 2


def test_adapters_default_to_a_larger_learning_rate_than_full_fine_tuning():
    from lethe.cli.commands import build_parser
    from lethe.cli.options import train_config

    parser = build_parser()
    base = ["unlearn", "--model", "m", "--forget", "f.json", "--out", "o"]
    assert train_config(parser.parse_args(base)).lr == 1e-5
    assert train_config(parser.parse_args(base + ["--params", "lora"])).lr == 1e-4
    assert train_config(parser.parse_args(base + ["--params", "fila", "--lr", "3e-5"])).lr == 3e-5
    assert train_config(parser.parse_args(["finetune", "--model", "m", "--data", "d.json", "--out", "o"])).lr == 2e-5

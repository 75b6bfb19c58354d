"""PDU (primal-dual unlearning): the flattening term against a by-hand float64 reference with gradients, the
dual update's order and warm-up, ε from the starting model, and a killed run resumed with λ where it was."""
import json
import os
import subprocess
import sys

import pytest
import torch

from lethe.data.prompt import IGNORE
from lethe.objectives import FORGET_LOSSES
from lethe.objectives.pdu import PDU, logit_margin_flatness
from lethe.util.errors import LetheError


def _batch(seed, B=3, T=7, V=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :3] = IGNORE  # the prompt
    labels[1, 5:] = IGNORE  # padding
    return logits, labels


def _flatness_by_hand(logits, labels):
    values = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if labels[b, t + 1] != IGNORE:
                row = [float(x) for x in logits[b, t]]
                values.append((max(row) - sum(row) / len(row)) ** 2)
    return sum(values) / len(values)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flattening_matches_the_by_hand_reference_with_gradients(seed):
    logits, labels = _batch(seed)
    assert float(logit_margin_flatness(logits, labels)) == pytest.approx(_flatness_by_hand(logits, labels), rel=1e-12)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: logit_margin_flatness(z, labels), (logits,))
    flat = torch.full_like(logits, 0.3)  # a uniform distribution is what it drives towards: loss 0
    assert float(logit_margin_flatness(flat, labels)) < 1e-30


def test_the_dual_variable_follows_the_violation_after_warm_up():
    logits, labels = _batch(3)
    rlogits, rlabels = _batch(4)
    inputs = {"forget_logits": logits, "forget_labels": labels, "retain_logits": rlogits, "retain_labels": rlabels}
    from lethe.ops.tokens import mean_nll

    retain = float(mean_nll(rlogits, rlabels))
    loss = PDU(eps=retain - 0.5, lam=2.0, dual_lr=0.1, warmup_epochs=1)
    value = loss(inputs)
    assert float(value) == pytest.approx(_flatness_by_hand(logits, labels) + 2.0 * 0.5)
    assert loss.lam == 2.0  # still warming up
    loss.epoch_end(1)
    value = loss(inputs)
    assert float(value) == pytest.approx(_flatness_by_hand(logits, labels) + 2.0 * 0.5)  # λ before this step's update
    assert loss.lam == pytest.approx(2.0 + 0.1 * 0.5)
    satisfied = PDU(eps=retain + 100.0, lam=0.3, dual_lr=1.0, warmup_epochs=0)
    satisfied(inputs)
    assert satisfied.lam == 0.0  # λ >= 0: a met constraint lets go
    masked = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items() if k.endswith("logits")}
    empty = torch.full_like(labels, IGNORE)
    value = PDU(eps=0.0)({**masked, "forget_labels": empty, "retain_labels": empty})
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(t.grad).all() for t in masked.values() if t.grad is not None)
    restored = PDU(warmup_epochs=3)
    restored.load_state(loss.state())
    assert restored.state() == loss.state() and restored.updating
    with pytest.raises(LetheError, match="warmup_epochs must be a whole number"):
        FORGET_LOSSES.get("pdu").fn(warmup_epochs=1.5)


def test_eps_defaults_to_the_starting_models_retain_loss(tokenizer, smoke_data, tiny_model):
    import lethe
    from lethe.engine.loop import TrainConfig

    forget, retain = smoke_data.forget(10), smoke_data.retain(10)[:8]
    _, run = lethe.unlearn(tiny_model, forget, retain, method="PDU(warmup_epochs=1, dual_lr=0.5)",
                           tokenizer=tokenizer, save=False, progress=False, evaluation=lethe.EvalConfig(at=()),
                           train=TrainConfig(epochs=2, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False))
    from lethe.core import prepare
    from lethe.engine.tasks import Streams
    from lethe.model.build import build_tiny_model
    from lethe.objectives.pdu import mean_retain_loss

    start, prompter, _ = prepare(build_tiny_model(tokenizer, "test", seed=0), tokenizer)
    eps = mean_retain_loss(start.eval(), Streams(prompter, forget, retain)["retain"], prompter.pad_id)
    states = [e["loss_state"]["forget"] for e in run.epochs if "loss_state" in e]
    assert [s["eps"] for s in states] == pytest.approx([eps, eps], rel=1e-6)
    assert run.config["forget_options"]["eps"] == pytest.approx(eps, rel=1e-6)
    assert states[0]["lam"] == 1.0 and states[0]["updating"]  # the warm-up epoch leaves λ alone...
    assert states[1]["lam"] != 1.0  # ...then it moves with the violation


def test_a_killed_pdu_run_resumes_with_the_dual_variable_where_it_was(tmp_path, tokenizer, smoke_data):
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, tmp_path / "model")
    (tmp_path / "f.json").write_text(json.dumps([r.to_dict() for r in smoke_data.forget(10)]))
    (tmp_path / "r.json").write_text(json.dumps([r.to_dict() for r in smoke_data.retain(10)[:8]]))

    def lethe(out, crash=None, resume=False):
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        env.pop("LETHE_CRASH_AT", None)
        if crash:
            env["LETHE_CRASH_AT"] = crash
        argv = ["--quiet", "unlearn", "--model", str(tmp_path / "model"), "--forget", str(tmp_path / "f.json"),
                "--retain", str(tmp_path / "r.json"), "--method", "PDU(warmup_epochs=1,dual_lr=0.5)", "--epochs",
                "3", "--lr", "1e-3", "--batch-size", "2", "--micro-batch-size", "2", "--eval-at", "none",
                "--out", str(out)] + (["--resume"] if resume else [])
        return subprocess.run([sys.executable, "-m", "lethe.cli", *argv], env=env, capture_output=True, text=True,
                              timeout=300)

    whole = lethe(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    killed = lethe(tmp_path / "killed", crash="step:5")  # inside the second epoch, λ already moving
    assert killed.returncode != 0
    resumed = lethe(tmp_path / "killed", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    runs = [json.loads((tmp_path / d / "run.json").read_text()) for d in ("whole", "killed")]
    states = [[e["loss_state"] for e in r["epochs"]] for r in runs]
    assert states[0] == states[1] and states[0][-1]["forget"]["lam"] != 1.0
    assert (tmp_path / "whole" / "model" / "model.safetensors").read_bytes() == \
        (tmp_path / "killed" / "model" / "model.safetensors").read_bytes()
